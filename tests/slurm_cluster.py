"""Slurm clusters on this machine, and the workflow run through profiles/slurm on them.

    python tests/slurm_cluster.py smoke                     # `make test-slurm`, first part
    python tests/slurm_cluster.py multinode                 # `make test-slurm`, second part
    python tests/slurm_cluster.py run [--nodes N] -- CMD    # any command, a fresh cluster

A cluster lives in a temporary directory: its own munge key and `munged` socket, a
`slurm.conf` (partition `debug`, no accounting), `slurmctld` and one `slurmd` per node on
free ports, state, spool, logs and pid files under that directory. One node is
`localhost` with the machine's CPUs. Several nodes are namespace hosts of
`bls_dlrm.harness.hosts` (a network namespace on a private bridge, a hostname, a hosts file), each
running its own `slurmd`, with the controller on the bridge. The daemons run in the
foreground as children of this process, so teardown stops exactly them, removes the hosts
and the directory, also when the run fails. Clients find the cluster through SLURM_CONF,
which the runs export to Snakemake (and through `sbatch --export=ALL` to every job).

Slurm and munge come from Debian (`apt-get install slurm-wlm munge`, done here when they
are missing and we are root). A Slurm or munge daemon already running on the machine is
never touched: the script refuses to start instead.

Both runs copy the tracked files of the working tree to a temporary folder (the
repository's results/ stay untouched) and write a test profile: profiles/slurm with its
placeholders filled (partition `debug`, no account, the node's CPUs per node) and the
overrides a test cluster needs.

`smoke` (one node) runs `snakemake --profile <that profile> --configfile
config/smoke.yaml` and checks that every figure and results/claims.md appeared and that
every launch (run and serving rules) ran its ranks inside a Slurm allocation: the job's
Slurm log names the job id, slurmd's log shows the job's batch script, and every rank
log's header a start inside the job's allocation.

`multinode` (two nodes of one CPU) runs one launch of the smoke sweep and its tables, and
checks the same plus that the ranks ran on exactly the nodes of their job's allocation,
which the executor's job step hides from MPICH's launcher unless `bls-dlrm mpiexec`
restores them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bls_dlrm.launch import expand_hostlist

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["slurm-wlm", "munge"]
CLIENTS = ("sbatch", "srun", "salloc", "squeue", "sinfo", "scancel", "scontrol", "sacct")
DAEMONS = ("slurmctld", "slurmd", "munged", "slurmdbd", "slurmstepd")
PARTITION = "debug"
NODE = "localhost"
# Settings of the test profile on top of profiles/slurm (a one-node cluster without
# accounting on a machine with 2 cores): no account to check, status queries by squeue
# (jobs stay listed for MinJobAge), a short first status check, Slurm logs kept (the
# check reads them) and memory requests that fit the machine.
TEST_PROFILE_EXTRA = """
# Test overrides (tests/slurm_cluster.py): one-node cluster without accounting.
slurm-no-account: true
slurm-status-command: squeue
slurm-init-seconds-before-status-checks: 2
slurm-keep-successful-logs: true
latency-wait: 5
retries: 0
"""
TEST_MEM_MB_PER_CPU = 1000


class ClusterError(RuntimeError):
    """The cluster could not be started (or must not be, on this machine)."""


def log(msg: str) -> None:
    print(f"[slurm-test] {msg}", flush=True)


def running_daemons() -> list[str]:
    """`name (pid)` of every Slurm or munge daemon running on the machine."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
        except OSError:
            continue
        if comm in DAEMONS:
            found.append(f"{comm} ({proc.name})")
    return found


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt-get when a binary is missing (root only)."""
    needed = ["slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "munged"]
    missing = [b for b in needed if shutil.which(b) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ClusterError(
            f"missing {', '.join(missing)}; install {' '.join(PACKAGES)} (Debian) as root"
        )
    log(f"installing {' '.join(PACKAGES)} (missing: {', '.join(missing)})")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], check=True, env=env)
    still = [b for b in needed if shutil.which(b) is None]
    if still:
        raise ClusterError(f"after apt-get install, still missing: {', '.join(still)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(
    root: Path,
    cpus: int,
    ctld_port: int,
    slurmd_port: int,
    nodes: list[tuple[str, str]] | None = None,
    ctld_address: str = "127.0.0.1",
) -> str:
    """slurm.conf of the test cluster; ``nodes`` are (name, address) pairs of ``cpus`` each
    (default: one node, localhost). Half the machine's memory is shared among the nodes."""
    host = socket.gethostname().split(".")[0]
    nodes = nodes or [(NODE, "127.0.0.1")]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // len(nodes)
    node_lines = "".join(
        f"NodeName={name} NodeAddr={addr} CPUs={cpus} RealMemory={memory} State=UNKNOWN\n"
        for name, addr in nodes
    )
    names = ",".join(name for name, _ in nodes)
    return f"""\
ClusterName=blstest
SlurmctldHost={host}({ctld_address})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
PlugStackConfig={root}/plugstack.conf
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=verbose
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=600
{node_lines}PartitionName={PARTITION} Nodes={names} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """Context manager: a Slurm cluster under a temporary directory.

    One node (``localhost``, the machine's CPUs) by default. With ``nodes`` > 1, every node
    is a namespace host of :class:`bls_dlrm.harness.hosts.NetnsHosts` (its own network namespace on
    a private bridge, its own hostname) running its own ``slurmd``, with ``cpus`` CPUs
    (default: the machine's CPUs shared out); the controller listens on the bridge. Slurm
    then places a job's tasks on several nodes, and MPICH's launcher must reach them
    through ``srun``, as on a real cluster.
    """

    def __init__(
        self,
        cpus: int | None = None,
        startup_timeout: float = 60.0,
        keep: bool = False,
        nodes: int = 1,
    ):
        if nodes < 1:
            raise ValueError(f"need at least one node, got {nodes}")
        self.nodes = nodes
        self.cpus = cpus or max(1, (os.cpu_count() or 1) // nodes)
        self.keep = keep
        self.startup_timeout = startup_timeout
        self.root: Path | None = None
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.hosts = None  # NetnsHosts of a multi-node cluster

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> SlurmCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def conf(self) -> Path:
        assert self.root is not None
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        assert self.root is not None
        path = f"{self.root / 'bin'}:{os.environ.get('PATH', '')}"
        return os.environ | {"SLURM_CONF": str(self.conf), "PATH": path}

    def _client_wrappers(self) -> None:
        """Slurm's client commands, first on PATH, each pointed at this cluster's conf.

        SLURM_CONF alone does not reach every client: the Slurm executor's job step drops
        the SLURM_* variables other than the job's identity before it calls `srun`.
        """
        assert self.root is not None
        bindir = self.root / "bin"
        bindir.mkdir(mode=0o755)
        for name in CLIENTS:
            real = shutil.which(name)
            if real is None:
                continue
            wrapper = bindir / name
            # Submissions are recorded (log/sbatch.calls) for the check and for debugging.
            record = f'echo "$*" >> "{self.root}/log/{name}.calls"\n' if name == "sbatch" else ""
            wrapper.write_text(f'#!/bin/sh\n{record}SLURM_CONF="{self.conf}" exec "{real}" "$@"\n')
            wrapper.chmod(0o755)

    def logfile(self, name: str) -> Path:
        assert self.root is not None
        return self.root / "log" / f"{name}.log"

    @property
    def node_names(self) -> list[str]:
        return [NODE] if self.hosts is None else self.hosts.hostnames

    def slurmd_logs(self) -> str:
        """Every node's slurmd log, one after the other."""
        return "".join(
            self.logfile(f"slurmd-{n}").read_text(errors="replace")
            for n in self.node_names
            if self.logfile(f"slurmd-{n}").exists()
        )

    def start(self) -> None:
        if sys.platform != "linux":
            raise ClusterError("the test cluster needs Linux")
        if os.geteuid() != 0:
            raise ClusterError("the test cluster runs its daemons as root (SlurmUser=root)")
        others = running_daemons()
        if others:
            raise ClusterError(
                "refusing to start: Slurm/munge daemons already run on this machine: "
                + ", ".join(others)
            )
        ensure_installed()
        self.root = Path(tempfile.mkdtemp(prefix="bls-slurm-"))
        # munged wants its socket's folders searchable by everyone.
        self.root.chmod(0o711)
        for sub in ("munge", "state", "spool", "run", "log"):
            (self.root / sub).mkdir(mode=0o700)
        (self.root / "munge").chmod(0o711)
        (self.root / "plugstack.conf").write_text("")
        self._client_wrappers()
        self._start_munge()
        nodes, ctld = None, "127.0.0.1"
        if self.nodes > 1:
            self.hosts = _namespace_hosts(self.nodes, self.cpus)
            nodes = [(h.hostname, h.address) for h in self.hosts.hosts]
            ctld = self.hosts.bridge_address
        self.conf.write_text(
            slurm_conf(self.root, self.cpus, free_port(), free_port(), nodes, ctld)
        )
        log(
            f"cluster in {self.root} ({self.nodes} node(s) of {self.cpus} CPUs: "
            f"{', '.join(self.node_names)}; partition {PARTITION})"
        )
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        for i, name in enumerate(self.node_names):
            slurmd = ["slurmd", "-D", "-f", str(self.conf), "-N", name]
            (self.root / "spool" / name).mkdir(mode=0o700)
            if self.hosts is not None:
                scratch = self.root / "run" / f"cgroup-{name}"
                scratch.mkdir()
                slurmd = _on_host(self.hosts.hosts[i], slurmd, scratch)
            self._spawn(f"slurmd-{name}", slurmd)
        self._wait_idle()

    def _start_munge(self) -> None:
        assert self.root is not None
        m = self.root / "munge"
        key = m / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn(
            "munged",
            [
                "munged",
                "-F",
                f"--socket={m / 'munge.socket'}",
                f"--key-file={key}",
                f"--log-file={m / 'munged.log'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
        )
        self._wait(lambda: (m / "munge.socket").exists(), "munged's socket", "munged")

    def _spawn(self, name: str, argv: list[str]) -> None:
        assert self.root is not None
        out = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env | {"TZ": "UTC"},
            start_new_session=True,
        )
        out.close()
        self.procs.append((name, proc))

    def _wait(self, ready, what: str, daemon: str | None = None) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise ClusterError(f"{name} exited ({proc.returncode}):\n{self.tail(name)}")
            if ready():
                return
            time.sleep(0.5)
        raise ClusterError(f"timed out waiting for {what}\n{self.tail(daemon or 'slurmctld')}")

    def node_states(self) -> list[str]:
        r = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=20,
        )
        return r.stdout.split() if r.returncode == 0 else []

    def _wait_idle(self) -> None:
        idle = ["idle"] * self.nodes
        self._wait(lambda: self.node_states() == idle, "sinfo to show every node idle")
        log("every node idle")

    def tail(self, name: str, lines: int = 30) -> str:
        if self.root is None:
            return ""
        text = []
        for path in (self.logfile(name), self.root / "log" / f"{name}.out"):
            if path.exists():
                text += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)

    def stop(self) -> None:
        """Cancel every job, stop the daemons this object started, remove the directory."""
        running = [(n, p) for n, p in self.procs if p.poll() is None]
        if any(n == "slurmctld" for n, _ in running):
            subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, timeout=20)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                r = subprocess.run(
                    ["squeue", "-h", "-t", "PD,R,CG,S"],
                    env=self.env,
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                if r.returncode != 0 or not r.stdout.strip():
                    break
                time.sleep(0.5)
        # slurmd first (it stops its steps), then the controller, then munge.
        order = {"slurmd": 0, "slurmctld": 1, "munged": 2}
        for name, proc in sorted(running, key=lambda np: order.get(np[0].split("-")[0], 3)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # a node's slurmd runs under its launcher
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                log(f"{name} ({proc.pid}) ignored SIGTERM: killed")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs = []
        if self.hosts is not None:
            self.hosts.cleanup()  # kills what is left in the nodes' namespaces
            self.hosts = None
        if self.root is not None:
            if self.keep:
                log(f"kept {self.root}")
            else:
                shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def _on_host(host, argv: list[str], scratch: Path) -> list[str]:
    """argv run on a namespace host as its daemon: in the host's network namespace, with its
    hostname, and in a mount namespace of its own where ``/etc/netns/<ns>/hosts`` covers
    ``/etc/hosts`` and a sysfs of the host's network namespace covers ``/sys`` (MPICH's UCX
    finds its network devices there), with the machine's cgroup tree (slurmd reads it) put
    back under it by way of ``scratch``, an empty folder."""
    hosts_file = shlex.quote(f"/etc/netns/{host.netns}/hosts")
    tmp = shlex.quote(str(scratch))
    setup = " && ".join(
        [
            f"mount --bind {hosts_file} /etc/hosts",
            f"mount --rbind /sys/fs/cgroup {tmp}",
            "mount -t sysfs sysfs /sys",
            f"mount --move {tmp} /sys/fs/cgroup",
            f"hostname {shlex.quote(host.hostname)}",
        ]
    )
    return [
        "nsenter",
        f"--net=/run/netns/{host.netns}",
        "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        f'{setup} && exec "$@"',
        "sh",
        *argv,
    ]


def _namespace_hosts(n: int, cpus: int):
    """n namespace hosts for the nodes of a multi-node cluster (ClusterError if impossible)."""
    from bls_dlrm.harness.hosts import HostsError, NetnsHosts, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        raise ClusterError(f"{n} nodes need namespace hosts, and: {reason}")
    try:
        return NetnsHosts(n, ranks_per_host=cpus).up()
    except HostsError as e:
        raise ClusterError(f"could not make {n} namespace hosts: {e}") from e


# -- the smoke workflow through profiles/slurm ------------------------------------------


def copy_tree(dest: Path) -> None:
    """The tracked files of the working tree (as they are now) under dest."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = Path(os.fsdecode(raw))
        src = REPO / rel
        if not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)


def make_test_profile(dest: Path, cpus: int) -> Path:
    """profiles/slurm with the placeholders filled for the test cluster, under dest."""
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    text = re.sub(r'(?m)^\s*slurm_account:\s*"<ACCOUNT>"\s*\n', "", text)
    text = text.replace("<PARTITION>", PARTITION).replace("<RANKS_PER_NODE>", str(cpus))
    text = re.sub(r"(?m)^(\s*mem_mb_per_cpu:)\s*\d+", rf"\1 {TEST_MEM_MB_PER_CPU}", text)
    left = re.findall(r"(?m)^[^#\n]*(<[A-Z_]+>)", text)
    if left:
        raise ClusterError(f"profiles/slurm/config.yaml: unknown placeholders {left}")
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(text + TEST_PROFILE_EXTRA)
    return dest


def launch_jobs(work: Path, rules: tuple[str, ...]) -> dict[str, list[str]]:
    """Slurm job ids of every job of the given rules, per job, from the kept Slurm logs."""
    jobs: dict[str, list[str]] = {}
    logdir = work / ".snakemake" / "slurm_logs"
    for rule in rules:
        for path in sorted((logdir / f"rule_{rule}").rglob("*.log")):
            key = f"{rule}/{path.parent.relative_to(logdir / f'rule_{rule}')}"
            jobs.setdefault(key, []).append(path.stem)
    return jobs


#: Figures only an optional target draws, not the default one (fig8: `snakemake torchrec`,
#: workflow/rules/torchrec.smk, which needs the TorchRec extra and a 13-minute benchmark).
OPTIONAL_FIGURES = frozenset({"fig8_torchrec"})


def check_smoke(work: Path, slurmctld_log: str, slurmd_log: str) -> list[str]:
    """Problems with the smoke run's outputs (empty: all good)."""
    problems = []
    figures = sorted(
        p.stem for p in (work / "notebooks").glob("fig*.py") if p.stem not in OPTIONAL_FIGURES
    )
    if not figures:
        problems.append("no figure notebooks found")
    for fig in figures:
        for ext in ("pdf", "png"):
            if not (work / "figures" / f"{fig}.{ext}").is_file():
                problems.append(f"missing figures/{fig}.{ext}")
    claims = work / "results" / "claims.md"
    if not claims.is_file() or not claims.read_text().strip():
        problems.append("missing or empty results/claims.md")
    return problems + check_launches(work, slurmctld_log, slurmd_log, serving=True)


def check_launches(
    work: Path, slurmctld_log: str, slurmd_log: str, serving: bool, spread: bool = False
) -> list[str]:
    """Problems with the launches: one Slurm job per launch folder, every rank inside its
    job's allocation (and with ``spread``, on every node of it, no rank elsewhere)."""
    problems = []
    runs = sorted((work / "results" / "runs").rglob("rank0*.jsonl"))
    if not runs:
        problems.append("no run logs under results/runs")
    launches = launch_jobs(work, ("run_2ranks", "serve"))
    n_run = len([k for k in launches if k.startswith("run_")])
    n_dirs = len({p.parent.parent for p in runs})
    if n_run != n_dirs:
        problems.append(f"{n_run} Slurm run jobs for {n_dirs} launch folders")
    if serving and not any(k.startswith("serve/") for k in launches):
        problems.append("no Slurm job of the serving launch")
    for key, ids in sorted(launches.items()):
        problems += check_launch(work, key, ids[-1], slurmctld_log, slurmd_log, spread)
    return problems


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=None)


def check_launch(
    work: Path, key: str, job: str, slurmctld_log: str, slurmd_log: str, spread: bool = False
) -> list[str]:
    """Did every rank of this launch run while its Slurm job held the allocation?

    Evidence without accounting: slurmctld's log gives the job's allocation (instant and
    nodes) and completion instant, slurmd's log that the job's batch script ran on a node,
    the job's Slurm log the launch folder its rule wrote, and every rank log's header the
    instant the rank started (`started_utc`; the daemons log UTC here, see `TZ` in the
    daemons' env) and its host. With ``spread``, the ranks' hosts must be exactly the
    allocation's nodes (a multi-node cluster, whose node names are the hosts' names).
    """
    slurm_log = next((work / ".snakemake" / "slurm_logs").rglob(f"{job}.log"))
    folder = re.search(r"--out '?(results/(?:runs|serving)/[^' ]+)", slurm_log.read_text())
    alloc = re.search(
        rf"^\[(\S+)\] sched: Allocate JobId={job} NodeList=(\S+)", slurmctld_log, re.M
    )
    done = re.search(rf"^\[(\S+)\] _job_complete: JobId={job} done", slurmctld_log, re.M)
    if folder is None or alloc is None or done is None:
        return [f"{key}: Slurm job {job}: no launch folder, allocation or completion logged"]
    if not re.search(rf"Launching batch job {job} ", slurmd_log):
        return [f"{key}: Slurm job {job}: slurmd never started its batch script"]
    begin, end = _stamp(alloc.group(1)), _stamp(done.group(1))
    headers = []
    for path in sorted((work / folder.group(1)).rglob("*.jsonl")):
        with open(path) as f:
            headers.append(json.loads(f.readline()))
    if not headers:
        return [f"{key}: no rank logs in {folder.group(1)}"]
    outside = [
        h["run_id"] + f" rank {h['rank']}"
        for h in headers
        if not begin <= _stamp(h["started_utc"]) <= end
    ]
    if outside:
        return [f"{key}: ranks started outside Slurm job {job} ({begin}..{end}): {outside}"]
    nodes = expand_hostlist(alloc.group(2))
    hosts = sorted({h["host"] for h in headers})
    if spread and hosts != sorted(nodes):
        return [f"{key}: Slurm job {job} holds nodes {nodes}, its ranks ran on {hosts}"]
    step = re.search(rf"launch task StepId={job}\.\d+ ", slurmd_log) is not None
    how = f"proxies in job step {job}.0" if step else "in the job's batch step"
    on = f" on {', '.join(hosts)}" if spread else ""
    log(f"{key}: {len(headers)} rank logs inside Slurm job {job}{on} ({how})")
    return []


def check_bit_identical(iterations: Path) -> list[str]:
    """Every series of the launch computed the same predictions on every rank and iteration
    (the checksums of the iterations table), whatever its collective and lag bound."""
    import pandas as pd

    label = "config.series_label"
    df = pd.read_parquet(iterations, columns=[label, "rank", "iteration", "checksum"])
    series = sorted(df[label].unique())
    per_step = df.groupby(["rank", "iteration"])["checksum"].agg(["nunique", "size"])
    differ = per_step[per_step["nunique"] > 1]
    if len(series) < 2 or (per_step["size"] != len(series)).any():
        return [f"{iterations.name}: expected every series on every step, got {series}"]
    if len(differ):
        return [f"predictions differ between series at {len(differ)} (rank, iteration) steps"]
    log(f"predictions bit-identical over {len(series)} series, {len(per_step)} steps")
    return []


def run_workflow(
    cluster: SlurmCluster,
    tmp: Path,
    configfile: str,
    targets: list[str],
    timeout: float,
    env: dict[str, str] | None = None,
) -> tuple[Path, float] | None:
    """snakemake through the test profile in a copy of the tree: (work folder, wall
    seconds), or None (printed why) when it failed."""
    work = tmp / "repo"
    copy_tree(work)
    profile = make_test_profile(tmp / "profile", cluster.cpus)
    snakemake = Path(sys.executable).parent / "snakemake"
    # targets first: --configfile takes every word after it
    argv = [str(snakemake), *targets, "--profile", str(profile), "--configfile", configfile]
    log(f"in a copy of the tree at {work}: {' '.join(argv)}")
    start = time.monotonic()
    try:
        code = subprocess.run(
            argv,
            cwd=work,
            env=cluster.env | {"OMP_NUM_THREADS": "1"} | (env or {}),
            timeout=timeout,
        ).returncode
    except subprocess.TimeoutExpired:
        code = None
    wall = time.monotonic() - start
    if code == 0:
        return work, wall
    log(f"snakemake {'timed out' if code is None else f'failed ({code})'}")
    for name in ("slurmctld", *(f"slurmd-{n}" for n in cluster.node_names)):
        print(f"--- {name} log (tail) ---\n{cluster.tail(name)}")
    for path in sorted((work / ".snakemake" / "slurm_logs").rglob("*.log"))[-3:]:
        print(f"--- {path.relative_to(work)} ---\n{path.read_text()[-3000:]}")
    return None


def _report(problems: list[str], what: str, wall: float) -> int:
    for p in problems:
        log(f"FAIL: {p}")
    if problems:
        return 1
    log(f"OK: {what} in {wall:.0f} s wall time")
    return 0


def in_cluster(nodes: int, keep: bool, body) -> int:
    """body(cluster, tmp) on a fresh cluster of ``nodes`` and a temporary folder."""
    tmp = Path(tempfile.mkdtemp(prefix="bls-smoke-"))
    try:
        with SlurmCluster(keep=keep, nodes=nodes) as cluster:
            return body(cluster, tmp)
    finally:
        if keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def smoke(timeout: float, keep: bool = False) -> int:
    """config/smoke.yaml end to end through profiles/slurm on a one-node cluster."""

    def body(cluster: SlurmCluster, tmp: Path) -> int:
        done = run_workflow(cluster, tmp, "config/smoke.yaml", [], timeout)
        if done is None:
            return 1
        work, wall = done
        problems = check_smoke(
            work, cluster.logfile("slurmctld").read_text(errors="replace"), cluster.slurmd_logs()
        )
        return _report(problems, "smoke workflow through Slurm", wall)

    return in_cluster(1, keep, body)


MULTINODE_SCENARIO = "rotating-20ms"


def multinode(timeout: float, keep: bool = False, nodes: int = 2) -> int:
    """One launch of the smoke sweep (every series) through profiles/slurm on ``nodes``
    namespace nodes of one CPU each: a launch of 2 ranks must span 2 nodes."""

    def body(cluster: SlurmCluster, tmp: Path) -> int:
        import yaml

        config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
        config["scenarios"] = [s for s in config["scenarios"] if s["name"] == MULTINODE_SCENARIO]
        # Every node sees the machine's cores: each would pin its rank to core 0.
        config["run"]["binding"] = "none"
        (tmp / "multinode.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        # The ranks' UCX: TCP over the bridge (each node sees one machine, as in hosts.py).
        ucx = {"UCX_TLS": "self,tcp", "UCX_NET_DEVICES": cluster.hosts.bridge}
        done = run_workflow(
            cluster, tmp, str(tmp / "multinode.yaml"), ["results/tables/runs.parquet"], timeout, ucx
        )
        if done is None:
            return 1
        work, wall = done
        problems = check_launches(
            work,
            cluster.logfile("slurmctld").read_text(errors="replace"),
            cluster.slurmd_logs(),
            serving=False,
            spread=True,
        )
        problems += check_bit_identical(work / "results" / "tables" / "iterations.parquet")
        return _report(problems, f"a launch over {nodes} Slurm nodes", wall)

    return in_cluster(nodes, keep, body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("smoke", help="run config/smoke.yaml through profiles/slurm")
    s.add_argument("--timeout", type=float, default=300.0, help="seconds for snakemake")
    s.add_argument("--keep", action="store_true", help="keep the cluster and work folders")
    m = sub.add_parser("multinode", help="one launch through profiles/slurm over 2 nodes")
    m.add_argument("--timeout", type=float, default=300.0, help="seconds for snakemake")
    m.add_argument("--keep", action="store_true", help="keep the cluster and work folders")
    r = sub.add_parser("run", help="run a command against a fresh cluster (SLURM_CONF set)")
    r.add_argument("--nodes", type=int, default=1, help="nodes (more than one: namespaces)")
    r.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    # A terminated test still tears its cluster down (the context managers' exits).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.cmd == "smoke":
            return smoke(args.timeout, args.keep)
        if args.cmd == "multinode":
            return multinode(args.timeout, args.keep)
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            ap.error("run: no command given")
        with SlurmCluster(nodes=args.nodes) as cluster:
            return subprocess.run(command, env=cluster.env).returncode
    except ClusterError as e:
        log(f"error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
