"""``bls-dlrm bench-hosts``: the same DLRM launches on one host and on namespace hosts.

Each launch runs every series (gloo, mpi, bls at each lag bound, in the protocol's
shuffled order) of one workload and repetition, as the workflow's launches do, twice: once
with all ranks on this host (shared memory between them) and once spread over ``--hosts``
namespace hosts of :mod:`bls_dlrm.harness.hosts` (TCP over a private bridge between hosts). The
two placements alternate in an order shuffled per repetition, so drift of the machine hits
both alike. Each rank is pinned to core ``rank % cores`` in both placements (every
namespace host sees all of the machine's cores, and MPICH's ``-bind-to core`` would pin
the first rank of every host to core 0), so only the placement across hosts differs.

Delays are multiples of ``--work-s`` (the measured local work per iteration), as in the
workflow's config. After the launches the run logs become tables (one set per placement),
and the summary gives, per workload and series:

* the median throughput (samples/s) on one host and on the hosts, and their ratio;
* per BLS series, the median speedup over the best synchronous series and the speedup the
  simulation (:mod:`bls_dlrm.analysis.simulate`, exchange cost fitted on each placement's own
  synchronous runs, overheads calibrated on ``balanced``) predicts for it, and the error.

Needs root (network namespaces): ``bls-dlrm bench-hosts --out results/bench-hosts``.
Output: the tables under ``OUT/tables/<placement>/``, ``OUT/summary.csv`` and a printed
table. Throughput ratios are measurements of this machine, not a claim.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bls_dlrm.delays import resolve_factor

#: Delay schedules as in config/config.yaml (sizes are multiples of the work per iteration).
SCENARIOS: dict[str, dict] = {
    "balanced": {"kind": "none"},
    "rotating-2.5x": {"kind": "rotating", "factor": 2.5},
    "rotating-8x": {"kind": "rotating", "factor": 8.0},
    "random": {"kind": "random", "p": 0.25, "distribution": "exponential", "factor": 1.0},
    "straggler": {"kind": "straggler", "factor": 1.0},
}


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--out", type=Path, required=True, help="folder for data, logs and tables")
    p.add_argument("--hosts", type=int, default=2, help="namespace hosts (default 2)")
    p.add_argument("--ranks-per-host", type=int, default=1, help="ranks on each host")
    p.add_argument(
        "--scenarios",
        default="balanced,rotating-2.5x",
        help=f"comma-separated, from {', '.join(SCENARIOS)}; balanced calibrates the "
        "simulation and is always run",
    )
    p.add_argument("--series", default="gloo,mpi,bls:0,bls:4,bls:8", help="series of a launch")
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--model", default="kaggle", help="model shape (bls-dlrm make-data)")
    p.add_argument("--max-rows", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--batches", type=int, default=16, help="batches in the dataset")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--work-s", type=float, default=0.004, help="delay unit, seconds")
    p.add_argument("--seed", type=int, default=0, help="seeds data, delays and orders")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per launch")
    return p


def _scenarios(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    return ["balanced", *[s for s in names if s != "balanced"]]


def run_config(args, dataset: Path, scenario: str, rep: int) -> dict:
    """The ``bls-dlrm infer`` config of one launch (every series)."""
    return {
        "dataset": str(dataset),
        "model": {"name": args.model, "max_rows": args.max_rows, "seed": args.seed},
        "plan": "contiguous",
        "series": [s.strip() for s in args.series.split(",")],
        "shuffle_seed": args.seed,
        "delay": resolve_factor(SCENARIOS[scenario], args.work_s, args.seed),
        "warmup": args.warmup,
        "iterations": args.iterations,
        "threads": 1,
        "binding": "core",
        "repetition": rep,
        "run_id": f"scenario~{scenario}/rep~{rep}",
        "tags": {"scenario": scenario, "rep": rep},
    }


def _dataset(args) -> Path:
    from bls_dlrm.data import generate_synthetic
    from bls_dlrm.model import get_config

    config = get_config(args.model, seed=args.seed, max_rows=args.max_rows)
    out = args.out / "data" / f"{args.model}-{args.max_rows}_b{args.batch_size}_seed{args.seed}"
    if not (out / "manifest.json").exists():
        generate_synthetic(out, config, args.batches, args.batch_size, args.seed, progress=False)
    return out


def run(args: argparse.Namespace) -> int:
    from bls_dlrm.harness.hosts import NetnsHosts
    from bls_dlrm.launch import run_mpi

    scenarios = _scenarios(args.scenarios)
    if args.hosts < 2:
        raise ValueError(f"--hosts: at least 2, got {args.hosts}")
    dataset = _dataset(args)
    size = args.hosts * args.ranks_per_host
    cores = len(os.sched_getaffinity(0))
    bls = str(Path(sys.executable).parent / "bls-dlrm")
    where = {"1host": None, f"{args.hosts}hosts": None}
    env = {"OMP_NUM_THREADS": "1"}
    launches = args.repetitions * len(scenarios) * len(where)
    done = 0
    with NetnsHosts(args.hosts, ranks_per_host=args.ranks_per_host) as hosts:
        where[f"{args.hosts}hosts"] = hosts
        for rep in range(args.repetitions):
            order = [(s, w) for s in scenarios for w in where]
            rng = np.random.default_rng(args.seed + rep)
            for i in rng.permutation(len(order)):
                scenario, placement = order[i]
                folder = args.out / "runs" / placement / f"scenario~{scenario}" / f"rep~{rep}"
                folder.mkdir(parents=True, exist_ok=True)
                config = folder / "run.yaml"
                config.write_text(yaml.safe_dump(run_config(args, dataset, scenario, rep)))
                pinned = (
                    f"exec taskset -c $((PMI_RANK % {cores})) {bls} infer "
                    f"--config {config} --out {folder} --no-progress"
                )
                argv = ["sh", "-c", pinned]
                start = time.monotonic()
                on = where[placement]
                if on is None:
                    result = run_mpi(size, argv, timeout=args.timeout, env=env, check=False)
                else:
                    result = on.run(argv, timeout=args.timeout, env=env)
                done += 1
                print(
                    f"[{done}/{launches}] {placement} {scenario} rep {rep}: "
                    f"{time.monotonic() - start:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
                if result.returncode != 0:
                    sys.stderr.write(result.stdout[-2000:] + result.stderr[-4000:])
                    raise RuntimeError(f"{placement} {scenario} rep {rep} failed")
    summary = summarize(args.out, list(where))
    summary.to_csv(args.out / "summary.csv", index=False)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(summary.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


def summarize(out: Path, placements: list[str]) -> pd.DataFrame:
    """One row per workload and series: throughput per placement, their ratio, and per BLS
    series the measured and simulated speedups over the best synchronous series."""
    from bls_dlrm.analysis import simulate
    from bls_dlrm.analysis.collect import collect
    from bls_dlrm.analysis.workloads import annotate_runs

    rows = []
    for placement in placements:
        tables = collect(out / "runs" / placement, out / "tables" / placement, progress=False)
        runs = annotate_runs(tables.runs)
        its = tables.iterations
        cost = simulate.exchange_cost_from_sweep(runs, its)
        check = simulate.validation_table(runs, its, cost)
        for (scenario, series), df in runs.groupby(["scenario", "series"]):
            row = {
                "placement": placement,
                "scenario": scenario,
                "series": series,
                "repetitions": len(df),
                "throughput_sps": float(df["throughput_sps"].median()),
                "hosts_per_run": int(df["hosts"].max()) if "hosts" in df else None,
                "clock_error_max_s": float(df["clock_error_s"].max())
                if "clock_error_s" in df
                else np.nan,
            }
            mine = check[(check["scenario"] == scenario) & (check["series"] == series)]
            if len(mine):
                row |= {
                    "measured_speedup": float(mine["measured_speedup"].median()),
                    "predicted_speedup": float(mine["predicted_speedup"].median()),
                    "error": float(mine["error"].median()),
                }
            rows.append(row)
    long = pd.DataFrame(rows)
    base, other = placements
    wide = long.pivot_table(
        index=["scenario", "series"], columns="placement", values="throughput_sps"
    )
    wide["ratio"] = wide[other] / wide[base]
    extra = long.set_index(["scenario", "series", "placement"])[
        [c for c in ("measured_speedup", "predicted_speedup", "error") if c in long]
    ].unstack("placement")
    extra.columns = [f"{what} {placement}" for what, placement in extra.columns]
    return wide.join(extra).reset_index()


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argparse.ArgumentParser(description=__doc__.split("\n")[0])).parse_args(
        argv
    )
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
