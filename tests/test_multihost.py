"""Ranks on several hosts: network namespaces on this machine, TCP between them.

The ``netns_hosts`` fixture (tests/multihost.py) makes each host a network namespace on a
private bridge with its own hostname and, on request, its own monotonic clock. The cases
here rerun the one-host tests' rank scripts across two hosts: the engine and the torch
backend on 2 hosts x 1 rank and 2 hosts x 2 ranks, a DLRM run whose predictions match the
one-host run bit for bit, and a dead or stuck rank on the other host ending the job.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from comm_ranks import program_script, read_reports
from conftest import BLS_DLRM, infer_argv
from test_abort import STUCK_TIMEOUT_S, stuck_rank_1_settings
from test_engine import API, KILLED, TIMEOUT

from bls_dlrm.harness import hosts as hosts_mod
from bls_dlrm.harness.hosts import HostsError, NetnsHosts, choose_subnet, unavailable_reason
from bls_dlrm.launch import run_mpi
from bls_dlrm.logs.reading import read_run

pytestmark = pytest.mark.mpi

# Appended to a rank script: every rank says where it ran.
WHERE = """
import socket as _socket
from mpi4py import MPI as _MPI

print(f"HOST {_MPI.COMM_WORLD.Get_rank()} {_socket.gethostname()}", flush=True)
"""


def _hosts_of(stdout: str, names) -> dict[int, str]:
    # The launcher forwards each rank's output as it comes: a record of one rank may run
    # into another's before its newline, so a record's host is matched among the known
    # names, not read up to the next whitespace.
    known = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return {int(r): h for r, h in re.findall(rf"HOST (\d+) ({known})", stdout)}


def _assert_placed(stdout: str, hosts, per_host: list[int]) -> None:
    """Ranks fill the hosts in order: ranks 0..k-1 on host 1, and so on."""
    want = [h for h, k in zip(hosts.hostnames, per_host, strict=True) for _ in range(k)]
    got = _hosts_of(stdout, hosts.hostnames)
    assert [got.get(r) for r in range(len(want))] == want, stdout
    assert len(set(want)) == len(per_host)


# -- the harness itself -----------------------------------------------------------------------

CLOCKS = """
import json
import socket
import sys
import time

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
iface = sys.argv[1]


def sent():
    with open(f"/sys/class/net/{iface}/statistics/tx_bytes") as f:
        return int(f.read())


N = 4 << 20
buf, out = np.ones(N, np.uint8), np.empty(N, np.uint8)
comm.Barrier()
t0 = sent()
if rank in (0, 1):  # the same host: shared memory, nothing on the wire
    comm.Sendrecv(buf, 1 - rank, recvbuf=out, source=1 - rank)
comm.Barrier()
t1 = sent()
if rank in (0, 2):  # host 1 and host 2: TCP over the veth
    comm.Sendrecv(buf, 2 - rank, recvbuf=out, source=2 - rank)
comm.Barrier()
t2 = sent()
comm.Barrier()
mono = time.monotonic()
row = dict(rank=rank, host=socket.gethostname(), mono=mono, intra=t1 - t0, inter=t2 - t1)
rows = comm.gather(row)
if rank == 0:
    print("CLOCKS " + json.dumps(rows), flush=True)
