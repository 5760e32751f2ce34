"""Shared fixtures: a launcher for multi-rank tests on the venv's own mpiexec, a tiny
dataset, and helpers for `bls-dlrm infer` command lines and the protocol."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from bls_dlrm.launch import mpiexec_command, run_command

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


class RankFiles:
    """Each rank's stdout and stderr in files of its own (MPICH's ``-outfile-pattern``).

    Two ranks' output on one pipe can interleave in the middle of a line, so no test reads
    several ranks from one stream: the launch writes ``rank<r>.out``/``.err`` into ``folder``
    and :meth:`result` joins them whole, rank by rank, after the launcher's own output.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def options(self) -> list[str]:
        """The ``mpiexec`` options, placed before ``-n``."""
        return [
            "-outfile-pattern",
            str(self.folder / "rank%r.out"),
            "-errfile-pattern",
            str(self.folder / "rank%r.err"),
        ]

    def _joined(self, suffix: str, launcher: str | bytes | None) -> str:
        if isinstance(launcher, bytes):
            launcher = launcher.decode(errors="replace")
        files = sorted(self.folder.glob(f"rank*{suffix}"), key=lambda f: int(f.stem[4:]))
        return (launcher or "") + "".join(f.read_text(errors="replace") for f in files)

    def stdout(self, rank: int) -> str:
        """What rank ``rank`` printed."""
        path = self.folder / f"rank{rank}.out"
        return path.read_text() if path.exists() else ""

    def result(self, proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
        """``proc`` with stdout and stderr of every rank, rank by rank."""
        return subprocess.CompletedProcess(
            proc.args,
            proc.returncode,
            self._joined(".out", proc.stdout),
            self._joined(".err", proc.stderr),
        )

    def timeout(self, exc: subprocess.TimeoutExpired) -> subprocess.TimeoutExpired:
        return subprocess.TimeoutExpired(
            exc.cmd, exc.timeout, self._joined(".out", exc.output), self._joined(".err", exc.stderr)
        )


def with_rank_files(cmd: list[str], files: RankFiles) -> list[str]:
    """``mpiexec ...`` with each rank's output sent to its own files."""
    return [cmd[0], *files.options, *cmd[1:]]


def run_or_fail(
    run: Callable[[], subprocess.CompletedProcess],
    what: str,
    timeout: float,
    expect_ok: bool,
    files: RankFiles | None = None,
) -> subprocess.CompletedProcess:
    """``run()``, failing the test with every rank's output when ``what`` (the ranks) did
    not finish within ``timeout`` or, with ``expect_ok``, exited non-zero. With ``files``
    the ranks' output comes from their own files, joined rank by rank."""
    try:
        result = run()
    except subprocess.TimeoutExpired as exc:
        if files is not None:
            exc = files.timeout(exc)
        pytest.fail(
            f"{what} did not finish within {timeout}s\n"
            f"--- stdout ---\n{exc.output}\n--- stderr ---\n{exc.stderr}"
        )
    if files is not None:
        result = files.result(result)
    if expect_ok and result.returncode != 0:
        pytest.fail(
            f"{what} exited with {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
    return result


class MPIRun:
    """Runs a Python snippet or argv on P ranks and fails the test with every rank's output.

    Each launch's ranks write their output to files of their own (``self.files``), returned
    joined rank by rank as the result's stdout and stderr.
    """

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.count = 0
        self.files: RankFiles | None = None

    def script(self, nprocs: int, code: str, *args: str, timeout: float = MPI_TIMEOUT, env=None):
        self.count += 1
        path = write_script(self.tmp_path / f"mpi_script_{self.count}.py", code)
        return self.argv(nprocs, ["python", str(path), *args], timeout=timeout, env=env)

    def argv(self, nprocs: int, argv, *, timeout: float = MPI_TIMEOUT, env=None, expect_ok=True):
        self.count += 1
        files = self.files = RankFiles(self.tmp_path / f"ranks_{self.count}")
        cmd = with_rank_files(mpiexec_command(nprocs, argv), files)
        return run_or_fail(
            lambda: run_command(cmd, timeout=timeout, env=env, cwd=self.tmp_path, check=False),
            f"{nprocs} ranks",
            timeout,
            expect_ok,
            files,
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
