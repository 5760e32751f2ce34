"""Start ranks with the MPI launcher that belongs to this Python environment.

The pip packages ``mpi4py`` and ``mpich`` put ``mpiexec`` next to the interpreter; a system
``mpiexec`` of another MPI would start ranks that cannot talk to each other, so we never
look it up on PATH.

Inside a Slurm job, MPICH's launcher (Hydra) spreads the ranks over the allocation's nodes
when it sees the allocation's layout (``SLURM_JOB_NODELIST``, ``SLURM_TASKS_PER_NODE``) and
starts them with ``srun``. A job step may have removed that layout from the environment
(Snakemake's Slurm executor keeps only the job id for the rule it runs), and Hydra would
then start every rank on the job's first node. :func:`slurm_layout_env` restores it from
``scontrol show job``; ``bls-dlrm mpiexec ARGS`` (:func:`exec_mpiexec`) runs this
environment's ``mpiexec`` with it, and is how the workflow launches its ranks.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
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


# -- inside a Slurm allocation -------------------------------------------------------------

#: What a job step may remove and Hydra needs to place ranks on the allocation's nodes.
SLURM_LAYOUT_VARS = (
    "SLURM_JOB_NODELIST",
    "SLURM_NODELIST",
    "SLURM_JOB_NUM_NODES",
    "SLURM_NNODES",
    "SLURM_TASKS_PER_NODE",
    "SLURM_JOB_CPUS_PER_NODE",
)


def _compress(counts: Sequence[int]) -> str:
    """Slurm's run-length form of per-node counts: [2, 2, 1] -> '2(x2),1'."""
    parts = []
    for value, run in itertools.groupby(counts):
        k = len(list(run))
        parts.append(str(value) if k == 1 else f"{value}(x{k})")
    return ",".join(parts)


def expand_hostlist(text: str) -> list[str]:
    """A Slurm host list ('n[1-3,7],m05') as host names, in order."""
    hosts: list[str] = []
    for prefix, ranges, suffix in re.findall(r"([^,\[\]]*)(?:\[([^\]]*)\])?([^,\[\]]*),?", text):
        if not ranges:
            if prefix + suffix:
                hosts.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            for k in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{k:0{width}d}{suffix}")
    return hosts


def _count_cpus(ids: str) -> int:
    """CPUs in an id list as scontrol prints it: '0-3,6' -> 5."""
    total = 0
    for part in ids.split(","):
        lo, _, hi = part.partition("-")
        total += int(hi or lo) - int(lo) + 1
    return total


def parse_scontrol_job(text: str) -> dict[str, str]:
    """The layout variables of one job from ``scontrol show job -d -o JOBID``.

    Tasks per node follow Slurm's default block distribution: each node first gets one task,
    then nodes are filled in order up to their allocated CPUs / CPUs per task (and
    ``--ntasks-per-node`` when the job gave it).
    """
    fields = dict(re.findall(r"(?:^|\s)([\w/:]+)=(\S*)", text))
    nodes = expand_hostlist(fields.get("NodeList", ""))
    if not nodes or fields.get("NodeList") in ("(null)", "None assigned"):
        raise ValueError(f"no node list in scontrol's job record: {text.strip()[:200]!r}")
    cpus: dict[str, int] = {}
    for group, ids in re.findall(r"(?:^|\s)Nodes=(\S+) CPU_IDs=(\S+)", text):
        for node in expand_hostlist(group):
            cpus[node] = _count_cpus(ids)
    per_task = int(fields["CPUs/Task"]) if fields.get("CPUs/Task", "").isdigit() else 1
    tasks = int(fields["NumTasks"]) if fields.get("NumTasks", "").isdigit() else len(nodes)
    ntpn = fields.get("NtasksPerN:B:S:C", "0").split(":")[0]
    per_node_cap = int(ntpn) if ntpn.isdigit() and int(ntpn) > 0 else None
    caps = []
    for node in nodes:
        cap = max(1, cpus.get(node, per_task) // per_task)
        caps.append(cap if per_node_cap is None else min(cap, per_node_cap))
    layout = [1 if tasks >= len(nodes) else 0 for _ in nodes]
    left = tasks - sum(layout)
    for i, cap in enumerate(caps):
        add = max(0, min(left, cap - layout[i]))
        layout[i] += add
        left -= add
    if left > 0:  # more tasks than the CPUs seen: spread the rest as Slurm would cycle
        for i in range(left):
            layout[i % len(nodes)] += 1
    nodelist, count = fields["NodeList"], str(len(nodes))
    per_node_cpus = _compress([cpus.get(n, per_task) for n in nodes])
    values = (nodelist, nodelist, count, count, _compress(layout), per_node_cpus)
    return dict(zip(SLURM_LAYOUT_VARS, values, strict=True))


def slurm_layout_env(
    environ: Mapping[str, str] | None = None, scontrol: str = "scontrol"
) -> dict[str, str]:
    """The allocation's layout variables to add to ``environ``; empty when there is nothing
    to restore (not in a Slurm job, or the layout is still there).

    Raises RuntimeError when the job's record cannot be read: launching anyway would put
    every rank on one node and measure something other than what was asked.
    """
    environ = os.environ if environ is None else environ
    job = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not job or environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST"):
        return {}
    cmd = [scontrol, "show", "job", "-d", "-o", job]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"in Slurm job {job}, cannot read its node list: {exc}") from exc
    if r.returncode != 0:
        raise RuntimeError(
            f"in Slurm job {job}, '{' '.join(cmd)}' failed ({r.returncode}): {r.stderr.strip()}"
        )
    return parse_scontrol_job(r.stdout)


def exec_mpiexec(args: Sequence[str]) -> None:
    """Replace this process by this environment's ``mpiexec args...``, with the Slurm
    allocation's layout restored (:func:`slurm_layout_env`) when a job step removed it."""
    mpiexec = str(mpiexec_path())
    env = dict(os.environ) | slurm_layout_env()
    os.execve(mpiexec, [mpiexec, *args], env)