"""


def test_hosts_have_their_own_names_clocks_and_wire(netns_hosts):
    hosts = netns_hosts(2, ranks_per_host=2, monotonic_offsets=[0, 1000])
    result = hosts.script(CLOCKS, hosts.bridge, timeout=60)
    rows = json.loads(result.stdout.split("CLOCKS ", 1)[1])
    assert [r["host"] for r in rows] == [hosts.hostnames[0]] * 2 + [hosts.hostnames[1]] * 2
    assert len(set(hosts.hostnames)) == 2
    # The second host's monotonic clock is 1000 s ahead (read right after a barrier).
    skew = np.mean([r["mono"] for r in rows[2:]]) - np.mean([r["mono"] for r in rows[:2]])
    assert abs(skew - 1000) < 5, skew
    assert abs(rows[1]["mono"] - rows[0]["mono"]) < 5 and abs(rows[3]["mono"] - rows[2]["mono"]) < 5
    # 4 MiB inside host 1 stays off its wire; 4 MiB to host 2 goes over it.
    assert rows[0]["intra"] < 1 << 20, rows[0]
    assert rows[0]["inter"] >= 4 << 20, rows[0]
    # one command on one host, no MPI; nothing outside the bridge is reachable
    assert hosts.exec_on(1, ["hostname"], check=True).stdout.strip() == hosts.hostnames[1]
    there = hosts.exec_on(1, ["python", "-c", "import time; print(time.monotonic())"], check=True)
    assert abs(float(there.stdout) - time.monotonic() - 1000) < 5, there.stdout
    routes = hosts.exec_on(0, ["ip", "-4", "route"], check=True).stdout
    assert "default" not in routes and str(hosts.subnet) in routes, routes
    far = hosts.exec_on(0, ["ip", "route", "get", "8.8.8.8"])
    assert far.returncode != 0 and "unreachable" in far.stderr, far


def _leftovers(prefix: str) -> list[str]:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    etc = [p.name for p in hosts_mod.NETNS_ETC.glob(f"{prefix}*")]
    return [x for x in ns.split() + links.split() + etc if prefix in x]


def test_cleanup_removes_everything_also_on_failure(tmp_path):
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no namespace hosts here: {reason}")
    hosts = NetnsHosts(2, prefix="blshtest1")
    with pytest.raises(RuntimeError, match="boom"), hosts:
        assert _leftovers("blshtest1")  # made: namespaces, bridge, veths, hosts files
        workdir, state = hosts.workdir, hosts.state_file
        assert state.exists() and workdir.exists()
        raise RuntimeError("boom")
    assert _leftovers("blshtest1") == []
    assert not workdir.exists() and not state.exists()
    hosts.cleanup()  # idempotent
    with pytest.raises(HostsError, match="not up"):
        hosts.command(["true"])

    # a process killed before its own cleanup: `down` finds its state and removes the rest
    up = subprocess.run(
        [sys.executable, "-m", "bls_dlrm.harness.hosts", "up", "-n", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert up.returncode == 0, up.stderr
    state = Path(re.search(r"^state: (\S+)$", up.stdout, re.M).group(1))
    prefix = json.loads(state.read_text())["prefix"]
    assert len([x for x in _leftovers(prefix) if x.endswith(("-h1", "-h2"))]) >= 2
    down = subprocess.run(
        [sys.executable, "-m", "bls_dlrm.harness.hosts", "down", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 0, down.stderr
    assert _leftovers(prefix) == [] and not state.exists()


def _process_holding_hosts() -> tuple[subprocess.Popen, str]:
    """Another Python process that made 2 namespace hosts and sleeps; and their prefix."""
    code = (
        "import time\n"
        "from bls_dlrm.harness.hosts import NetnsHosts\n"
        "h = NetnsHosts(2).up()\n"
        "print(h.prefix, flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    prefix = proc.stdout.readline().strip()
    if not (prefix.startswith(hosts_mod.PREFIX) and _leftovers(prefix)):
        proc.kill()
        proc.wait()
        pytest.fail(f"the process made no hosts (it printed {prefix!r})")
    return proc, prefix


def test_hosts_left_by_a_killed_process_are_removed_by_the_next(tmp_path):
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no namespace hosts here: {reason}")
    proc, prefix = _process_holding_hosts()
    proc.kill()  # SIGKILL: no cleanup of its own
    proc.wait()
    assert _leftovers(prefix)
    with NetnsHosts(1):
        assert _leftovers(prefix) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signalled_process_removes_its_hosts(signum):
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM: the harness removes its hosts at once."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no namespace hosts here: {reason}")
    proc, prefix = _process_holding_hosts()
    proc.send_signal(signum)
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _leftovers(prefix) == []


def test_no_namespaces_is_a_skip_with_the_reason(netns_hosts, monkeypatch):
    nobody = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            "from bls_dlrm.harness.hosts import unavailable_reason; print(unavailable_reason())",
        ],
        capture_output=True,
        text=True,
    )
    if nobody.returncode == 0:  # setpriv may itself be missing or not permitted
        assert "need root" in nobody.stdout, nobody.stdout
    monkeypatch.setattr(hosts_mod, "_which", lambda name: None if name == "ip" else "/x")
    assert "no 'ip' command" in unavailable_reason()
    monkeypatch.setattr(hosts_mod, "_which", lambda name: None if name == "unshare" else "/x")
    assert "no 'unshare' command" in unavailable_reason()
    import multihost

    monkeypatch.setattr(multihost, "_reason", lambda time_namespace: "no 'ip' command")
    with pytest.raises(pytest.skip.Exception, match="no namespace hosts here: no 'ip' command"):
        netns_hosts(2)


def test_a_subnet_in_use_is_refused():
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("reads the routing table with 'ip'")
    used = [net for net, _ in hosts_mod._routed_networks() if not net.is_loopback]
    if not used:
        pytest.skip("no routed network here to collide with")
    with pytest.raises(HostsError, match="already in use"):
        choose_subnet(str(used[0]))
    assert not any(choose_subnet().overlaps(net) for net in used)


def test_the_default_subnet_skips_other_harnesses_and_refuses_the_rest(monkeypatch):
    def routed(*nets):
        monkeypatch.setattr(
            hosts_mod, "_routed_networks", lambda: [(ipaddress.ip_network(n), d) for n, d in nets]
        )

    routed(("192.0.2.0/24", "eth0"))
    assert str(choose_subnet()) == "10.213.0.0/24"
    routed(("10.213.0.0/24", "blsh123br"), ("10.213.1.0/24", "blsh456br"))
    assert str(choose_subnet()) == "10.213.2.0/24"
    routed(("10.213.0.0/24", "blsh123br"), ("10.213.1.0/24", "wg0"))
    with pytest.raises(HostsError, match=r"10\.213\.1\.0/24 is already in use here: .* on wg0"):
        choose_subnet()
    routed(("10.0.0.0/8", "tun0"))
    with pytest.raises(HostsError, match="tun0"):
        choose_subnet()


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="whole seconds"):
        NetnsHosts(2, monotonic_offsets=[0, 0.5])
    with pytest.raises(ValueError, match="one count"):
        NetnsHosts(2, ranks_per_host=[1])
    with pytest.raises(ValueError, match="at least one host"):
        NetnsHosts(0)
    with pytest.raises(ValueError, match="prefix"):
        NetnsHosts(2, prefix="far-too-long-a-prefix")


# -- the one-host cases, across two hosts ----------------------------------------------------


def test_engine_on_two_hosts_one_rank_each(netns_hosts):
    hosts = netns_hosts(2, ranks_per_host=1)
    result = hosts.script(API + WHERE, timeout=120)
    assert result.stdout.count("ENGINE-API-OK") == 2
    _assert_placed(result.stdout, hosts, [1, 1])


def test_engine_on_two_hosts_two_ranks_each(netns_hosts):
    hosts = netns_hosts(2, ranks_per_host=2)
    result = hosts.script(API + TIMEOUT + WHERE, timeout=120)
    assert result.stdout.count("ENGINE-API-OK") == 4
    assert result.stdout.count("ENGINE-TIMEOUT-OK") == 4
    _assert_placed(result.stdout, hosts, [2, 2])


def test_torch_backend_on_two_hosts_one_rank_each(netns_hosts):
    hosts = netns_hosts(2, ranks_per_host=1)
    result = hosts.script(program_script("progress") + WHERE, timeout=120)
    read_reports(hosts.tmp_path, "progress", 2, result)
    _assert_placed(result.stdout, hosts, [1, 1])


def test_torch_backend_on_two_hosts_two_ranks_each(netns_hosts):
    # gloo groups in the same launch: their rendezvous resolves rank 0's hostname
    hosts = netns_hosts(2, ranks_per_host=2)
    result = hosts.script(
        program_script("all_to_all") + WHERE, "bls", env={"BLS_LAG_BOUND": "3"}, timeout=180
    )
    read_reports(hosts.tmp_path, "all_to_all", 4, result)
    _assert_placed(result.stdout, hosts, [2, 2])


# -- DLRM inference ----------------------------------------------------------------------------


def _assert_no_process_left(hosts) -> None:
    """No rank (or anything else) is left behind on any host, shortly after the run."""
    time.sleep(0.5)
    for h in hosts.hosts:
        pids = subprocess.run(["ip", "netns", "pids", h.netns], capture_output=True, text=True)
        assert pids.stdout.split() == [], (h.netns, pids.stdout)


def _checksums(run_dir: Path) -> dict[str, list[list[str]]]:
    """Per series: every rank's per-iteration prediction checksums (blake2b of the bytes)."""
    dirs = sorted(p for p in run_dir.iterdir() if p.is_dir()) or [run_dir]
    return {
        d.name: [[it.checksum for it in rank.iterations] for rank in read_run(d).ranks]
        for d in dirs
    }


