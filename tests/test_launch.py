"""The launcher inside a Slurm allocation: the node layout a job step removed, restored.

Snakemake's Slurm executor runs a launch in the job's batch step with every SLURM_*
variable but the job id removed; `bls-dlrm mpiexec` reads the layout back from `scontrol
show job` so MPICH spreads the ranks over the allocation's nodes. (On a real multi-node
cluster of namespace hosts: `make test-slurm`, tests/slurm_cluster.py multinode.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import BLS_DLRM

from bls_dlrm.launch import expand_hostlist, parse_scontrol_job, slurm_layout_env


def scontrol_record(nodelist: str, details: str, tasks: int, ntpn: str = "0", cpt: int = 1):
    """`scontrol show job -d -o` of a running job, as Slurm 22.05 prints it (shortened)."""
    return (
        f"JobId=7 JobName=launch UserId=me(1) JobState=RUNNING Partition=debug "
        f"ReqNodeList=(null) ExcNodeList=(null) NodeList={nodelist} BatchHost=n1 "
        f"NumNodes={len(expand_hostlist(nodelist))} NumCPUs=8 NumTasks={tasks} "
        f"CPUs/Task={cpt} ReqB:S:C:T=0:0:*:* TRES=cpu=8,node=2 Socks/Node=* "
        f"NtasksPerN:B:S:C={ntpn}:0:*:* CoreSpec=* JOB_GRES=(null)   {details} "
        "MinCPUsNode=1 Features=(null) Command=x WorkDir=/w Power= \n"
    )


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("n1", ["n1"]),
        ("node[1-3]", ["node1", "node2", "node3"]),
        ("c[01-02,10],gpu5", ["c01", "c02", "c10", "gpu5"]),
        ("blsh12-h[1-2]", ["blsh12-h1", "blsh12-h2"]),
        ("a[8-9]b", ["a8b", "a9b"]),
    ],
)
def test_expand_hostlist(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize(
    ("nodelist", "details", "tasks", "ntpn", "cpt", "per_node", "cpus"),
    [
        # two nodes of one task each (--ntasks-per-node=1)
        ("h[1-2]", "Nodes=h[1-2] CPU_IDs=0 Mem=0 GRES=", 2, "1", 1, "1(x2)", "1(x2)"),
        # 6 tasks on two 4-CPU nodes, no --ntasks-per-node: block, first node filled first
        ("n[1-2]", "Nodes=n[1-2] CPU_IDs=0-3 Mem=0 GRES=", 6, "0", 1, "4,2", "4(x2)"),
        # 6 tasks, at most 3 per node, on 4-CPU nodes
        ("n[1-2]", "Nodes=n[1-2] CPU_IDs=0-3 Mem=0 GRES=", 6, "3", 1, "3(x2)", "4(x2)"),
        # uneven allocations, 2 CPUs per task
        (
            "n[1-3]",
            "Nodes=n1 CPU_IDs=0-3 Mem=0 GRES= Nodes=n[2-3] CPU_IDs=0-1,4-5 Mem=0 GRES=",
            5,
            "0",
            2,
            "2(x2),1",
            "4(x3)",
        ),
        # fewer CPUs seen than tasks (oversubscription): the rest cycles over the nodes
        ("n[1-2]", "Nodes=n[1-2] CPU_IDs=0 Mem=0 GRES=", 4, "0", 1, "2(x2)", "1(x2)"),
    ],
)
def test_parse_scontrol_job_layout(nodelist, details, tasks, ntpn, cpt, per_node, cpus):
    env = parse_scontrol_job(scontrol_record(nodelist, details, tasks, ntpn, cpt))
    n = len(expand_hostlist(nodelist))
    assert env == {
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_NODELIST": nodelist,
        "SLURM_JOB_NUM_NODES": str(n),
        "SLURM_NNODES": str(n),
        "SLURM_TASKS_PER_NODE": per_node,
        "SLURM_JOB_CPUS_PER_NODE": cpus,
    }


def test_parse_scontrol_job_without_nodes_is_an_error():
    pending = "JobId=7 JobName=x JobState=PENDING NodeList=(null) NumNodes=1 NumTasks=2"
    with pytest.raises(ValueError, match="no node list"):
        parse_scontrol_job(pending)


@pytest.fixture
def fake_scontrol(tmp_path):
    """An `scontrol` that prints a 2-node record for job 7 (and records its arguments)."""
    script = tmp_path / "scontrol"
    record = scontrol_record("h[1-2]", "Nodes=h[1-2] CPU_IDs=0 Mem=0 GRES=", 2, "1")
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {tmp_path}/calls\n'
        'if [ "$5" = 7 ]; then cat <<"EOF"\n'
        f"{record}EOF\n"
        'else echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; fi\n'
    )
    script.chmod(0o755)
    return script


def test_layout_restored_only_when_a_job_step_removed_it(fake_scontrol):
    cmd = str(fake_scontrol)
    assert slurm_layout_env({}, scontrol=cmd) == {}  # not in a Slurm job
    whole = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "h[1-2]"}
    assert slurm_layout_env(whole, scontrol=cmd) == {}  # nothing removed: left as Slurm set it
    calls = fake_scontrol.parent / "calls"
    assert not calls.exists()
    restored = slurm_layout_env({"SLURM_JOB_ID": "7"}, scontrol=cmd)
    assert calls.read_text().split() == ["show", "job", "-d", "-o", "7"]
    assert restored["SLURM_JOB_NODELIST"] == "h[1-2]"
    assert restored["SLURM_TASKS_PER_NODE"] == "1(x2)"


def test_unreadable_job_record_is_an_error(fake_scontrol):
    with pytest.raises(RuntimeError, match="Invalid job id"):
        slurm_layout_env({"SLURM_JOB_ID": "8"}, scontrol=str(fake_scontrol))
    with pytest.raises(RuntimeError, match="cannot read its node list"):
        slurm_layout_env({"SLURM_JOB_ID": "7"}, scontrol="/nonexistent/scontrol")


def _without_slurm() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


def test_bls_dlrm_mpiexec_runs_ranks_outside_slurm(tmp_path):
    # one file per rank: two ranks printing to one pipe may interleave their lines
    code = (
        "from mpi4py import MPI; c = MPI.COMM_WORLD; "
        "open(f'rank{c.rank}', 'w').write(f'{c.rank} {c.size}')"
    )
    r = subprocess.run(
        [BLS_DLRM, "mpiexec", "-n", "2", sys.executable, "-c", code],
        env=_without_slurm() | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    got = sorted(p.read_text() for p in tmp_path.glob("rank*"))
    assert got == ["0 2", "1 2"], (got, r.stdout)


def test_bls_dlrm_mpiexec_refuses_a_job_it_cannot_read(fake_scontrol):
    """In a job whose record cannot be read, no rank starts (they would all land on one
    node), and the message says why."""
    env = _without_slurm() | {
        "SLURM_JOB_ID": "8",
        "PATH": f"{fake_scontrol.parent}:{os.environ['PATH']}",
    }
    r = subprocess.run(
        [BLS_DLRM, "mpiexec", "-n", "1", sys.executable, "-c", "print('started')"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "started" not in r.stdout
    assert "Slurm job 8" in r.stderr and "Invalid job id" in r.stderr
