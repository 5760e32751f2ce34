"""Start ranks with the MPI launcher that belongs to this Python environment.

The pip packages ``mpi4py`` and ``mpich`` put ``mpiexec`` next to the interpreter; a system
``mpiexec`` of another MPI would start ranks that cannot talk to each other, so we never
look it up on PATH.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def mpiexec_path() -> Path:
    """The ``mpiexec`` installed beside ``sys.executable`` (an error names the fix if missing)."""
    path = Path(sys.executable).parent / "mpiexec"
    if not path.exists():
        raise FileNotFoundError(
            f"no mpiexec beside {sys.executable}; install the pinned 'mpich' package "
            "into this environment (make venv)"
        )
    return path


def rank_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ranks: one OpenMP/BLAS thread each, so oversubscribed ranks share fairly."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    # MPICH's asynchronous progress thread makes every exchange slow on few cores.
    env.setdefault("MPIR_CVAR_ASYNC_PROGRESS", "0")
    if extra:
        env.update(extra)
    return env


BINDINGS = ("core", "none")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's core count)."""
    return len(os.sched_getaffinity(0))


def mpiexec_command(nprocs: int, argv: Sequence[str], bind: str | None = None) -> list[str]:
    """``mpiexec [-bind-to core] -n P argv...``; ``argv[0]`` may be ``python`` for this interpreter.

    ``bind="core"`` pins each rank to one core (MPICH hydra's ``-bind-to core``; ranks beyond
    the usable cores wrap around and share); ``None`` or ``"none"`` leaves placement to the OS.
    """
    if nprocs < 1:
        raise ValueError(f"need at least one rank, got {nprocs}")
    if bind is not None and bind not in BINDINGS:
        raise ValueError(f"bind must be one of {BINDINGS} or None, got {bind!r}")
    args = [sys.executable if a == "python" else a for a in argv]
    binding = ["-bind-to", "core"] if bind == "core" else []
    return [str(mpiexec_path()), *binding, "-n", str(nprocs), *args]


def run_mpi(
    nprocs: int,
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    check: bool = True,
    bind: str | None = None,
) -> subprocess.CompletedProcess:
    """Run ``argv`` on ``nprocs`` ranks; output captured, ranks killed at ``timeout``.

    ``bind`` as in :func:`mpiexec_command`.
    """
    cmd = mpiexec_command(nprocs, argv, bind=bind)
    return run_command(cmd, timeout=timeout, env=env, cwd=cwd, check=check)


def run_command(
    cmd: Sequence[str],
    *,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    check: bool = True,
    on_timeout: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess:
    """Run a launcher command in its own session with the ranks' environment, output
    captured; at ``timeout`` its process group is killed (then ``on_timeout``, for
    processes outside the group) and :class:`subprocess.TimeoutExpired` carries the output.
    """
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=rank_env(env),
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if on_timeout is not None:
            on_timeout()
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, out, err)
    return result