def _run_hosts(run_dir: Path) -> set[str]:
    dirs = sorted(p for p in run_dir.iterdir() if p.is_dir()) or [run_dir]
    return {rank.header.host for d in dirs for rank in read_run(d).ranks}


def test_infer_on_two_hosts_is_bit_identical_to_one_host(netns_hosts, tiny_zipf_dataset, tmp_path):
    settings = (
        f"dataset={tiny_zipf_dataset}",
        "series=[gloo, 'bls:0', 'bls:2']",
        "plan=unbalanced",
        "delay.kind=rotating",
        "delay.size_s=0.002",
        "warmup=1",
        "iterations=6",
        "timeout_s=60",
    )
    one, two = tmp_path / "one", tmp_path / "two"
    local = run_mpi(4, infer_argv(one, *settings), timeout=180, check=False)
    assert local.returncode == 0, local.stderr
    hosts = netns_hosts(2, ranks_per_host=2)
    hosts.argv(infer_argv(two, *settings), timeout=180)
    sums_one, sums_two = _checksums(one), _checksums(two)
    assert len(sums_one) == 3 and all(len(ranks) == 4 for ranks in sums_one.values())
    assert sums_two == sums_one  # every rank, every iteration, every series: bit for bit
    assert len({c for ranks in sums_one.values() for r in ranks for c in r}) > 1
    assert _run_hosts(two) == set(hosts.hostnames) and len(hosts.hostnames) == 2
    assert len(_run_hosts(one)) == 1


