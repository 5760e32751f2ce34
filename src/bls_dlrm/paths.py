"""Where the project's files are: one definition of the project root and its fixed paths.

A relative path means what the workflow means by it, a path from the project root: that
is how Snakemake (run from the root), JupyterLab (run from ``notebooks/``) and the CLI
(run from anywhere inside an editable checkout) all find ``results/tables`` or
``config/protocol.yaml`` with the same default.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The checkout that holds this package (an editable install's project root).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]

PROTOCOL = Path("config/protocol.yaml")
PROTOCOL_SCHEMA = Path("workflow/schemas/protocol.schema.yaml")
CONFIG_SCHEMA = Path("workflow/schemas/config.schema.yaml")
TABLES = Path("results/tables")
FIGURES = Path("figures")


def find_project_root(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: cwd) holding ``pyproject.toml``."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return None


def project_path(path: str | os.PathLike[str]) -> Path:
    """A relative path as the workflow means it: from the project root.

    Absolute paths, and relative ones that exist from the current folder, are returned
    unchanged; otherwise the path is taken from the project around the current folder,
    then from the checkout holding this package, whichever has it.
    """
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    root = find_project_root()
    if root is not None and root != Path.cwd().resolve() and (root / p).exists():
        return root / p
    if (PACKAGE_ROOT / p).exists():
        return PACKAGE_ROOT / p
    return p if root is None or root == Path.cwd().resolve() else root / p


def resolve_out_dir(path: str | os.PathLike[str]) -> Path:
    """Like :func:`project_path` for an output folder, which is created."""
    out = project_path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out
