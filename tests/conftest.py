"""Shared fixtures: a launcher for multi-rank tests on the venv's own mpiexec."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from bls_dlrm.launch import run_mpi

MPI_TIMEOUT = 120.0

# Put before every snippet: a failing rank ends the whole launch at once (MPI_Abort)
# instead of leaving its peers waiting for it until the launcher's timeout.
ABORT_ON_ERROR = """\
import sys as _sys
import traceback as _traceback


def _abort_on_error(*exc_info):
    _traceback.print_exception(*exc_info)
    _sys.stderr.flush()
    from mpi4py import MPI

    MPI.COMM_WORLD.Abort(1)


_sys.excepthook = _abort_on_error
"""


class MPIRun:
    """Runs a Python snippet or argv on P ranks and fails the test with every rank's output."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.count = 0

    def script(self, nprocs: int, code: str, *args: str, timeout: float = MPI_TIMEOUT, env=None):
        self.count += 1
        path = self.tmp_path / f"mpi_script_{self.count}.py"
        path.write_text(ABORT_ON_ERROR + textwrap.dedent(code))
        return self.argv(nprocs, ["python", str(path), *args], timeout=timeout, env=env)

    def argv(self, nprocs: int, argv, *, timeout: float = MPI_TIMEOUT, env=None, expect_ok=True):
        try:
            result = run_mpi(nprocs, argv, timeout=timeout, env=env, cwd=self.tmp_path, check=False)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"{nprocs} ranks did not finish within {timeout}s\n"
                f"--- stdout ---\n{exc.output}\n--- stderr ---\n{exc.stderr}"
            )
        if expect_ok and result.returncode != 0:
            pytest.fail(
                f"{nprocs} ranks exited with {result.returncode}\n"
                f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
            )
        return result


@pytest.fixture
def mpirun(tmp_path) -> MPIRun:
    return MPIRun(tmp_path)


# Ranks on several namespace hosts of this machine (tests/multihost.py).
from multihost import netns_hosts  # noqa: E402, F401
