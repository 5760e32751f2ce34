"""Several MPI "hosts" on one machine: network, UTS and time namespaces for MPICH's launcher.

Each host is a Linux network namespace with one veth into a private bridge, an address on
a private subnet (``10.213.0.0/24`` unless that is taken), its own hostname (a UTS
namespace) and optionally its own monotonic and boot clock offset (a time namespace). The
venv's ``mpiexec`` (MPICH Hydra) starts its proxies on them through a launcher script that
stands in for ``ssh``: it drops the ssh options, maps the host argument (an address) to
its namespace and runs the proxy command under ``ip netns exec`` and ``unshare``. Inside a
host, MPICH uses shared memory; between hosts, TCP over the bridge (the ranks' UCX is told
to use only its TCP transport on the bridge: left alone, it would see one machine and use
shared memory between hosts too).

Everything the harness makes carries a prefix unique to the process (``blsh<pid>``):
namespaces ``blsh<pid>-h<i>``, bridge ``blsh<pid>br``, veths, a hosts file per namespace
under ``/etc/netns/<namespace>/`` (``ip netns exec`` bind-mounts it over ``/etc/hosts``
inside the namespace only, so every host resolves every other host's name; the machine's
``/etc/hosts`` is never touched) and a temporary folder with the launcher script and a
state file. Nothing is routed out of the bridge (no default route, no NAT, no forwarding
changes). :meth:`NetnsHosts.cleanup` removes all of it and is idempotent; it runs on
leaving the ``with`` block, on an exception while setting up, at interpreter exit and on
SIGTERM/SIGINT. Hosts of a process killed before its cleanup ran (SIGKILL) are removed by
the next harness that starts, or by ``down``.

Clock offsets are whole seconds and move CLOCK_MONOTONIC and CLOCK_BOOTTIME (so
``time.monotonic()`` and ``time.perf_counter()``) of every process on the host; the wall
clock (CLOCK_REALTIME) is one for all hosts, as time namespaces leave it alone. Ranks fill
the hosts in order: ranks 0..k-1 on host 1, the next ones on host 2, and so on.

Needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN), ``ip`` (iproute2) and ``unshare``
(util-linux, with ``--time`` for clock offsets). :func:`unavailable_reason` says why they
are missing, for a clear skip.

Library::

    from bls_dlrm.harness.hosts import NetnsHosts

    with NetnsHosts(2, ranks_per_host=2, monotonic_offsets=[0, 1000]) as hosts:
        result = hosts.run(["python", "script.py"], timeout=60)  # 4 ranks on 2 hosts
        hosts.mpiexec_args          # [mpiexec, -iface, ..., -hosts, a1:2,a2:2]
        hosts.exec_on(1, ["python", "-c", "import time; print(time.monotonic())"])

Command line (``python -m bls_dlrm.harness.hosts``)::

    up   -n 2 [--ranks-per-host 2] [--monotonic-offsets 0,1000]
         make the hosts and leave them; prints the state file and the mpiexec prefix
    run  -n 2 [--ranks-per-host 2] [--monotonic-offsets 0,1000] [--timeout S] -- ARGV...
         make the hosts, run ARGV on all their ranks, remove the hosts; exits with the
         run's status
    down [STATE_FILE ...]
         remove the hosts of the given state files (default: every ``blsh*`` state of a
         process that is gone, but not hosts made by ``up``; ``--all``: every state file)
    list show the state files of live, kept (made by ``up``) and stale harnesses
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bls_dlrm.launch import mpiexec_path, run_command

PREFIX = "blsh"
DEFAULT_SUBNET = "10.213.0.0/24"
# Where the state of every live harness is recorded, so ``down`` can clean up after a
# process that was killed before its own cleanup ran.
STATE_DIR = Path(tempfile.gettempdir()) / "bls_dlrm_hosts"
NETNS_ETC = Path("/etc/netns")


class HostsError(RuntimeError):
    """The hosts could not be made (the message says why)."""


@dataclass(frozen=True)
class Host:
    """One namespace host: ``address`` is what ``-hosts`` names and the launcher maps."""

    index: int
    netns: str
    hostname: str
    address: str
    slots: int
    monotonic_offset: int
    veth_outer: str
    veth_inner: str


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )


def unavailable_reason(time_namespace: bool = False) -> str | None:
    """Why namespace hosts cannot be made here, or None when they can.

    Checks the tools and tries the privileged steps once (a throwaway network namespace
    and, with ``time_namespace``, a time namespace), so a skip names the real cause.
    """
    if sys.platform != "linux":
        return f"network namespaces need Linux, not {sys.platform}"
    ip, unshare = _which("ip"), _which("unshare")
    if ip is None:
        return "no 'ip' command (iproute2) to make network namespaces"
    if unshare is None:
        return "no 'unshare' command (util-linux) for UTS and time namespaces"
    if os.geteuid() != 0:
        return f"network namespaces need root (running as uid {os.geteuid()})"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = subprocess.run([ip, "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"'ip netns add' is not permitted here: {made.stderr.strip()}"
    try:
        cmd = [ip, "netns", "exec", probe, unshare, "--uts", "--fork", "--kill-child"]
        if time_namespace:
            cmd += ["--time", "--monotonic", "1", "--boottime", "1"]
        tried = subprocess.run([*cmd, "true"], capture_output=True, text=True, timeout=30)
        if tried.returncode != 0:
            what = "UTS and time" if time_namespace else "UTS"
            return f"cannot make {what} namespaces in a network namespace: {tried.stderr.strip()}"
    finally:
        subprocess.run([ip, "netns", "del", probe], capture_output=True)
    return None


def _routed_networks() -> list[tuple[ipaddress.IPv4Network, str]]:
    """Every IPv4 network routed or addressed on this machine, with its device (no default)."""
    out = subprocess.run(
        [_which("ip") or "ip", "-j", "-4", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    nets = []
    for route in json.loads(out or "[]"):
        dst = route.get("dst", "")
        if dst in ("", "default") or route.get("type") in ("broadcast", "local", "multicast"):
            continue
        with contextlib.suppress(ValueError):
            nets.append((ipaddress.ip_network(dst, strict=False), route.get("dev", "?")))
    out = subprocess.run(
        [_which("ip") or "ip", "-j", "-4", "addr", "show"], capture_output=True, text=True
    ).stdout
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            net = ipaddress.ip_network(f"{a['local']}/{a.get('prefixlen', 32)}", strict=False)
            nets.append((net, link.get("ifname", "?")))
    return nets


def choose_subnet(subnet: str | None = None) -> ipaddress.IPv4Network:
    """``subnet`` if given and free; else the first free /24 of 10.213.0.0/16.

    A subnet already used by a network that is not another harness's bridge is an error
    (never shared with, or routed over, something the machine already has).
    """
    used = _routed_networks()
    if subnet is not None:
        net = ipaddress.ip_network(subnet)
        clash = [f"{n} on {dev}" for n, dev in used if n.overlaps(net)]
        if clash:
            raise HostsError(f"subnet {net} is already in use here: {', '.join(clash)}")
        return net
    for candidate in ipaddress.ip_network("10.213.0.0/16").subnets(new_prefix=24):
        clash = [(n, dev) for n, dev in used if n.overlaps(candidate)]
        if not clash:
            return candidate
        # another harness's bridge: take the next /24; anything else: refuse
        if any(not dev.startswith(PREFIX) for _, dev in clash):
            raise HostsError(
                f"subnet {candidate} is already in use here: "
                + ", ".join(f"{n} on {dev}" for n, dev in clash)
                + "; pass another private subnet"
            )
    raise HostsError("no free /24 in 10.213.0.0/16 for the hosts; pass another private subnet")


_LAUNCHER = """#!/bin/sh
# Stands in for ssh under MPICH's launcher: skip ssh's options, map the host (an address)
# to its namespace, and run the remote command there with its own hostname and clocks.
while [ $# -gt 0 ]; do
    case "$1" in
        -[bcDEeFIiJLlmOopQRSWw]) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
