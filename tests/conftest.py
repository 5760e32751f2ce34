"""Shared fixtures: a launcher for multi-rank tests on the venv's own mpiexec, a tiny
dataset, and helpers for `bls-dlrm infer` command lines and the protocol."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from bls_dlrm.launch import run_mpi

MPI_TIMEOUT = 120.0
BLS_DLRM = str(Path(sys.executable).parent / "bls-dlrm")

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


def write_script(path: Path, code: str) -> Path:
    """A rank snippet as a script that aborts the whole launch when any rank fails."""
    path.write_text(ABORT_ON_ERROR + textwrap.dedent(code))
    return path


def run_or_fail(
    run: Callable[[], subprocess.CompletedProcess], what: str, timeout: float, expect_ok: bool
) -> subprocess.CompletedProcess:
    """``run()``, failing the test with every rank's output when ``what`` (the ranks) did
    not finish within ``timeout`` or, with ``expect_ok``, exited non-zero."""
    try:
        result = run()
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{what} did not finish within {timeout}s\n"
            f"--- stdout ---\n{exc.output}\n--- stderr ---\n{exc.stderr}"
        )
    if expect_ok and result.returncode != 0:
        pytest.fail(
            f"{what} exited with {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
    return result


class MPIRun:
    """Runs a Python snippet or argv on P ranks and fails the test with every rank's output."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.count = 0

    def script(self, nprocs: int, code: str, *args: str, timeout: float = MPI_TIMEOUT, env=None):
        self.count += 1
        path = write_script(self.tmp_path / f"mpi_script_{self.count}.py", code)
        return self.argv(nprocs, ["python", str(path), *args], timeout=timeout, env=env)

    def argv(self, nprocs: int, argv, *, timeout: float = MPI_TIMEOUT, env=None, expect_ok=True):
        return run_or_fail(
            lambda: run_mpi(nprocs, argv, timeout=timeout, env=env, cwd=self.tmp_path, check=False),
            f"{nprocs} ranks",
            timeout,
            expect_ok,
        )


@pytest.fixture
def mpirun(tmp_path) -> MPIRun:
    return MPIRun(tmp_path)


@pytest.fixture(scope="session")
def tiny_zipf_dataset(tmp_path_factory) -> Path:
    """4 batches of 48 samples for the tiny model: Zipf indices, 4 lookups per table."""
    from bls_dlrm.data import generate_synthetic

    out = tmp_path_factory.mktemp("data") / "tiny-zipf"
    generate_synthetic(
        out, "tiny", num_batches=4, batch_size=48, seed=5, index_dist="zipf", pooling_k=4
    )
    return out


def infer_argv(out: Path, *settings: str) -> list[str]:
    """``bls-dlrm infer --out OUT --set k=v ...``."""
    argv = [BLS_DLRM, "infer", "--out", str(out)]
    for kv in settings:
        argv += ["--set", kv]
    return argv


def judged_workloads(protocol: dict) -> set[str]:
    """Every workload a claim or check of the protocol names."""
    return {
        w
        for item in protocol["claims"] + protocol.get("checks", [])
        if isinstance(item.get("workloads"), list)
        for w in item["workloads"]
    }


# Ranks on several namespace hosts of this machine (tests/multihost.py).
from multihost import netns_hosts  # noqa: E402, F401
