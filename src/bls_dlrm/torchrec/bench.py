"""``bls-dlrm bench-torchrec``: TorchRec as it is against the pipelined loop over bls.

Notation: W ranks, N measured iterations (batches), L lag bound, R repetitions.

Series (one text form each, as elsewhere in the artifact):

- ``gloo``, ``mpisync``, ``bls``: TorchRec's own ``DistributedModelParallel`` forward on a
  group of that backend, every exchange waited inside the forward (what a TorchRec user
  runs on CPU today);
- ``bls:L`` (also ``gloo:L``, ``mpisync:L``): :class:`~.pipeline.PipelinedInference` with lag
  bound L on a group of that backend ("bls" groups get :func:`~.pipeline.group_lag_bound`).

One launch per workload (W ranks, ``mpiexec -bind-to core``) builds the model, data and
every series' sharded model once and runs R repetitions of every series, the order
rotated each repetition (after one seeded shuffle) so each series takes each position
equally often when R is a multiple of the series count; each run is preceded by a few
unmeasured warm-up batches and timed between two barriers with Python's collector paused.
Delays come from the workload's schedule (``bls_dlrm.delays``), the same seconds for every
series, injected after each step's work. Every run's predictions are checksummed per rank
and must agree across series.

Per run the report keeps every rank's step times, the waits of the pipelined loop on each
exchange (KJT splits, KJT tensors, pooled embeddings), its pipeline depth and how many
steps each rank got ahead of the other (the lag, :func:`~.pipeline.steps_ahead`). The
ideal of a pipelined run comes from its own measured work (step time minus waits, delays
included) through ``bls_dlrm.theory``: ``ideal_makespan(work, L)``, and the synchronous
makespan of the same work for the ideal speedup.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import random
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_SERIES",
    "Series",
    "add_arguments",
    "main",
    "parse_series",
    "rank_main",
    "summarize",
]

DEFAULT_SERIES = ("gloo", "mpisync", "bls:0", "bls:4", "bls:8")
BACKENDS = ("gloo", "mpisync", "bls")
SUMMARY_CSV = "torchrec.csv"
RUNS_CSV = "torchrec_runs.csv"
SUMMARY_MD = "torchrec.md"
#: The judged check: bls L=8 reaches this fraction of its ideal against each synchronous one.
IDEAL_THRESHOLD = {"op": ">=", "value": 0.9}


@dataclass(frozen=True)
class Series:
    """A backend and, for the pipelined loop, its lag bound (None: TorchRec's forward)."""

    backend: str
    lag_bound: int | None = None

    @property
    def text(self) -> str:
        return self.backend if self.lag_bound is None else f"{self.backend}:{self.lag_bound}"

    @property
    def label(self) -> str:
        if self.lag_bound is None:
            return f"TorchRec over {self.backend}"
        return f"{self.backend} L={self.lag_bound}, pipelined"


def parse_series(text: str) -> Series:
    """``gloo`` / ``mpisync`` / ``bls`` or ``backend:L``."""
    backend, sep, lag = text.strip().partition(":")
    if backend not in BACKENDS:
        raise ValueError(f"series {text!r}: backend must be one of {BACKENDS}")
    if not sep:
        return Series(backend)
    if not lag.isdigit():
        raise ValueError(f"series {text!r}: the lag bound after ':' must be an integer >= 0")
    return Series(backend, int(lag))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workload",
        nargs=4,
        action="append",
        metavar=("NAME", "DATASET", "PLAN", "DELAY"),
        required=True,
        help="a workload: name, dataset folder (bls-dlrm make-data), placement plan "
        "(contiguous, balanced, unbalanced, hot), delay schedule as JSON "
        '(bls_dlrm.delays.DelaySpec, e.g. \'{"kind": "none"}\'); repeat for several',
    )
    p.add_argument("--out", required=True, help="folder for the per-workload reports")
    p.add_argument("--series", default=",".join(DEFAULT_SERIES), help="comma-separated")
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--iterations", type=int, default=300, help="measured batches per run")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--bind", choices=("core", "none"), default="core")
    p.add_argument("--model-seed", type=int, default=0)
    p.add_argument("--shuffle-seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per launch")