host="$1"
shift
case "$host" in
{cases}
    *) echo "{prefix} launcher: unknown host '$host'" >&2; exit 255 ;;
esac
# ssh joins its command arguments with spaces for the remote shell; so do we.
exec {ip} netns exec "$ns" {unshare} --uts --fork --kill-child $clock -- \\
    /bin/sh -c 'hostname "$0" && exec /bin/sh -c "$1"' "$name" "$*"
"""


class NetnsHosts:
    """N namespace hosts and the ``mpiexec`` arguments that start ranks on them.

    ``ranks_per_host`` is an int (the same for every host) or one count per host;
    ``monotonic_offsets`` gives each host's CLOCK_MONOTONIC and CLOCK_BOOTTIME offset in
    seconds, whole (None: no time namespace; a host with offset 0 still gets one when any host
    has an offset, so all hosts start the same way). Made by :meth:`up` (or ``with``),
    removed by :meth:`cleanup`.
    """

    def __init__(
        self,
        n: int,
        ranks_per_host: int | Sequence[int] = 1,
        monotonic_offsets: Sequence[int] | None = None,
        subnet: str | None = None,
        prefix: str | None = None,
    ):
        if n < 1:
            raise ValueError(f"need at least one host, got {n}")
        slots = [ranks_per_host] * n if isinstance(ranks_per_host, int) else list(ranks_per_host)
        if len(slots) != n or any(int(s) < 1 for s in slots):
            raise ValueError(f"ranks_per_host: one count >= 1 per host, got {ranks_per_host!r}")
        if monotonic_offsets is not None:
            if any(float(x) != int(x) for x in monotonic_offsets):
                raise ValueError(f"monotonic_offsets: whole seconds, got {monotonic_offsets!r}")
            monotonic_offsets = [int(x) for x in monotonic_offsets]
            if len(monotonic_offsets) != n:
                raise ValueError(f"monotonic_offsets: one per host, got {monotonic_offsets!r}")
        self.n = n
        self.slots = [int(s) for s in slots]
        self.offsets = monotonic_offsets
        self._subnet_arg = subnet
        self.prefix = prefix or f"{PREFIX}{os.getpid()}"
        if len(self.prefix) > 11 or not self.prefix.isalnum():
            raise ValueError(f"prefix must be at most 11 letters or digits, got {self.prefix!r}")
        self.bridge = f"{self.prefix}br"
        self.hosts: list[Host] = []
        self.subnet: ipaddress.IPv4Network | None = None
        self.bridge_address: str | None = None
        self.workdir: Path | None = None
        self.launcher: Path | None = None
        self.state_file = STATE_DIR / f"{self.prefix}.json"
        self._ip = _which("ip") or "ip"
        self._unshare = _which("unshare") or "unshare"
        self._lock = threading.RLock()  # a signal may arrive during cleanup
        self._made = False
        # Left up when this process exits (``python -m bls_dlrm.harness.hosts up``): not removed by
        # another harness as left behind, only by ``down``.
        self.keep = False

    # -- making and removing -------------------------------------------------------------

    def _sh(self, *args: str) -> None:
        result = subprocess.run([self._ip, *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise HostsError(f"ip {' '.join(args)}: {result.stderr.strip()}")

    def up(self) -> NetnsHosts:
        """Make the bridge, namespaces, addresses, hosts files and launcher script."""
        if self._made:
            return self
        reason = unavailable_reason(time_namespace=self.offsets is not None)
        if reason is not None:
            raise HostsError(reason)
        self._made = True
        _register(self)
        try:
            self._up()
        except BaseException:
            self.cleanup()
            raise
        return self

    def _up(self) -> None:
        # One harness at a time picks its subnet and puts it on its bridge, so two
        # processes starting at once never take the same one.
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        with open(STATE_DIR / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            down()  # what processes killed before their cleanup left behind
            self.subnet = choose_subnet(self._subnet_arg)
            self._make_bridge()
        self._make_hosts()

    def _make_bridge(self) -> None:
        addresses = list(self.subnet.hosts())
        if len(addresses) < self.n + 1:
            raise HostsError(f"subnet {self.subnet} is too small for {self.n} hosts")
        self.bridge_address = str(addresses[0])
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.hosts = [
            Host(
                index=i,
                netns=f"{self.prefix}-h{i + 1}",
                hostname=f"{self.prefix}-h{i + 1}",
                address=str(addresses[i + 1]),
                slots=self.slots[i],
                monotonic_offset=0 if self.offsets is None else self.offsets[i],
                veth_outer=f"{self.prefix}v{i + 1}",
                veth_inner=f"{self.prefix}p{i + 1}",
            )
            for i in range(self.n)
        ]
        self._write_state()
        plen = self.subnet.prefixlen
        self._sh("link", "add", self.bridge, "type", "bridge")
        self._sh("addr", "add", f"{self.bridge_address}/{plen}", "dev", self.bridge)
        self._sh("link", "set", self.bridge, "up")

    def _make_hosts(self) -> None:
        plen = self.subnet.prefixlen
        hosts_file = "127.0.0.1 localhost\n::1 localhost\n" + "".join(
            f"{h.address} {h.hostname}\n" for h in self.hosts
        )
        for h in self.hosts:
            self._sh("netns", "add", h.netns)
            etc = NETNS_ETC / h.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts_file)
            self._sh("link", "add", h.veth_outer, "type", "veth", "peer", "name", h.veth_inner)
            self._sh("link", "set", h.veth_outer, "master", self.bridge)
            self._sh("link", "set", h.veth_outer, "up")
            self._sh("link", "set", h.veth_inner, "netns", h.netns)
            # Inside every namespace the veth has the bridge's name, so one ``-iface``
            # names the right interface for the launcher and for every rank.
            self._sh("-n", h.netns, "link", "set", h.veth_inner, "name", self.bridge)
            self._sh("-n", h.netns, "addr", "add", f"{h.address}/{plen}", "dev", self.bridge)
            self._sh("-n", h.netns, "link", "set", self.bridge, "up")
            self._sh("-n", h.netns, "link", "set", "lo", "up")
        self.launcher = self.workdir / "launcher.sh"
        self.launcher.write_text(self._launcher_text())
        self.launcher.chmod(0o755)

    def _launcher_text(self) -> str:
        cases = []
        for h in self.hosts:
            clock = ""
            if self.offsets is not None:
                off = str(h.monotonic_offset)
                clock = f"--time --monotonic {off} --boottime {off}"
            cases.append(
                f"    {h.address}|{h.hostname})\n"
                f"        ns={h.netns}; name={h.hostname}; clock='{clock}' ;;"
            )
        return _LAUNCHER.format(
            cases="\n".join(cases), prefix=self.prefix, ip=self._ip, unshare=self._unshare
        )

    def _write_state(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {
            "pid": os.getpid(),
            "keep": self.keep,
            "prefix": self.prefix,
            "bridge": self.bridge,
            "subnet": str(self.subnet),
            "workdir": str(self.workdir),
            "hosts": [asdict(h) for h in self.hosts],
        }
        self.state_file.write_text(json.dumps(state, indent=1))

    def cleanup(self) -> None:
        """Kill what runs in the hosts and remove everything made; safe to call again."""
        with self._lock:
            if not self._made:
                return
            _remove(self.prefix, self.bridge, [h.netns for h in self.hosts], self.workdir)
            self.state_file.unlink(missing_ok=True)
            self._made = False
            _unregister(self)

    def __enter__(self) -> NetnsHosts:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # -- using ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Ranks over all hosts."""
        return sum(self.slots)

    @property
    def hostnames(self) -> list[str]:
        return [h.hostname for h in self.hosts]

    @property
    def mpiexec_args(self) -> list[str]:
        """``mpiexec`` and the options that place ranks on the hosts (no ``-n``, no argv)."""
        if not self._made or self.launcher is None:
            raise HostsError("the hosts are not up (call up() or use 'with')")
        return [
            str(mpiexec_path()),
            "-iface",
            self.bridge,
            # MPICH's UCX netmod takes ranks on one machine for one node and would move
            # their data through shared memory or cross-memory attach: between hosts, only
            # TCP over the bridge (MPICH's own shared memory still serves a host's ranks).
            "-genv",
            "UCX_TLS",
            "self,tcp",
            "-genv",
            "UCX_NET_DEVICES",
            self.bridge,
            "-launcher",
            "ssh",
            "-launcher-exec",
            str(self.launcher),
            "-hosts",
            ",".join(f"{h.address}:{h.slots}" for h in self.hosts),
        ]

    def command(self, argv: Sequence[str], nprocs: int | None = None) -> list[str]:
        """The full ``mpiexec`` command; ranks fill the hosts in order (host 1 first)."""
        n = self.size if nprocs is None else nprocs
        args = [sys.executable if a == "python" else str(a) for a in argv]
        return [*self.mpiexec_args, "-n", str(n), *args]

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        nprocs: int | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` on every rank of the hosts (``python`` means this interpreter).

        Output is captured; at ``timeout`` the launcher and every process in the hosts are
        killed and :class:`subprocess.TimeoutExpired` carries what they printed.
        """
        return self._run(self.command(argv, nprocs), timeout, env, cwd, check)

    def exec_on(
        self,
        index: int,
        argv: Sequence[str],
        *,
        timeout: float | None = 60.0,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` once on host ``index`` (0-based) the way the launcher does, no MPI."""
        if self.launcher is None:
            raise HostsError("the hosts are not up (call up() or use 'with')")
        args = [sys.executable if a == "python" else str(a) for a in argv]
        cmd = [str(self.launcher), "-x", self.hosts[index].address, shlex.join(args)]
        return self._run(cmd, timeout, env, cwd, check)

    def _run(self, cmd, timeout, env, cwd, check) -> subprocess.CompletedProcess:
        return run_command(
            cmd, timeout=timeout, env=env, cwd=cwd, check=check, on_timeout=self.kill_all
        )

    def kill_all(self) -> None:
        """SIGKILL every process left in the hosts' namespaces."""
        for h in self.hosts:
            _kill_netns(self._ip, h.netns)


