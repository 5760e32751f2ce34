"""Regenerate the stored run folders in ``tests/data/runs`` (the tables' test fixture).

    .venv/bin/python tests/data/make_fixture.py

The logs are written with :class:`bls_dlrm.logs.writer.RunLogWriter`, so they are exactly what
the inference loop produces. Their times come from a small event model of one rank's
pipeline (lookup -> post -> bottom MLP -> complete the oldest iteration the lag bound
allows -> top MLP), not from real runs, so they are deterministic and obey the same
ordering rules as real logs:

- ``mpi-2r-trace``: synchronous (mpi), 2 ranks, 2 warm-up + 4 measured iterations, round
  phase times (lookup 1 ms, bottom MLP 2 ms, top MLP 1 ms, transfer 0.5 ms) and two
  injected delays (rank 1 at iteration 3: 3 ms; rank 0 at iteration 5: 2 ms). Small
  enough that test_tables.py checks its statistics against values worked out by hand.
- ``bls-4r-rotating-L2``: BLS with lag bound 2, 4 ranks, 1 warm-up + 5 measured, jittered
  phase times and a rotating 10 ms straggler.
- ``gloo-2r-killed``: rank 1 was killed after iteration 2 (``.partial`` with no reason);
  rank 0 then timed out in the exchange (``.partial`` marked incomplete).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bls_dlrm.logs.records import Header, Iteration, partial_path
from bls_dlrm.logs.writer import RunLogWriter

ROOT = Path(__file__).resolve().parent / "runs"

VERSIONS = {
    "python": "3.12.3",
    "platform": "Linux-6.8.0-x86_64-with-glibc2.39",
    "torch": "2.13.0",
    "numpy": "2.4.6",
    "mpi4py": "4.1.0",
    "mpich": "4.3.0",
    "mpi_library": "MPICH Version: 4.3.0 MPICH Release date: Mon Feb 3 09:09:47 AM CST 2025",
}
GIT_REV = "2cee177e41d2b3a1c0f5e9d8a7b6c5d4e3f2a1b0"


@dataclass
class Phases:
    """Durations in seconds of one rank's work for one iteration."""

    delay: float
    lookup: float
    post: float
    bottom: float
    top: float


def checksum(workload: str, rank: int, iteration: int) -> str:
    """Stand-in for the digest of a rank's prediction bytes: fixed by workload, not mode."""
    return hashlib.blake2b(f"{workload}/{rank}/{iteration}".encode(), digest_size=16).hexdigest()


def simulate(phases: list[list[Phases]], lag_bound: int, transfer: float, t0: float):
    """Event model of the pipeline; returns per rank a list of iteration field dicts.

    Step k on a rank: start, delay, lookup(k), post(k), bottom MLP(k); then (k >= L)
    complete iteration k-L, which needs every rank's post of k-L plus ``transfer``, then
    its top MLP. After the last step the remaining iterations are drained in order.
    """
    ranks, iterations = len(phases), len(phases[0])
    posted = np.full((ranks, iterations), np.inf)
    fields: list[list[dict]] = [[{} for _ in range(iterations)] for _ in range(ranks)]
    clock = [t0] * ranks
    last_posted = [-1] * ranks

    def complete(r: int, j: int) -> None:
        now = clock[r]
        arrival = posted[:, j].max() + transfer
        done_at = max(arrival, now)
        peers = [p for p in range(ranks) if p != r]
        lag = 0
        if arrival > now and peers:
            slowest = min(int(np.sum(posted[p, : last_posted[r] + 1] <= now)) - 1 for p in peers)
            lag = max(0, last_posted[r] - slowest)
        ph = phases[r][j]
        f = fields[r][j]
        f["t_completed"] = done_at
        f["wait_s"] = max(0.0, arrival - now)
        f["lag"] = lag
        f["t_done"] = done_at + ph.top
        clock[r] = f["t_done"]

    for k in range(iterations):
        for r in range(ranks):
            ph = phases[r][k]
            f = fields[r][k]
            f["t_start"] = clock[r]
            f["t_lookup"] = clock[r] + ph.delay + ph.lookup
            f["t_posted"] = f["t_lookup"] + ph.post
            f["t_bottom"] = f["t_posted"] + ph.bottom
            f["delay_s"] = ph.delay
            f["compute_s"] = ph.lookup + ph.post + ph.bottom + ph.top
            posted[r, k] = f["t_posted"]
            last_posted[r] = k
            clock[r] = f["t_bottom"]
        if k >= lag_bound:
            for r in range(ranks):
                complete(r, k - lag_bound)
    for j in range(max(0, iterations - lag_bound), iterations):
        for r in range(ranks):
            complete(r, j)
    return fields


def header(run_id: str, rank: int, world: int, collective: str, lag, config, t0, utc) -> Header:
    return Header(
        run_id=run_id,
        rank=rank,
        world_size=world,
        collective=collective,
        lag_bound=lag,
        config=config,
        versions=VERSIONS,
        host="node01",
        git_rev=GIT_REV,
        clock="time.monotonic",
        t0=t0,
        started_utc=utc,
    )


def iteration(workload, rank, i, warmup, samples, f) -> Iteration:
    return Iteration(
        iteration=i,
        warmup=warmup,
        samples=samples,
        t_start=f["t_start"],
        t_lookup=f["t_lookup"],
        t_posted=f["t_posted"],
        t_bottom=f["t_bottom"],
        t_completed=f["t_completed"],
        t_done=f["t_done"],
        wait_s=f["wait_s"],
        delay_s=f["delay_s"],
        compute_s=f["compute_s"],
        lag=f["lag"],
        checksum=checksum(workload, rank, i),
    )