# -- driver (the CLI process) ---------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"bls-dlrm bench-torchrec: {message}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    """Launch one rank program per workload, then write and print the summary."""
    from . import TorchRecMissingError, require

    try:
        require()
    except TorchRecMissingError as exc:
        return _fail(str(exc))
    from ..data import BatchStore, DatasetError
    from ..delays import DelaySpec
    from ..launch import run_mpi

    try:
        series = [parse_series(s) for s in args.series.split(",") if s.strip()]
        if not series:
            raise ValueError("--series names no series")
        for count, name in ((args.repetitions, "--repetitions"), (args.iterations, "--iterations")):
            if count < 1:
                raise ValueError(f"{name} must be >= 1")
        workloads = []
        for name, dataset, plan, delay in args.workload:
            store = BatchStore(dataset, verify=False)
            if store.batch_size % args.ranks:
                raise ValueError(
                    f"workload {name}: the dataset's batch size {store.batch_size} is not "
                    f"divisible by {args.ranks} ranks (TorchRec gives every rank B / W samples)"
                )
            spec = json.loads(delay)
            DelaySpec.from_dict(spec)  # a bad schedule stops here, not on the ranks
            workloads.append({"name": name, "dataset": dataset, "plan": plan, "delay": spec})
    except (ValueError, DatasetError, json.JSONDecodeError) as exc:
        return _fail(str(exc))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for w in workloads:
        spec = {
            **w,
            "series": [s.text for s in series],
            "repetitions": args.repetitions,
            "iterations": args.iterations,
            "warmup": args.warmup,
            "model_seed": args.model_seed,
            "shuffle_seed": args.shuffle_seed,
            "report": str(out / f"{w['name']}.json"),
        }
        spec_path = out / f"{w['name']}.spec.json"
        spec_path.write_text(json.dumps(spec, indent=1) + "\n")
        print(f"[bench-torchrec] {w['name']}: {args.ranks} ranks, bind {args.bind}", flush=True)
        begin = time.monotonic()
        result = run_mpi(
            args.ranks,
            ["python", "-m", "bls_dlrm.torchrec.bench", str(spec_path)],
            timeout=args.timeout,
            bind=args.bind,
            check=False,
        )
        if result.returncode != 0:
            sys.stderr.write(result.stdout + result.stderr)
            return _fail(f"workload {w['name']}: the ranks exited with {result.returncode}")
        print(f"[bench-torchrec] {w['name']}: {time.monotonic() - begin:.0f} s", flush=True)
        reports.append(json.loads(Path(spec["report"]).read_text()))
    runs, rows = summarize(reports)
    runs.to_csv(out / RUNS_CSV, index=False)
    rows.to_csv(out / SUMMARY_CSV, index=False)
    text = format_table(rows)
    (out / SUMMARY_MD).write_text(text + "\n")
    print(text)
    return 0


# -- rank program ---------------------------------------------------------------------------


def _order(series: list[str], repetition: int, seed: int) -> list[str]:
    base = list(series)
    random.Random(seed).shuffle(base)
    k = repetition % len(base)
    return base[k:] + base[:k]


def _group(series: Series, timeout_s: float):
    import torch.distributed as dist

    from ..comm import BLSOptions
    from .pipeline import group_lag_bound

    if series.backend == "bls":
        options = BLSOptions(lag_bound=group_lag_bound(series.lag_bound or 0), timeout_s=timeout_s)
        return dist.new_group(backend="bls", pg_options=options)
    return dist.new_group(backend=series.backend)


def _table_costs(store) -> list[float]:
    total = np.zeros(store.num_tables, dtype=np.float64)
    for b in range(store.num_batches):
        total += store.numpy_batch(b)[1].sum(axis=1, dtype=np.int64)
    return list(total / max(store.num_batches, 1))


def _run_stock(model, batches, delays, inject):
    from .pipeline import StepRecord, stock_forward

    records, preds = [], []
    for (dense, kjt), delay in zip(batches, delays, strict=True):
        rec = StepRecord(start=time.monotonic(), end=0.0)
        preds.append(stock_forward(model, dense, kjt))
        if delay > 0:
            rec.delay = inject(float(delay))
        rec.end = time.monotonic()
        records.append(rec)
    return records, preds


