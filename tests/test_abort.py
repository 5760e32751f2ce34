"""Every error on any rank ends the whole MPI job; binding of ranks to cores.

A stuck peer (alive, not posting) must not keep the others waiting in ``MPI_Finalize``:
the first rank that fails prints its error with its rank and calls ``MPI_Abort`` from the
CLI entry, so every rank exits non-zero within seconds. Errors before any MPI work (a bad
config) keep exit status 2.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import BLS_DLRM, infer_argv

from bls_dlrm.data import generate_synthetic
from bls_dlrm.launch import mpiexec_command, run_mpi, usable_cores


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "tiny"
    generate_synthetic(out, "tiny", num_batches=2, batch_size=24, seed=5)
    return out


def _run(nprocs: int, argv: list[str], cwd: Path, timeout: float = 60.0, **kw):
    t0 = time.monotonic()
    try:
        result = run_mpi(nprocs, argv, timeout=timeout, check=False, cwd=cwd, **kw)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"the job was still running after {timeout} s: an error did not end it\n"
            f"--- stdout ---\n{exc.output}\n--- stderr ---\n{exc.stderr}"
        )
    return result, time.monotonic() - t0


#: A 3-rank infer run where rank 1 sleeps 1000 s at iteration 5 (1 warm-up, 10 measured).
STUCK_TIMEOUT_S = 5.0


def stuck_rank_1_settings(tmp_path: Path) -> tuple[str, ...]:
    """`bls-dlrm infer` settings: bls L=2, exchanges time out after STUCK_TIMEOUT_S, and a
    delay trace that keeps rank 1 (of 3) asleep for 1000 s at iteration 5."""
    warmup, iterations = 1, 10
    trace = np.zeros((3, warmup + iterations))
    trace[1, 5] = 1000.0
    np.save(tmp_path / "trace.npy", trace)
    return (
        "collective=bls",
        "lag_bound=2",
        f"timeout_s={STUCK_TIMEOUT_S}",
        "delay.kind=trace",
        f"delay.path={tmp_path / 'trace.npy'}",
        f"warmup={warmup}",
        f"iterations={iterations}",
    )


@pytest.mark.mpi
def test_stuck_peer_ends_every_rank_of_infer(dataset, tmp_path):
    """Rank 1 sleeps 1000 s at iteration 5; the others time out after 5 s and abort the job."""
    timeout_s = STUCK_TIMEOUT_S
    run_dir = tmp_path / "run"
    argv = infer_argv(run_dir, f"dataset={dataset}", *stuck_rank_1_settings(tmp_path))
    result, elapsed = _run(3, argv, tmp_path)
    err = result.stderr
    assert result.returncode != 0, err
    # start-up (imports, model) + the timeout + 30 s for every rank to go
    assert elapsed < timeout_s + 30, (elapsed, err)
    assert re.search(r"rank [02] of 3", err), err
    assert re.search(r"exchange \d+", err), err
    assert re.search(r"peer\(s\) \[1\]|peer 1\b", err), err
    logs = sorted(p.name for p in run_dir.iterdir())
    assert logs, "no logs were written"
    assert all(name.endswith(".jsonl.partial") for name in logs), logs


# A subcommand that fails on rank 1 only while its peers wait for it in a barrier (stuck);
# the script hides the exception from Python's exit path, so only cli.main can end the job.
_ONE_RANK_FAILS = """\
import os
import sys

from bls_dlrm import cli

WHEN, ERROR = sys.argv[1], sys.argv[2]


def failing(args):
    if WHEN == "before-mpi" and os.environ["PMI_RANK"] == "1":
        raise RuntimeError("rank 1 broke before MPI")
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_rank() == 1:
        raise {"value": ValueError, "runtime": RuntimeError}[ERROR]("rank 1 broke")
    MPI.COMM_WORLD.Barrier()  # the peers wait forever for rank 1
    return 0


cli._ideal = failing
try:
    code = cli.main(["ideal"])
except BaseException:
    code = 7
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)  # no MPI_Finalize, no excepthook: a rank that does not abort just leaves
"""


@pytest.mark.mpi
@pytest.mark.parametrize(
    ("when", "error"), [("after-mpi", "runtime"), ("after-mpi", "value"), ("before-mpi", "x")]
)
def test_an_exception_on_one_rank_ends_the_job(when, error, tmp_path):
    script = tmp_path / "one_rank_fails.py"
    script.write_text(_ONE_RANK_FAILS)
    result, _ = _run(3, ["python", str(script), when, error], tmp_path, timeout=40)
    assert result.returncode != 0, result.stderr
    assert "rank 1 of 3 failed" in result.stderr, result.stderr
    assert "rank 1 broke" in result.stderr


@pytest.mark.mpi
def test_config_error_before_mpi_exits_2_on_every_rank(tmp_path):
    argv = [BLS_DLRM, "infer", "--set", "dataset=/x", "--set", "lag_bond=3", "--out", "o"]
    result, _ = _run(2, argv, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "lag_bond" in result.stderr
    assert "MPI_Abort" not in result.stderr


def test_mpiexec_command_binding():
    plain = mpiexec_command(2, ["python", "-c", "pass"])
    bound = mpiexec_command(2, ["python", "-c", "pass"], bind="core")
    assert "-bind-to" not in plain
    assert plain == mpiexec_command(2, ["python", "-c", "pass"], bind="none")
    i = bound.index("-bind-to")
    assert bound[i + 1] == "core" and i < bound.index("-n")
    with pytest.raises(ValueError, match="bind"):
        mpiexec_command(2, ["x"], bind="socket-ish")
    assert usable_cores() >= 1


@pytest.mark.mpi
@pytest.mark.skipif(usable_cores() < 2, reason="needs two usable cores")
def test_bound_ranks_each_see_one_distinct_core(tmp_path):
    # One file per rank: two ranks printing to one pipe may interleave their lines.
    code = textwrap.dedent(
        """\
        import json, os
        rank = os.environ["PMI_RANK"]
        with open(f"cores{rank}.json", "w") as f:
            json.dump(sorted(os.sched_getaffinity(0)), f)
        """
    )
    result, _ = _run(2, ["python", "-c", code], tmp_path, bind="core")
    assert result.returncode == 0, result.stderr
    cores = {
        int(path.stem.removeprefix("cores")): json.loads(path.read_text())
        for path in tmp_path.glob("cores*.json")
    }
    assert sorted(cores) == [0, 1], result.stdout
    assert all(len(c) == 1 for c in cores.values()), cores
    assert cores[0] != cores[1], cores
