"""Open-loop serving: a seeded query arrival schedule, the batcher, and query latency.

Queries arrive as a Poisson process at an offered rate (queries/s); each carries a number
of samples drawn from :class:`QuerySizes` (constant, lognormal, or an empirical table such
as MLPerf's DLRM query-size quantiles). A batcher forms global batches from the arrivals
in order: a batch opens at its first query's arrival and closes when it holds
``max_batch`` samples, when the next query would not fit (it closes as that query
arrives), or ``max_wait_s`` after it opened, whichever comes first. Every rank derives the
same schedule from the seed alone: nothing is communicated.

Samples are consecutive in a stream: query ``q`` holds stream samples
``[offset[q], offset[q] + size[q])``, and the stream maps onto the dataset's samples
cyclically (:func:`gather`).

A query's latency is the time its predictions are complete on every rank holding part of
it, minus its arrival (:func:`query_latencies`); queueing before its batch starts is
included, as a user sees it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bls_dlrm.series import Series, SeriesError

SIZE_KINDS = ("constant", "lognormal", "table")


@dataclass(frozen=True)
class QuerySizes:
    """Samples per query: ``constant`` (``samples``), ``lognormal`` (``median``, ``sigma``,
    rounded, clipped to ``[1, max]``) or ``table`` (drawn uniformly from the sizes listed
    in ``path``, one number per line: an empirical quantile table)."""

    kind: str = "constant"
    samples: int = 1
    median: float = 100.0
    sigma: float = 0.5
    max: int | None = None
    path: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> QuerySizes:
        data = dict(data or {})
        unknown = sorted(set(data) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise ValueError(f"sizes.{unknown[0]}: unknown key")
        sizes = cls(**data)
        sizes.validate()
        return sizes

    def validate(self) -> None:
        if self.kind not in SIZE_KINDS:
            raise ValueError(f"sizes.kind: {self.kind!r} is not one of {SIZE_KINDS}")
        if self.kind == "constant" and not (isinstance(self.samples, int) and self.samples >= 1):
            raise ValueError(f"sizes.samples: must be an integer >= 1, got {self.samples!r}")
        if self.kind == "lognormal" and (not self.median > 0 or not self.sigma >= 0):
            raise ValueError("sizes.median, sizes.sigma: a lognormal needs median > 0, sigma >= 0")
        if self.max is not None and self.max < 1:
            raise ValueError(f"sizes.max: must be >= 1, got {self.max!r}")
        if self.kind == "table":
            if not self.path:
                raise ValueError("sizes.path: kind table needs a file (one size per line)")
            self.table()

    def table(self) -> np.ndarray:
        try:
            values = np.loadtxt(self.path, dtype=np.float64, ndmin=1, comments="#")
        except OSError as exc:
            raise ValueError(f"sizes.path: cannot read {self.path}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"sizes.path: {self.path}: not one number per line: {exc}") from None
        if values.size == 0 or (values < 1).any() or (values != np.round(values)).any():
            raise ValueError(f"sizes.path: {self.path}: sizes must be integers >= 1")
        return values.astype(np.int64)

    def largest(self) -> int:
        """The largest size this distribution can draw."""
        if self.kind == "constant":
            return self.samples
        if self.kind == "table":
            top = int(self.table().max())
            return min(top, self.max) if self.max else top
        if self.max is None:
            raise ValueError("sizes.max: a lognormal needs max (the largest query)")
        return self.max

    def mean(self) -> float:
        """Expected samples per query (the lognormal's from a large seeded draw)."""
        if self.kind == "constant":
            return float(self.samples)
        return float(self.draw(np.random.default_rng(0), 200_000).mean())

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "constant":
            out = np.full(n, self.samples, dtype=np.int64)
        elif self.kind == "lognormal":
            raw = np.rint(self.median * np.exp(self.sigma * rng.standard_normal(n)))
            out = np.maximum(raw, 1).astype(np.int64)
        else:
            out = rng.choice(self.table(), size=n)
        return np.minimum(out, self.max) if self.max else out


@dataclass(frozen=True)
class ServeSpec:
    """One offered load: arrivals for ``duration_s`` at ``rate_qps``, batched."""

    rate_qps: float
    duration_s: float
    sizes: QuerySizes
    max_batch: int
    max_wait_s: float
    seed: int = 0
    warmup_s: float = 0.0  # batches closing earlier are run but not measured

    def validate(self) -> None:
        if not self.rate_qps > 0:
            raise ValueError(f"rate: must be > 0 queries/s, got {self.rate_qps!r}")
        if not self.duration_s > 0:
            raise ValueError(f"duration_s: must be > 0, got {self.duration_s!r}")
        if not 0 <= self.warmup_s < self.duration_s:
            raise ValueError("warmup_s: must be >= 0 and shorter than duration_s")
        if not (isinstance(self.max_batch, int) and self.max_batch >= 1):
            raise ValueError(f"max_batch: must be an integer >= 1, got {self.max_batch!r}")
        if not self.max_wait_s >= 0:
            raise ValueError(f"max_wait_s: must be >= 0, got {self.max_wait_s!r}")
        self.sizes.validate()
        if self.sizes.largest() > self.max_batch:
            raise ValueError(
                f"sizes: a query of up to {self.sizes.largest()} samples does not fit "
                f"max_batch {self.max_batch}; lower sizes.max or raise max_batch"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Schedule:
    """Queries (arrival times in s after the start, sizes, stream offsets) and the batches
    the batcher forms from them (close times, first query of each; ``first[-1]`` = number
    of queries)."""

    arrival: np.ndarray
    size: np.ndarray
    offset: np.ndarray
    close: np.ndarray
    first: np.ndarray

    @property
    def num_queries(self) -> int:
        return len(self.arrival)

    @property
    def num_batches(self) -> int:
        return len(self.close)

    def batch_queries(self, b: int) -> range:
        return range(int(self.first[b]), int(self.first[b + 1]))

    def batch_range(self, b: int) -> tuple[int, int]:
        """Stream samples ``[start, stop)`` of batch ``b``."""
        q0, q1 = int(self.first[b]), int(self.first[b + 1])
        return int(self.offset[q0]), int(self.offset[q1 - 1] + self.size[q1 - 1])

    def batch_samples(self) -> np.ndarray:
        ends = np.append(self.offset, self.offset[-1] + self.size[-1]) if len(self.size) else [0]
        return np.diff(np.asarray(ends)[self.first])


def arrivals(spec: ServeSpec) -> tuple[np.ndarray, np.ndarray]:
    """Poisson arrival times in ``[0, duration_s)`` and sizes, from ``spec.seed`` alone."""
    gaps_rng, sizes_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(2)
    )
    expected = spec.rate_qps * spec.duration_s
    n = int(expected + 10 * np.sqrt(expected) + 16)
    times = np.cumsum(gaps_rng.exponential(1.0 / spec.rate_qps, n))
    while times[-1] < spec.duration_s:  # vanishingly rare: draw more
        more = np.cumsum(gaps_rng.exponential(1.0 / spec.rate_qps, n)) + times[-1]
        times = np.concatenate([times, more])
    times = times[times < spec.duration_s]
    return times, spec.sizes.draw(sizes_rng, len(times))


def form_batches(
    arrival: np.ndarray, size: np.ndarray, max_batch: int, max_wait_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """The batcher: (close times, first query of each batch plus the query count)."""
    close: list[float] = []
    first: list[int] = []
    n = len(arrival)
    q = 0
    while q < n:
        opened = float(arrival[q])
        deadline = opened + max_wait_s
        first.append(q)
        filled = int(size[q])
        q += 1
        closed_at = None
        while closed_at is None:
            if filled >= max_batch:
                closed_at = float(arrival[q - 1])  # full: closes as its last query arrives
            elif q == n or arrival[q] > deadline:
                closed_at = deadline  # waited long enough
            elif filled + int(size[q]) > max_batch:
                closed_at = float(arrival[q])  # the next query does not fit
            else:
                filled += int(size[q])
                q += 1
        close.append(closed_at)
    first.append(n)
    return np.asarray(close, dtype=np.float64), np.asarray(first, dtype=np.int64)


def schedule(spec: ServeSpec) -> Schedule:
    """The queries and batches of one offered load (pure function of ``spec``)."""
    spec.validate()
    arrival, size = arrivals(spec)
    offset = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    close, first = form_batches(arrival, size, spec.max_batch, spec.max_wait_s)
    return Schedule(arrival, size, offset, close, first)


# -- data ---------------------------------------------------------------------------------


def gather(store, start: int, stop: int):
    """Stream samples ``[start, stop)`` as one batch, the stream wrapping around the
    dataset's samples (batch-major order)."""
    import torch

    from bls_dlrm.data.store import Batch
    from bls_dlrm.model.sparse import SparseBatch

    per = store.batch_size
    total = per * store.num_batches
    dense, sparse, labels = [], [], []
    pos = start
    while pos < stop:
        b, row = divmod(pos % total, per)
        take = min(per - row, stop - pos)
        batch = store.batch(b)
        dense.append(batch.dense[row : row + take])
        sparse.append(batch.sparse.slice(row, row + take))
        if batch.labels is not None:
            labels.append(batch.labels[row : row + take])
        pos += take
    joined = sparse[0] if len(sparse) == 1 else SparseBatch.concat(sparse)
    return Batch(
        torch.cat(dense) if len(dense) > 1 else dense[0],
        joined,
        (torch.cat(labels) if len(labels) > 1 else labels[0]) if labels else None,
    )


# -- latency ------------------------------------------------------------------------------


def query_latencies(
    sched: Schedule, done: np.ndarray, t_origin: float, ranks: int, warmup_s: float = 0.0
) -> pd.DataFrame:
    """One row per query: arrival, size, batch, latency (s).

    ``done[r, b]`` is when batch ``b``'s predictions were done on rank ``r`` (same clock as
    ``t_origin``, the instant arrivals are counted from). A query is done when every rank
    holding part of it (the contiguous batch slices of :func:`bls_dlrm.run.pipeline.batch_slices`)
    is done; queries arriving before ``warmup_s`` are flagged ``warmup``.
    """
    from bls_dlrm.run.pipeline import batch_slices

    rows_batch = np.empty(sched.num_queries, dtype=np.int64)
    done_at = np.empty(sched.num_queries, dtype=np.float64)
    for b in range(sched.num_batches):
        queries = sched.batch_queries(b)
        start, stop = sched.batch_range(b)
        bounds = np.array(batch_slices(stop - start, ranks, allow_empty=True))
        for q in queries:
            lo = int(sched.offset[q]) - start
            hi = lo + int(sched.size[q])
            holders = (bounds[:, 0] < hi) & (bounds[:, 1] > lo)
            rows_batch[q] = b
            done_at[q] = done[holders, b].max()
    return pd.DataFrame(
        {
            "query": np.arange(sched.num_queries),
            "arrival_s": sched.arrival,
            "samples": sched.size,
            "batch": rows_batch,
            "latency_s": done_at - (t_origin + sched.arrival),
            "warmup": sched.arrival < warmup_s,
        }
    )


def summarise(queries: pd.DataFrame, duration_s: float, warmup_s: float = 0.0) -> dict[str, float]:
    """Achieved throughput and latency percentiles of the measured queries (those arriving
    in ``[warmup_s, duration_s)``)."""
    measured = queries[~queries["warmup"]]
    lat = measured["latency_s"].to_numpy()
    window = duration_s - warmup_s
    done = (measured["arrival_s"] + measured["latency_s"]).to_numpy()
    busy = float(done.max() - measured["arrival_s"].min()) if len(measured) else 0.0
    out = {
        "queries": len(measured),
        "samples": int(measured["samples"].sum()),
        # arrivals per second in the measured window (the offered rate, as drawn)
        "arrived_qps": len(measured) / window if window > 0 else float("nan"),
        # queries answered per second, from the first measured arrival to the last answer
        "achieved_qps": len(measured) / busy if busy > 0 else float("nan"),
    }
    for p in (50, 90, 99, 99.9):
        key = f"p{p:g}".replace(".", "_") + "_ms"
        out[key] = float(np.percentile(lat, p) * 1e3) if len(lat) else float("nan")
    out["mean_ms"] = float(lat.mean() * 1e3) if len(lat) else float("nan")
    return out


# -- tables of a serving sweep ------------------------------------------------------------

#: The role of the reference series (the launch's best synchronous series) in the tables.
SYNC = "sync"


def _label(folder: str) -> str:
    """A report's series (its run folder's name) as tables and figures name it."""
    try:
        return Series.from_folder(folder).label
    except SeriesError:
        return folder


def sweep_tables(reports: dict[tuple[str, int], dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """Tidy tables of a serving sweep from its ``serve.json`` reports, keyed by (workload,
    repetition): ``serving`` (one row per offered load and series: latency percentiles,
    achieved rate, stability) and ``capacity`` (one row per series: capacity at the SLO,
    closed-loop capacity and the theory's limits).

    Each row carries ``series`` (``mpi``, ``bls L=4``, ...) and ``role``: ``sync`` for the
    launch's reference (its highest-capacity synchronous candidate, chosen at calibration
    before any load ran), else the series itself, so ratios pair BLS with the synchronous
    series of the same repetition.
    """
    serving, capacity = [], []
    for (workload, rep), report in sorted(reports.items()):
        cal = report["calibration"]
        ref = _label(cal["series"])
        base = {
            "workload": workload,
            "repetition": int(rep),
            "ranks": report.get("ranks"),
            "reference": ref,
            "reference_qps": cal["capacity_qps"],
            "ideal_sync_qps": cal.get("ideal_sync_qps"),
            "ideal_unbounded_qps": cal.get("ideal_unbounded_qps"),
        }
        for run in report["runs"]:
            series = _label(run["series"])
            row = base | {k: v for k, v in run.items() if k not in ("series", "run_dir")}
            serving.append(row | {"series": series, "role": SYNC if series == ref else series})
        for label, found in (report.get("capacity") or {}).items():
            series = _label(label)
            capacity.append(
                base
                | {
                    "series": series,
                    "role": SYNC if series == ref else series,
                    "capacity_qps": found["capacity_qps"],
                    "below_qps": found.get("below_qps"),
                    "resolution_qps": found.get("resolution_qps"),
                    "closed_loop_qps": found["closed_loop_qps"],
                    "series_ideal_sync_qps": found.get("ideal_sync_qps"),
                    "series_ideal_unbounded_qps": found.get("ideal_unbounded_qps"),
                    "slo_ms": found["slo_ms"],
                    "percentile": found["percentile"],
                    "probes": len(found["probes"]),
                }
            )
    return {"serving": pd.DataFrame(serving), "capacity": pd.DataFrame(capacity)}


def main_tables(argv: list[str] | None = None) -> int:
    """``bls-dlrm serve-tables REPORT... --out DIR``: serving.parquet and capacity.parquet.

    A report's path must hold ``scenario~<workload>`` and ``rep~<n>`` folders (the
    workflow's layout), which name its workload and repetition.
    """
    import argparse
    import json
    import re

    parser = argparse.ArgumentParser(
        prog="bls-dlrm serve-tables",
        description="Serving sweep reports (serve.json) -> serving.parquet, capacity.parquet",
    )
    parser.add_argument("reports", nargs="+", type=Path, metavar="SERVE_JSON")
    parser.add_argument("--out", required=True, type=Path, help="folder for the tables")
    args = parser.parse_args(argv)
    reports = {}
    for path in args.reports:
        m = re.search(r"scenario~([^/]+)/(?:.*/)?rep~(\d+)", str(path))
        if not m:
            parser.error(f"{path}: no scenario~<name>/.../rep~<n> in the path")
        try:
            reports[(m.group(1), int(m.group(2)))] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            parser.error(f"{path}: {exc}")
    tables = sweep_tables(reports)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_parquet(args.out / f"{name}.parquet", index=False)
        print(f"{name}: {len(df)} rows -> {args.out / (name + '.parquet')}")
    return 0
