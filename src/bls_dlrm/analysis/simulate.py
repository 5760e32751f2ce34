"""Simulation with a measured exchange cost: predicted makespan, speedup and capacity.

:mod:`bls_dlrm.theory` takes the exchange as free, which bounds a run from below. This
module adds what an exchange costs and predicts a run, so a prediction can be checked
against every measured configuration before it is used at rank counts we cannot run.

The model extends the recurrence of :func:`bls_dlrm.theory.start_times` by two costs:

- ``overhead_s`` (``o``): time each rank spends per iteration outside the logged
  ``compute_s`` and ``delay_s`` (posting, progress calls, unpacking, the loop itself). It is
  paid on the rank's own timeline, so no lag bound can hide it;
- the exchange time ``x = ExchangeCost.time(P, bytes_per_peer)``: an exchange completes
  ``x`` after the last rank posted it. A lag bound hides it as long as the ranks have other
  work to do.

With ``w[r, i]`` the logged work::

    finish(r, i)   = start(r, i) + w[r, i] + o                     (rank r posts i)
    complete(i)    = max_q finish(q, i) + x
    start(r, i)    = max(finish(r, i-1), complete(i-L-1))
    makespan       = complete(N-1)

With ``x = o = 0`` this is exactly the ideal recurrence (and :func:`simulate` returns
:func:`bls_dlrm.theory.ideal_makespan` to the last bit).

Exchange cost: ``x(P, n) = a + b*(P-1) + c*n*(P-1)`` for ``P`` ranks and ``n`` bytes per
peer (latency, per-peer and bandwidth terms), fitted by non-negative least squares
(:meth:`ExchangeCost.fit`) either from ``bls-dlrm bench-a2a`` latency results
(:func:`bench_table`) or from a sweep's own logs (:func:`exchange_samples`: in the
synchronous runs, how long after the last rank's post a blocked rank's exchange
completed). A term the data cannot tell apart from the others (one rank count, one message
size) is not fitted and stays 0; :attr:`ExchangeCost.fitted` says which were.

Validation (:func:`validation_table`): for every measured workload, the work matrices of
its best synchronous series' runs predict both that series' makespan and each BLS series'
makespan; the predicted speedup is set beside the measured one, repetition by repetition.
The per-iteration overhead of each series is calibrated on one workload
(:func:`calibrate_overhead`, by default ``balanced``), so the other workloads are
out-of-sample.

Scale-out (:func:`scale_out`): per-rank compute drawn from a measured distribution, a delay
schedule of :mod:`bls_dlrm.delays` at any ``P``, the fitted costs; every row is marked
``simulated``. Serving capacity is the reciprocal of the predicted time per iteration times
the samples of a global batch (a closed-loop capacity; no queueing model).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bls_dlrm.analysis.compare import best_synchronous
from bls_dlrm.delays import DelaySpec
from bls_dlrm.series import SYNC_SERIES, Series
from bls_dlrm.theory import _as_work, _lag_gate, timeline

__all__ = [
    "ExchangeCost",
    "Simulation",
    "bench_table",
    "bytes_per_peer",
    "calibrate_overhead",
    "delay_specs",
    "exchange_cost_from_sweep",
    "exchange_samples",
    "fit_from_sweep",
    "run_key",
    "scale_out",
    "simulate",
    "validation_table",
    "work_matrices",
]

#: Terms of the exchange-cost model, in the order of :class:`ExchangeCost`'s fields.
TERMS = ("a", "b", "c")
#: Bytes per element of an exchanged embedding row (float32).
ELEMENT_BYTES = 4
#: Columns that make two workloads the same setting for calibration (ranks, model, batch).
SETTING_COLUMNS = ("world_size", "config.tags.model", "config.model.name", "config.batch_size")


@dataclass(frozen=True)
class ExchangeCost:
    """Per-exchange time ``a + b*(P-1) + c*bytes_per_peer*(P-1)`` seconds.

    ``a``: fixed cost per exchange (s); ``b``: per peer (s); ``c``: per byte sent to each
    peer (s/byte). ``fitted`` names the terms estimated from data (the others were not
    identifiable and are 0); ``rows`` how many measurements the fit used.
    """

    a: float = 0.0
    b: float = 0.0
    c: float = 0.0
    fitted: tuple[str, ...] = field(default=TERMS, compare=False)
    rows: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        for name in TERMS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))

    def time(self, ranks: int, bytes_per_peer: float = 0.0) -> float:
        """Seconds one exchange among ``ranks`` ranks takes, ``bytes_per_peer`` to each peer."""
        if ranks < 1:
            raise ValueError(f"ranks must be >= 1, got {ranks!r}")
        if bytes_per_peer < 0:
            raise ValueError(f"bytes_per_peer must be >= 0, got {bytes_per_peer!r}")
        peers = ranks - 1
        out = self.a + self.b * peers
        if self.c:  # an unknown size (NaN) costs nothing when bandwidth is not modelled
            out += self.c * float(bytes_per_peer) * peers
        return out

    @classmethod
    def fit(cls, table: pd.DataFrame | Mapping[str, Sequence[float]]) -> ExchangeCost:
        """Least-squares fit (non-negative terms) to rows of ``ranks``, ``bytes_per_peer``,
        ``time_s``.

        Terms are taken in the order a, b, c, each only if it adds a direction the rows can
        tell apart from the terms before it (one rank count: no ``b``; one message size as
        well: no ``c``); the others stay 0 and are left out of ``fitted``.
        """
        from scipy.optimize import nnls

        df = pd.DataFrame(table)
        missing = [c for c in ("ranks", "bytes_per_peer", "time_s") if c not in df.columns]
        if missing:
            raise ValueError(f"fit table lacks column(s) {', '.join(missing)}")
        df = df.dropna(subset=["ranks", "bytes_per_peer", "time_s"])
        if df.empty:
            raise ValueError("fit table has no complete row")
        peers = df["ranks"].to_numpy(np.float64) - 1.0
        n = df["bytes_per_peer"].to_numpy(np.float64)
        y = df["time_s"].to_numpy(np.float64)
        columns = {"a": np.ones_like(peers), "b": peers, "c": n * peers}
        scale = {k: float(np.max(np.abs(v))) or 1.0 for k, v in columns.items()}
        chosen: list[str] = []
        for name in TERMS:
            trial = np.column_stack([columns[k] / scale[k] for k in (*chosen, name)])
            if np.linalg.matrix_rank(trial, tol=1e-9 * max(trial.shape)) == len(chosen) + 1:
                chosen.append(name)
        design = np.column_stack([columns[k] / scale[k] for k in chosen])
        coef, _ = nnls(design, y)
        values = {k: float(v) / scale[k] for k, v in zip(chosen, coef, strict=True)}
        return cls(**values, fitted=tuple(chosen), rows=len(df))

    def describe(self) -> str:
        """One line, in microseconds, naming the terms that were not identifiable."""
        text = (
            f"x(P, n) = {self.a * 1e6:.1f} us + {self.b * 1e6:.2f} us*(P-1)"
            f" + {self.c * 1e12:.3f} ps/byte*n*(P-1)"
        )
        fixed = [t for t in TERMS if t not in self.fitted]
        if fixed:
            text += f" ({', '.join(fixed)} not identifiable from the data: 0)"
        return text


@dataclass(frozen=True)
class Simulation:
    """One simulated run: times of every (rank, iteration) and the summary numbers."""

    start: np.ndarray
    finish: np.ndarray
    complete: np.ndarray
    exchange_s: float
    overhead_s: float
    lag_bound: int | None

    @property
    def ranks(self) -> int:
        return int(self.start.shape[0])

    @property
    def iterations(self) -> int:
        return int(self.start.shape[1])

    @property
    def makespan_s(self) -> float:
        """Completion of the last exchange (0 for zero iterations)."""
        return float(self.complete[-1]) if self.iterations else 0.0

    @property
    def time_per_iteration_s(self) -> float:
        return self.makespan_s / self.iterations if self.iterations else math.nan

    def throughput_sps(self, samples_per_iteration: float) -> float:
        """Samples per second for ``samples_per_iteration`` samples in a global batch."""
        return samples_per_iteration / self.time_per_iteration_s


def _exchange_seconds(
    exchange_cost: ExchangeCost | float, ranks: int, bytes_per_peer: float
) -> float:
    if isinstance(exchange_cost, ExchangeCost):
        return exchange_cost.time(ranks, bytes_per_peer)
    if isinstance(exchange_cost, bool) or not isinstance(exchange_cost, int | float | np.floating):
        raise ValueError(f"exchange_cost must be an ExchangeCost or seconds, got {exchange_cost!r}")
    x = float(exchange_cost)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"exchange_cost must be finite seconds >= 0, got {x!r}")
    return x


def simulate(
    work: np.ndarray,
    exchange_cost: ExchangeCost | float,
    lag_bound: int | float | None,
    *,
    bytes_per_peer: float = 0.0,
    overhead_s: float = 0.0,
) -> Simulation:
    """Simulate ``work`` (ranks x iterations, seconds) under lag bound ``L``.

    ``exchange_cost``: an :class:`ExchangeCost` (evaluated at the work's rank count and
    ``bytes_per_peer``) or a fixed number of seconds per exchange. ``overhead_s``: per-rank
    cost of an iteration outside the work. ``lag_bound`` None or ``math.inf``: unbounded.
    The recurrence is the module docstring's, one vectorised step per iteration.
    """
    w = _as_work(work)
    ranks, iterations = w.shape
    lag = _lag_gate(lag_bound, iterations)
    x = _exchange_seconds(exchange_cost, ranks, bytes_per_peer)
    o = float(overhead_s)
    if not math.isfinite(o) or o < 0:
        raise ValueError(f"overhead_s must be finite seconds >= 0, got {overhead_s!r}")
    start, finish, complete = timeline(w, lag, exchange_s=x, overhead_s=o)
    return Simulation(start, finish, complete, x, o, lag)


# --------------------------------------------------------------------------------------
# Exchange-cost data


def bench_table(source: str | os.PathLike[str] | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """``bls-dlrm bench-a2a`` latency results -> rows ``ranks, bytes_per_peer, time_s``.

    ``source``: the JSON-lines file of ``--out`` or its parsed records. Only latency-mode
    rows count; ``time_s`` is the median exchange latency (``p50_us``).
    """
    if isinstance(source, str | os.PathLike):
        lines = Path(source).read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    else:
        records = list(source)
    rows = [
        {
            "ranks": int(r["ranks"]),
            "bytes_per_peer": float(r["bytes_per_peer"]),
            "time_s": float(r["p50_us"]) * 1e-6,
            "collective": r.get("collective"),
        }
        for r in records
        if r.get("mode", "latency") == "latency" and "p50_us" in r and "bytes_per_peer" in r
    ]
    return pd.DataFrame(rows, columns=["ranks", "bytes_per_peer", "time_s", "collective"])


def bytes_per_peer(runs: pd.DataFrame) -> pd.Series:
    """Mean bytes a rank sends to each peer per exchange, per row of a runs table.

    Rank ``r`` sends peer ``q`` its lookups for ``q``'s batch slice: ``(B/P) * T_r * d * 4``
    bytes, with ``T_r`` the tables of ``r`` (``config.plan_tables``) and ``d`` the
    embedding width of ``config.model.name``; the mean over ranks is ``B * T * d * 4 / P^2``.
    """
    from bls_dlrm.model.config import get_config

    cols = ("config.plan_tables", "config.model.name", "config.batch_size", "world_size")
    if not set(cols) <= set(runs.columns):
        return pd.Series(math.nan, index=runs.index, dtype="float64")
    dims: dict[str, int] = {}
    out = []
    for plan, model, batch, ranks in zip(*(runs[c].tolist() for c in cols), strict=True):
        try:
            tables = sum(len(t) for t in json.loads(plan))
            if model not in dims:
                dims[model] = get_config(str(model)).embedding_dim
            out.append(float(batch) * tables * dims[model] * ELEMENT_BYTES / float(ranks) ** 2)
        except (KeyError, TypeError, ValueError):
            out.append(math.nan)
    return pd.Series(out, index=runs.index, dtype="float64")


def _with_keys(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with ``workload``, ``scenario``, ``series``, ``rep`` and ``stress`` columns
    (annotated by :func:`bls_dlrm.analysis.workloads.annotate_runs` unless they already are)."""
    from bls_dlrm.analysis.compare import repetition_numbers
    from bls_dlrm.analysis.workloads import annotate_runs

    labelled = {"workload", "scenario", "series", "scenario_class"} <= set(runs.columns)
    df = runs.copy() if labelled else annotate_runs(runs)
    df["rep"] = repetition_numbers(df)
    df["stress"] = df["scenario_class"] == "stress"
    return df