def config_for(run_id, *, ranks, batch, iterations, warmup, collective, lag, delay, skew, seed):
    return {
        "run_id": run_id,
        "dataset": "synthetic-kaggle",
        "model": {"arch": "kaggle", "max_rows": 100000, "interaction": "dot"},
        "ranks": ranks,
        "batch_size": batch,
        "iterations": iterations,
        "warmup": warmup,
        "collective": collective,
        "lag_bound": lag,
        "delay": delay,
        "skew": skew,
        "seed": seed,
        "repetition": 0,
    }


def write_run(name, cfg, fields, warmup, samples, collective, lag, t0, utc, workload) -> None:
    run_dir = ROOT / name
    world = len(fields)
    for r in range(world):
        head = header(cfg["run_id"], r, world, collective, lag, cfg, t0, utc)
        with RunLogWriter(run_dir, head) as log:
            for i, f in enumerate(fields[r]):
                log.write(iteration(workload, r, i, i < warmup, samples, f))
            log.close()


def mpi_2r_trace() -> None:
    ms = 1e-3
    delays = {(1, 3): 3 * ms, (0, 5): 2 * ms}
    phases = [
        [Phases(delays.get((r, i), 0.0), 1 * ms, 0.0, 2 * ms, 1 * ms) for i in range(6)]
        for r in range(2)
    ]
    base = 5123.25
    fields = simulate(phases, lag_bound=0, transfer=0.5 * ms, t0=base)
    cfg = config_for(
        "mpi-2r-trace-rep0",
        ranks=2,
        batch=1024,
        iterations=6,
        warmup=2,
        collective="mpi",
        lag=None,
        delay={"kind": "trace", "path": "traces/two-blips.csv", "seed": 0},
        skew={
            "index_distribution": "zipf",
            "zipf_alpha": 1.05,
            "pooling": "fixed",
            "pooling_k": 1,
            "placement": "contiguous",
        },
        seed=7,
    )
    write_run(
        "mpi-2r-trace", cfg, fields, 2, 512, "mpi", None, base - 0.8125,
        "2026-01-14T10:21:07.114512+00:00", "two-blips",
    )  # fmt: skip


def bls_4r_rotating() -> None:
    rng = np.random.default_rng(20260114)
    ms = 1e-3
    ranks, iterations = 4, 6
    straggler = rng.integers(0, ranks, size=iterations)

    def jitter(x: float) -> float:
        return float(x * rng.lognormal(0.0, 0.05))

    phases = [
        [
            Phases(
                delay=10 * ms if straggler[i] == r else 0.0,
                lookup=jitter(1.2 * ms),
                post=jitter(0.05 * ms),
                bottom=jitter(2.1 * ms),
                top=jitter(0.9 * ms),
            )
            for i in range(iterations)
        ]
        for r in range(ranks)
    ]
    base = 73514.482137
    fields = simulate(phases, lag_bound=2, transfer=0.6 * ms, t0=base)
    cfg = config_for(
        "bls-4r-rotating-L2-rep0",
        ranks=4,
        batch=1024,
        iterations=6,
        warmup=1,
        collective="bls",
        lag=2,
        delay={"kind": "rotating", "size_s": 0.01, "seed": 3},
        skew={
            "index_distribution": "uniform",
            "zipf_alpha": None,
            "pooling": "uniform",
            "pooling_k": 4,
            "placement": "cost_balanced",
        },
        seed=7,
    )
    write_run(
        "bls-4r-rotating-L2", cfg, fields, 1, 256, "bls", 2, base - 1.37,
        "2026-01-14T10:24:51.902233+00:00", "rotating",
    )  # fmt: skip


def gloo_2r_killed() -> None:
    ms = 1e-3
    phases = [[Phases(0.0, 1 * ms, 0.0, 2 * ms, 1 * ms) for _ in range(6)] for _ in range(2)]
    base = 8810.5
    fields = simulate(phases, lag_bound=0, transfer=0.5 * ms, t0=base)
    cfg = config_for(
        "gloo-2r-killed-rep0",
        ranks=2,
        batch=1024,
        iterations=6,
        warmup=1,
        collective="gloo",
        lag=None,
        delay={"kind": "none"},
        skew={"index_distribution": "uniform", "pooling": "fixed", "pooling_k": 1},
        seed=7,
    )
    run_dir = ROOT / "gloo-2r-killed"
    utc = "2026-01-14T10:30:00.250000+00:00"
    # Rank 1 died (kill -9) after logging iteration 2: a line-buffered writer leaves
    # exactly the lines it wrote, with no footer and no reason.
    head1 = header(cfg["run_id"], 1, 2, "gloo", None, cfg, base - 0.5, utc)
    lines = [head1.to_dict()] + [
        iteration("none", 1, i, i < 1, 512, fields[1][i]).to_dict() for i in range(3)
    ]
    partial_path(run_dir, 1).parent.mkdir(parents=True, exist_ok=True)
    partial_path(run_dir, 1).write_text(
        "".join(json.dumps(d, separators=(",", ":")) + "\n" for d in lines)
    )
    # Rank 0 got to iteration 3 and then timed out waiting for rank 1.
    head0 = header(cfg["run_id"], 0, 2, "gloo", None, cfg, base - 0.5, utc)
    try:
        with RunLogWriter(run_dir, head0) as log:
            for i in range(3):
                log.write(iteration("none", 0, i, i < 1, 512, fields[0][i]))
            raise TimeoutError("exchange of iteration 3 timed out after 60 s waiting for rank 1")
    except TimeoutError:
        pass


def main() -> None:
    if ROOT.exists():
        shutil.rmtree(ROOT)
    mpi_2r_trace()
    bls_4r_rotating()
    gloo_2r_killed()
    for path in sorted(ROOT.rglob("rank*")):
        print(path.relative_to(ROOT.parent))


if __name__ == "__main__":
    main()