# -- a dead or a stuck rank on the other host ends the job -------------------------------------


def test_a_killed_rank_on_the_other_host_ends_the_run(netns_hosts, tmp_path):
    hosts = netns_hosts(2, ranks_per_host=[1, 2])  # rank 0 on host 1; ranks 1, 2 on host 2
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    t0 = time.monotonic()
    result = hosts.argv(["python", str(script)], timeout=60, expect_ok=False)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "rank 1 kills itself" in result.stdout
    assert "SURVIVED" not in result.stdout
    print(f"killed run ended after {time.monotonic() - t0:.1f} s", file=sys.stderr)
    _assert_no_process_left(hosts)


def test_a_stuck_rank_on_the_other_host_ends_every_rank_of_infer(
    netns_hosts, tiny_zipf_dataset, tmp_path
):
    """Rank 1 (host 2) sleeps 1000 s at iteration 5; the others time out after 5 s and abort."""
    timeout_s = STUCK_TIMEOUT_S
    run_dir = tmp_path / "run"
    settings = stuck_rank_1_settings(tmp_path)
    argv = infer_argv(run_dir, f"dataset={tiny_zipf_dataset}", *settings)
    hosts = netns_hosts(2, ranks_per_host=[1, 2])
    t0 = time.monotonic()
    result = hosts.argv(argv, timeout=60, expect_ok=False)
    elapsed = time.monotonic() - t0
    err = result.stderr
    assert result.returncode != 0, err
    assert elapsed < timeout_s + 30, (elapsed, err)
    assert re.search(r"rank [02] of 3", err), err
    assert re.search(r"peer\(s\) \[1\]|peer 1\b", err), err
    logs = sorted(p.name for p in run_dir.iterdir())
    assert logs and all(name.endswith(".jsonl.partial") for name in logs), logs
    _assert_no_process_left(hosts)


def test_bench_hosts_runs_each_launch_on_one_host_and_on_two(netns_hosts, tmp_path):
    """`bls-dlrm bench-hosts`: every launch on both placements, the ranks where they should
    be, the same predictions on both, and a summary row per workload and series."""
    import pandas as pd

    netns_hosts(1)  # skips with the reason where namespaces cannot be made
    out = tmp_path / "bench"
    cmd = [
        BLS_DLRM, "bench-hosts", "--out", str(out), "--model", "tiny", "--max-rows", "2000",
        "--batch-size", "64", "--batches", "2", "--warmup", "1", "--iterations", "12",
        "--repetitions", "1", "--scenarios", "rotating-2.5x", "--series", "gloo,bls:0,bls:4",
        "--work-s", "0.002",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(zip(summary["scenario"], summary["series"], strict=True)) == [
        (s, series)
        for s in ("balanced", "rotating-2.5x")
        for series in ("bls L=0", "bls L=4", "gloo")
    ]
    assert (summary[["1host", "2hosts"]] > 0).all().all()
    assert np.allclose(summary["ratio"], summary["2hosts"] / summary["1host"])
    bls4 = summary[summary["series"] == "bls L=4"]
    assert bls4[["predicted_speedup 1host", "predicted_speedup 2hosts"]].notna().all().all()

    checks = {}
    for placement, hosts_per_run in (("1host", 1), ("2hosts", 2)):
        runs = pd.read_parquet(out / "tables" / placement / "runs.parquet")
        assert (runs["hosts"] == hosts_per_run).all(), runs["hosts"]
        its = pd.read_parquet(out / "tables" / placement / "iterations.parquet")
        its = its.assign(run=its["run_id"])
        checks[placement] = its.set_index(["run", "rank", "iteration"])["checksum"].sort_index()
    assert checks["1host"].equals(checks["2hosts"])
