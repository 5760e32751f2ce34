"""Provenance every log header carries: versions of the runtime and the git revision."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def runtime_versions() -> dict[str, Any]:
    """Versions of python, torch, numpy, mpi4py and the MPI library, for the header.

    Package versions come from installed metadata, so nothing heavy is imported. The MPI
    library string is only read if ``mpi4py.MPI`` is already imported: importing it here
    would initialise MPI as a side effect.
    """
    versions: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for package in ("torch", "numpy", "mpi4py", "mpich"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    mpi = sys.modules.get("mpi4py.MPI")
    library = None
    if mpi is not None:
        try:
            library = " ".join(mpi.Get_library_version().split())
        except Exception:  # an MPI that cannot answer is recorded as unknown, not fatal
            library = None
    versions["mpi_library"] = library
    return versions


def git_revision(path: str | os.PathLike[str] | None = None) -> str | None:
    """The checked-out git commit of the source tree (``-dirty`` if modified), else None.

    Runs from an installed package or an exported archive have no repository; the header
    then records None rather than failing the run.
    """
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = rev.stdout.strip()
    if not commit:
        return None
    return commit + ("-dirty" if status.returncode == 0 and status.stdout.strip() else "")