def _kill_netns(ip: str, netns: str) -> None:
    pids = subprocess.run([ip, "netns", "pids", netns], capture_output=True, text=True).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)


def _remove(prefix: str, bridge: str, namespaces: Sequence[str], workdir) -> None:
    ip = _which("ip") or "ip"
    listed = subprocess.run([ip, "netns", "list"], capture_output=True, text=True).stdout
    names = set(namespaces) | {
        line.split()[0] for line in listed.splitlines() if line.startswith(f"{prefix}-")
    }
    for ns in sorted(names):
        _kill_netns(ip, ns)
        # Deleting the namespace deletes its veth end, and with it the peer on the bridge.
        subprocess.run([ip, "netns", "del", ns], capture_output=True)
        shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
    with contextlib.suppress(OSError):
        if NETNS_ETC.is_dir() and not any(NETNS_ETC.iterdir()):
            NETNS_ETC.rmdir()
    links = subprocess.run([ip, "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(prefix) and (name == bridge or name[len(prefix) :][:1] in "vp"):
            subprocess.run([ip, "link", "del", name], capture_output=True)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


# -- every harness of this process is removed at exit and on SIGTERM/SIGINT ----------------
# SIGTERM gets a handler; SIGINT raises KeyboardInterrupt, whose exit runs the atexit hook.

_live: list[NetnsHosts] = []
_handlers_installed = False


def _cleanup_all() -> None:
    for h in list(_live):
        h.cleanup()


def _on_signal(signum, frame) -> None:
    _cleanup_all()
    previous = _previous_handlers.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    else:
        raise SystemExit(128 + signum)


_previous_handlers: dict[int, object] = {}


def _register(hosts: NetnsHosts) -> None:
    global _handlers_installed
    _live.append(hosts)
    if not _handlers_installed:
        atexit.register(_cleanup_all)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM,):
                _previous_handlers[sig] = signal.getsignal(sig)
                signal.signal(sig, _on_signal)
        _handlers_installed = True


def _unregister(hosts: NetnsHosts) -> None:
    with contextlib.suppress(ValueError):
        _live.remove(hosts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def down(state_files: Sequence[Path] = (), include_live: bool = False) -> list[Path]:
    """Remove the hosts recorded in ``state_files``.

    Default: those of every process that is gone without removing them, except hosts made
    to stay (``up`` on the command line); ``include_live`` takes every state file.
    """
    files = list(state_files) or sorted(STATE_DIR.glob(f"{PREFIX}*.json"))
    removed = []
    for path in files:
        state = json.loads(Path(path).read_text())
        if not state_files and not include_live and (state.get("keep") or _pid_alive(state["pid"])):
            continue
        _remove(
            state["prefix"],
            state["bridge"],
            [h["netns"] for h in state["hosts"]],
            state.get("workdir"),
        )
        Path(path).unlink(missing_ok=True)
        removed.append(Path(path))
    return removed


def _offsets(text: str | None) -> list[int] | None:
    return None if not text else [int(x) for x in text.split(",")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bls_dlrm.harness.hosts", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("up", "run"):
        p = sub.add_parser(name)
        p.add_argument("-n", "--hosts", type=int, default=2)
        p.add_argument("--ranks-per-host", type=int, default=1)
        p.add_argument("--monotonic-offsets", help="seconds per host, comma-separated")
        p.add_argument("--subnet")
        if name == "run":
            p.add_argument("--timeout", type=float)
            p.add_argument("argv", nargs=argparse.REMAINDER)
    d = sub.add_parser("down")
    d.add_argument("state_files", nargs="*", type=Path)
    d.add_argument("--all", action="store_true", help="also hosts of live processes")
    sub.add_parser("list")
    args = parser.parse_args(argv)

    if args.cmd == "down":
        for path in down(args.state_files, include_live=args.all):
            print(f"removed {path}")
        return 0
    if args.cmd == "list":
        for path in sorted(STATE_DIR.glob(f"{PREFIX}*.json")):
            state = json.loads(path.read_text())
            alive = "live" if _pid_alive(state["pid"]) else "kept" if state.get("keep") else "stale"
            print(f"{path} {alive} {state['subnet']} {len(state['hosts'])} hosts")
        return 0
    hosts = NetnsHosts(
        args.hosts, args.ranks_per_host, _offsets(args.monotonic_offsets), subnet=args.subnet
    )
    try:
        hosts.up()
    except HostsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "up":
        _unregister(hosts)  # stays up after this process exits
        hosts.keep = True
        hosts._write_state()
        print(f"state: {hosts.state_file}")
        print("mpiexec: " + shlex.join(hosts.mpiexec_args))
        return 0
    try:
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        result = hosts.run(argv, timeout=args.timeout)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        return result.returncode
    finally:
        hosts.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