def rank_main(spec_path: str) -> None:
    """One workload on this rank: every series, every repetition; rank 0 writes the report."""
    import torch
    import torch.distributed as dist

    from ..comm import init_torch
    from ..data import BatchStore
    from ..delays import DelaySpec, inject
    from ..model import get_config, plan_shards
    from .kjt import local_batch
    from .model import build_dlrm, shard
    from .pipeline import PipelinedInference

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    init_torch("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    store = BatchStore(spec["dataset"], verify=rank == 0)
    shape = get_config(store.manifest["config"]["name"])
    model = build_dlrm(
        store.table_rows,
        store.num_dense,
        embedding_dim=shape.embedding_dim,
        bottom=shape.bottom_mlp[:-1],
        top=shape.top_mlp[:-1],
        seed=spec["model_seed"],
    )
    costs = _table_costs(store) if spec["plan"] == "hot" else None
    plan = plan_shards(store.table_rows, world, spec["plan"], costs=costs)
    series = [parse_series(s) for s in spec["series"]]
    sharded = {s.text: shard(model, _group(s, 120.0), plan) for s in series}
    local = [local_batch(store, i, rank, world) for i in range(store.num_batches)]
    n, warm = spec["iterations"], spec["warmup"]
    batches = [local[i % len(local)] for i in range(n)]
    warmup = [local[i % len(local)] for i in range(warm)]
    delay_spec = DelaySpec.from_dict(spec["delay"])
    delays = delay_spec.schedule(world, n)[rank]

    def put(i: int, p: torch.Tensor, into: dict) -> None:
        into[i] = p

    runs = []
    for rep in range(spec["repetitions"]):
        for position, text in enumerate(_order(spec["series"], rep, spec["shuffle_seed"])):
            s, model_s = parse_series(text), sharded[text]
            loop = None if s.lag_bound is None else PipelinedInference(model_s, s.lag_bound)
            with torch.no_grad():
                if loop is None:
                    _run_stock(model_s, warmup, [0.0] * warm, inject)
                else:
                    loop.run(warmup)
            gc.collect()
            dist.barrier()
            gc.disable()
            try:
                t0 = time.monotonic()
                if loop is None:
                    records, preds = _run_stock(
                        model_s, batches, delays, lambda x: inject(x, delay_spec.mode)
                    )
                else:
                    got: dict[int, torch.Tensor] = {}
                    records = loop.run(
                        batches,
                        delays=delays,
                        inject=lambda x: inject(x, delay_spec.mode),
                        on_predictions=lambda i, p, got=got: put(i, p, got),
                    )
                    preds = [got[i] for i in range(n)]
                t1 = time.monotonic()
            finally:
                gc.enable()
            digest = hashlib.sha256(torch.cat(preds).numpy().tobytes()).hexdigest()
            mine = {
                "t0": t0,
                "t1": t1,
                "digest": digest,
                "start": [r.start for r in records],
                "end": [r.end for r in records],
                "wait_splits": [r.wait_splits for r in records],
                "wait_tensors": [r.wait_tensors for r in records],
                "wait_output": [r.wait_output for r in records],
                "delay": [r.delay for r in records],
                "in_flight": [r.in_flight for r in records],
            }
            gathered = [None] * world if rank == 0 else None
            dist.gather_object(mine, gathered, dst=0)
            if rank == 0:
                runs.append(
                    {"series": text, "repetition": rep, "position": position, "ranks": gathered}
                )
    if rank == 0:
        report = {
            "workload": spec["name"],
            "dataset": spec["dataset"],
            "plan": plan,
            "delay": spec["delay"],
            "ranks": world,
            "batch_size": store.batch_size,
            "iterations": n,
            "series": spec["series"],
            "runs": runs,
            "versions": _versions(),
        }
        tmp = Path(spec["report"] + ".partial")
        tmp.write_text(json.dumps(report) + "\n")
        tmp.rename(spec["report"])
    dist.barrier()


def _versions() -> dict[str, str]:
    import torch
    import torchrec
    from mpi4py import MPI

    return {
        "torch": torch.__version__,
        "torchrec": torchrec.__version__,
        "mpi": MPI.Get_library_version().splitlines()[0],
        "python": sys.version.split()[0],
    }


# -- summary --------------------------------------------------------------------------------


def _run_row(report: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    from .. import theory
    from .pipeline import steps_ahead

    s = parse_series(run["series"])
    ranks = run["ranks"]
    makespan = max(r["t1"] for r in ranks) - min(r["t0"] for r in ranks)
    samples = report["iterations"] * report["batch_size"]
    row: dict[str, Any] = {
        "workload": report["workload"],
        "series": s.text,
        "repetition": run["repetition"],
        "position": run["position"],
        "makespan_s": makespan,
        "throughput": samples / makespan,
        "digests": ";".join(r["digest"] for r in ranks),
    }
    waits = {
        k: np.array([r[k] for r in ranks]) for k in ("wait_splits", "wait_tensors", "wait_output")
    }
    step = np.array([np.subtract(r["end"], r["start"]) for r in ranks])
    row["step_ms_mean"] = float(step.mean() * 1e3)
    row["delay_ms_mean"] = float(np.array([r["delay"] for r in ranks]).mean() * 1e3)
    for k, v in waits.items():
        row[f"{k}_ms_mean"] = float(v.mean() * 1e3)
    if s.lag_bound is not None:
        work = step - sum(waits.values())
        ideal = theory.ideal_makespan(work, s.lag_bound)
        row["work_ms_mean"] = float(work.mean() * 1e3)
        row["ideal_throughput"] = samples / ideal if ideal > 0 else math.nan
        row["ideal_speedup"] = theory.ideal_speedup(work, s.lag_bound)
        row["max_in_flight"] = int(max(max(r["in_flight"]) for r in ranks))
        row["max_steps_ahead"] = int(max(steps_ahead([r["start"] for r in ranks])))
    return row


def summarize(reports: list[dict[str, Any]]):
    """Per-run rows and one summary row per (workload, series): medians, paired intervals
    against each TorchRec synchronous series present, and bls L's fraction of its ideal."""
    import pandas as pd

    from bls_dlrm.analysis import stats

    runs = pd.DataFrame([_run_row(rep, run) for rep in reports for run in rep["runs"]])
    rows = []
    order = {text: k for rep in reports for k, text in enumerate(rep["series"])}
    keys = sorted(
        runs.groupby(["workload", "series"], sort=False).groups,
        key=lambda ws: (list(runs.workload.unique()).index(ws[0]), order[ws[1]]),
    )
    for workload, text in keys:
        g = runs[(runs.workload == workload) & (runs.series == text)]
        g = g.sort_values("repetition")
        w = runs[runs.workload == workload]
        row: dict[str, Any] = {
            "workload": workload,
            "series": text,
            "repetitions": len(g),
            "throughput_median": float(g.throughput.median()),
            "throughput_min": float(g.throughput.min()),
            "throughput_max": float(g.throughput.max()),
            "predictions_identical": bool(w.digests.nunique() == 1),
        }
        for col in ("wait_splits_ms_mean", "wait_tensors_ms_mean", "wait_output_ms_mean",
                    "step_ms_mean", "work_ms_mean", "ideal_throughput", "ideal_speedup",
                    "max_in_flight", "max_steps_ahead"):  # fmt: skip
            if col in g and g[col].notna().any():
                row[col] = float(g[col].median()) if "max" not in col else float(g[col].max())
        for base in ("gloo", "mpisync"):
            b = w[w.series == base].sort_values("repetition")
            if b.empty or base == text:
                continue
            point, low, high = stats.ratio_ci(g.throughput.to_numpy(), b.throughput.to_numpy())
            row[f"vs_{base}"], row[f"vs_{base}_low"], row[f"vs_{base}_high"] = point, low, high
            if "ideal_speedup" in g and g.ideal_speedup.notna().all():
                den = b.throughput.to_numpy() * g.ideal_speedup.to_numpy()
                p, lo, hi = stats.ratio_ci(g.throughput.to_numpy(), den)
                row[f"of_ideal_vs_{base}"] = p
                row[f"of_ideal_vs_{base}_low"] = lo
                row[f"of_ideal_vs_{base}_high"] = hi
                row[f"of_ideal_vs_{base}_verdict"] = stats.verdict(lo, hi, IDEAL_THRESHOLD)
        rows.append(row)
    return runs, pd.DataFrame(rows)


def _ci(row, key: str) -> str:
    if key not in row or not isinstance(row[key], float) or math.isnan(row[key]):
        return ""
    return f"{row[key]:.2f} [{row[key + '_low']:.2f}, {row[key + '_high']:.2f}]"


def format_table(rows) -> str:
    """The summary as a Markdown table (thousand samples/s; ratios with 95% intervals)."""
    head = (
        "| workload | series | k samples/s, median [min, max] | vs gloo | vs mpisync "
        "| ideal k samples/s | of ideal vs gloo | of ideal vs mpisync "
        "| waits ms/step: splits, tensors, output | max steps ahead |"
    )
    lines = [head, "|" + "---|" * 10]
    for _, r in rows.iterrows():
        waits = ""
        if "wait_splits_ms_mean" in r and not math.isnan(r.get("work_ms_mean", math.nan)):
            waits = (
                f"{r['wait_splits_ms_mean']:.2f}, {r['wait_tensors_ms_mean']:.2f}, "
                f"{r['wait_output_ms_mean']:.2f}"
            )
        ideal = r.get("ideal_throughput", math.nan)
        ahead = r.get("max_steps_ahead", math.nan)
        lines.append(
            f"| {r['workload']} | {r['series']} | {r['throughput_median'] / 1e3:.1f} "
            f"[{r['throughput_min'] / 1e3:.1f}, {r['throughput_max'] / 1e3:.1f}] "
            f"| {_ci(r, 'vs_gloo')} | {_ci(r, 'vs_mpisync')} "
            f"| {'' if math.isnan(ideal) else f'{ideal / 1e3:.1f}'} "
            f"| {_ci(r, 'of_ideal_vs_gloo')} | {_ci(r, 'of_ideal_vs_mpisync')} "
            f"| {waits} | {'' if math.isnan(ahead) else int(ahead)} |"
        )
    identical = bool(rows.predictions_identical.all()) if len(rows) else True
    lines.append("")
    lines.append(f"Predictions identical across series in every workload: {identical}")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        rank_main(sys.argv[1])
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        from mpi4py import MPI

        if MPI.COMM_WORLD.Get_size() > 1:
            MPI.COMM_WORLD.Abort(1)
        raise