def run_key(df: pd.DataFrame) -> pd.Series:
    """One run of a series in a table row: ``run_id|collective|lag_bound``."""
    lag = df["lag_bound"].astype("Int64").astype("string").fillna("")
    return df["run_id"].astype(str) + "|" + df["collective"].astype(str) + "|" + lag


def work_matrices(iterations: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per run (:func:`run_key`): the work matrix ``compute_s + delay_s`` over measured
    iterations, ranks x iterations (a run whose ranks logged different iterations is left
    out)."""
    df = iterations
    if "warmup" in df.columns:
        df = df[~df["warmup"].astype(bool)]
    df = df.assign(_key=run_key(df), _w=df["compute_s"] + df["delay_s"])
    df = df.sort_values(["_key", "rank", "iteration"], kind="stable")
    keys = df["_key"].to_numpy()
    values = df["_w"].to_numpy(np.float64)
    ranks = df["rank"].to_numpy()
    bounds = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    out: dict[str, np.ndarray] = {}
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(keys)], strict=True):
        n_ranks = len(np.unique(ranks[lo:hi]))
        if n_ranks and (hi - lo) % n_ranks == 0:
            out[str(keys[lo])] = values[lo:hi].reshape(n_ranks, -1)
    return out


def exchange_samples(
    iterations: pd.DataFrame, runs: pd.DataFrame, *, include_stress: bool = False
) -> pd.DataFrame:
    """Exchange times measured in a sweep's own synchronous runs, one row per run.

    In a synchronous run (gloo, mpi, bls L=0) a rank that blocked on iteration ``i`` saw
    the exchange complete at its ``t_completed``; the exchange time is that minus the
    moment the last rank was ready for it: its ``t_bottom`` of ``i``, after the post and
    the bottom MLP, when it enters the wait (all ranks of a host share one clock). Before
    that moment the last rank computes and makes no progress on the exchange, so its
    transfer cannot be counted from the post. The row's
    ``time_s`` is the median over the run's blocked (rank, iteration) pairs; ``ranks`` and
    ``bytes_per_peer`` say where it was measured. Stress workloads (oversubscribed) are
    left out unless ``include_stress``.
    """
    keyed = _with_keys(runs)
    keyed = keyed[keyed["series"].isin(SYNC_SERIES)]
    if not include_stress:
        keyed = keyed[~keyed["stress"].astype(bool)]
    keyed = keyed.assign(_key=run_key(keyed), bytes_per_peer=bytes_per_peer(keyed))
    df = iterations
    if "warmup" in df.columns:
        df = df[~df["warmup"].astype(bool)]
    df = df.assign(_key=run_key(df))
    df = df[df["_key"].isin(set(keyed["_key"]))]
    last_ready = df.groupby(["_key", "iteration"])["t_bottom"].transform("max")
    blocked = df["wait_s"] > 0
    sample = (df["t_completed"] - last_ready)[blocked]
    sample = sample[sample >= 0]
    med = sample.groupby(df.loc[sample.index, "_key"]).median()
    out = keyed.set_index("_key").loc[med.index]
    return pd.DataFrame(
        {
            "run_id": out["run_id"].to_numpy(),
            "workload": out["workload"].to_numpy(),
            "series": out["series"].to_numpy(),
            "ranks": out["world_size"].astype("int64").to_numpy(),
            "bytes_per_peer": out["bytes_per_peer"].to_numpy(),
            "time_s": med.to_numpy(),
        }
    )


# --------------------------------------------------------------------------------------
# Calibration and validation


def _model_lag(row: pd.Series) -> int:
    return int(row["lag_bound"]) if row["collective"] == "bls" else 0


def calibrate_overhead(
    runs: pd.DataFrame,
    iterations: pd.DataFrame,
    exchange_cost: ExchangeCost,
    workload: str = "balanced",
    *,
    works: Mapping[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Per series: the per-iteration overhead that makes the simulation meet the measured
    makespan on ``workload`` (a workload id or scenario name), median over repetitions.

    Each simulated iteration costs one overhead on the critical path, so a run's overhead
    is ``(measured - simulated without overhead) / iterations`` (clipped at 0).
    """
    keyed = _with_keys(runs)
    keyed = keyed[(keyed["workload"] == workload) | (keyed["scenario"] == workload)]
    works = work_matrices(iterations) if works is None else works
    keyed = keyed.assign(_key=run_key(keyed), _bytes=bytes_per_peer(keyed))
    values: dict[str, list[float]] = {}
    for _, row in keyed.iterrows():
        w = works.get(row["_key"])
        if w is None or w.shape[1] == 0:
            continue
        sim = simulate(w, exchange_cost, _model_lag(row), bytes_per_peer=row["_bytes"])
        o = max(0.0, (float(row["makespan_s"]) - sim.makespan_s) / w.shape[1])
        values.setdefault(row["series"], []).append(o)
    return {s: float(np.median(v)) for s, v in values.items()}


def validation_table(
    runs: pd.DataFrame,
    iterations: pd.DataFrame,
    exchange_cost: ExchangeCost | None = None,
    overhead: Mapping[str, float] | None = None,
    *,
    calibration: str = "balanced",
    sync_series: Sequence[str] = SYNC_SERIES,
    works: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Predicted vs measured speedup of every BLS series over the best synchronous series,
    per workload and repetition.

    ``exchange_cost`` defaults to the fit of :func:`exchange_samples` on these runs, and
    ``overhead`` (per series) to :func:`calibrate_overhead` on the runs of ``calibration``
    in the same setting (:data:`SETTING_COLUMNS`: rank count, model, batch size) as the
    workload judged, or on all of them when that setting has no calibration runs. For each
    repetition, the best synchronous run's work matrix is simulated with that series'
    overhead at ``L = 0`` and with each BLS series' overhead at its ``L``; the predicted
    speedup is the ratio of the two makespans, the measured one the ratio of the
    throughputs. Columns: workload, scenario, stress, calibration (the workload the
    overheads came from), ranks, series, baseline, rep, predicted/measured makespans and
    speedups, ``error`` = predicted / measured - 1.
    """
    works = work_matrices(iterations) if works is None else works
    if exchange_cost is None:
        exchange_cost = ExchangeCost.fit(exchange_samples(iterations, runs))
    keyed = _with_keys(runs)
    keyed = keyed.assign(_key=run_key(keyed), _bytes=bytes_per_peer(keyed))
    setting = [c for c in SETTING_COLUMNS if c in keyed.columns]
    is_cal = (keyed["workload"] == calibration) | (keyed["scenario"] == calibration)
    calibrated: dict[tuple, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    for workload, df in keyed.groupby("workload", sort=False):
        own = overhead
        if own is None:  # calibration runs of the same setting, else all of them
            key = tuple(df[setting].iloc[0]) if setting else ()
            if key not in calibrated:
                same = is_cal & (keyed[setting] == df[setting].iloc[0]).all(axis=1)
                cal = keyed[same] if same.any() else keyed[is_cal]
                calibrated[key] = calibrate_overhead(
                    cal, iterations, exchange_cost, calibration, works=works
                )
            own = calibrated[key]
        base = best_synchronous(df, sync_series)
        if base is None or base not in own:
            continue
        bases = {r["rep"]: r for r in df[df["series"] == base].to_dict("records")}
        sync_runs: dict[Any, Simulation | None] = {}
        bls = df[(df["collective"] == "bls") & (df["lag_bound"].fillna(0) > 0)]
        for t in bls.to_dict("records"):
            series, rep = t["series"], t["rep"]
            b = bases.get(rep)
            if series not in own or b is None:
                continue
            w = works.get(b["_key"])
            if w is None or w.shape[1] == 0:
                continue
            n = b["_bytes"]
            if rep not in sync_runs:
                sync_runs[rep] = simulate(
                    w, exchange_cost, 0, bytes_per_peer=n, overhead_s=own[base]
                )
            sim_sync = sync_runs[rep]
            sim_bls = simulate(
                w, exchange_cost, int(t["lag_bound"]), bytes_per_peer=n, overhead_s=own[series]
            )
            predicted = sim_sync.makespan_s / sim_bls.makespan_s
            measured = float(t["throughput_sps"]) / float(b["throughput_sps"])
            rows.append(
                {
                    "workload": workload,
                    "scenario": t["scenario"],
                    "stress": bool(t["stress"]),
                    "calibration": bool(workload == calibration or t["scenario"] == calibration),
                    "ranks": int(t["world_size"]),
                    "series": series,
                    "lag_bound": int(t["lag_bound"]),
                    "baseline": base,
                    "rep": rep,
                    "run_id": t["run_id"],
                    "predicted_sync_makespan_s": sim_sync.makespan_s,
                    "predicted_bls_makespan_s": sim_bls.makespan_s,
                    "measured_sync_makespan_s": float(b["makespan_s"]),
                    "measured_bls_makespan_s": float(t["makespan_s"]),
                    "predicted_speedup": predicted,
                    "measured_speedup": measured,
                    "error": predicted / measured - 1.0,
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# Scale-out


def scale_out(
    compute_s: np.ndarray,
    delay: DelaySpec,
    ranks: Iterable[int],
    lag_bounds: Iterable[int],
    *,
    exchange_cost: ExchangeCost | float = 0.0,
    overhead: Mapping[str, float] | float = 0.0,
    sync_series: str = Series("bls", 0).label,
    iterations: int = 300,
    samples_per_rank: float = 1.0,
    bytes_per_peer_at: Any = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Simulation, not measurement: predicted speedup and capacity at rank counts we cannot run.

    For each ``P``, every (rank, iteration) draws its compute from ``compute_s`` (measured
    per-rank, per-iteration seconds; seeded, independent across ranks) and adds the delay
    schedule ``delay.schedule(P, iterations)``. The synchronous series (``L = 0``, overhead
    of ``sync_series``) and each ``bls L=<L>`` run the same work. ``bytes_per_peer_at(P)``
    gives the message size (default 0). Capacity = ``P * samples_per_rank`` / predicted time
    per iteration, samples per second (closed loop, no queueing). Rows are marked
    ``simulated``.
    """
    pool = np.asarray(compute_s, dtype=np.float64).ravel()
    pool = pool[np.isfinite(pool)]
    if pool.size == 0:
        raise ValueError("compute_s must hold at least one finite measured work time")

    def cost(series: str) -> float:
        if isinstance(overhead, Mapping):
            return float(overhead.get(series, 0.0))
        return float(overhead)

    rows: list[dict[str, Any]] = []
    lags = list(lag_bounds)
    for p in ranks:
        rng = np.random.default_rng([seed, int(p)])
        work = rng.choice(pool, size=(int(p), iterations)) + delay.schedule(int(p), iterations)
        n = float(bytes_per_peer_at(int(p))) if bytes_per_peer_at is not None else 0.0
        samples = int(p) * samples_per_rank
        sync = simulate(work, exchange_cost, 0, bytes_per_peer=n, overhead_s=cost(sync_series))
        for lag in lags:
            label = Series("bls", lag).label
            sim = simulate(work, exchange_cost, lag, bytes_per_peer=n, overhead_s=cost(label))
            rows.append(
                {
                    "simulated": True,
                    "delay_kind": delay.kind,
                    "ranks": int(p),
                    "lag_bound": int(lag),
                    "series": label,
                    "iterations": iterations,
                    "bytes_per_peer": n,
                    "exchange_s": sim.exchange_s,
                    "sync_time_per_iteration_s": sync.time_per_iteration_s,
                    "bls_time_per_iteration_s": sim.time_per_iteration_s,
                    "predicted_speedup": sync.makespan_s / sim.makespan_s,
                    "sync_capacity_sps": sync.throughput_sps(samples),
                    "bls_capacity_sps": sim.throughput_sps(samples),
                }
            )
    return pd.DataFrame(rows)


def fit_from_sweep(
    runs: pd.DataFrame,
    iterations: pd.DataFrame,
    calibration: str = "balanced",
    *,
    works: Mapping[str, np.ndarray] | None = None,
) -> tuple[ExchangeCost, dict[str, float]]:
    """The exchange cost (:func:`exchange_samples` of the sweep's bound synchronous runs)
    and the per-series overheads calibrated on ``calibration``; both from the sweep's own
    logs. Tables without the phase times give a free exchange (``fitted`` empty)."""
    cost = exchange_cost_from_sweep(runs, iterations)
    return cost, calibrate_overhead(runs, iterations, cost, calibration, works=works)


def exchange_cost_from_sweep(runs: pd.DataFrame, iterations: pd.DataFrame) -> ExchangeCost:
    """:meth:`ExchangeCost.fit` on :func:`exchange_samples` of the sweep's bound
    synchronous runs; tables without the phase times give a free exchange (``fitted``
    empty)."""
    needed = {"t_bottom", "t_completed", "wait_s", "rank", "iteration"}
    if needed <= set(iterations.columns):
        samples = exchange_samples(iterations, runs)
        if not samples.empty:
            return ExchangeCost.fit(samples)
    return ExchangeCost(fitted=(), rows=0)


_DELAY_FIELDS = ("size_s", "p", "distribution", "sigma", "seed", "mode")


def delay_specs(
    runs: pd.DataFrame, kinds: Sequence[str] = ("rotating", "random")
) -> dict[str, DelaySpec]:
    """Workload id -> the delay schedule its runs used (``config.delay.*``), for the
    non-stress workloads whose delay kind is one of ``kinds``, in the runs' order."""
    keyed = _with_keys(runs)
    out: dict[str, DelaySpec] = {}
    for workload, df in keyed[~keyed["stress"]].groupby("workload", sort=False):
        row = df.iloc[0]
        kind = str(row.get("config.delay.kind", "none"))
        if kind not in kinds:
            continue
        spec: dict[str, Any] = {"kind": kind}
        for name in _DELAY_FIELDS:
            value = row.get(f"config.delay.{name}")
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if value is pd.NA:
                continue
            spec[name] = int(value) if name == "seed" else value
        out[str(workload)] = DelaySpec.from_dict(spec)
    return out
