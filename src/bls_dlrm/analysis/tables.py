"""Run logs -> tidy Parquet tables: one row per (rank, iteration), per iteration, per run.

The figures, the claims table and the notebooks read these tables, never the logs, so every
derived quantity is defined once, here:

``iterations`` (:func:`iterations_table`), one row per rank and measured iteration
    run_id, rank, host, iteration, warmup, samples, the six phase times ``t_start`` ..
    ``t_done``, ``latency_s`` (``t_done - t_start`` on that rank), wait_s, delay_s,
    compute_s, lag, checksum, ``clock_offset_s`` and ``clock_error_s`` (see below), then
    the run parameters.

``per_iteration`` (:func:`per_iteration_table`), one row per measured iteration of a run
    ``latency_s`` = max over ranks of ``t_done - t_start`` (the paper's per-iteration
    latency); ``span_s`` = last ``t_done`` - first ``t_start`` over ranks; ``start_spread_s``
    and ``end_spread_s`` (how far apart ranks started and finished it); the extremes
    ``t_start_min/max``, ``t_done_min/max``; samples (all ranks); ``wait_max_s``,
    ``wait_sum_s``, ``delay_max_s``, ``delay_sum_s``, ``compute_max_s``, ``lag_max``,
    ``blocked_ranks`` (ranks with a wait > 0); ``iteration_time_s`` = this iteration's last
    ``t_done`` - the previous one's (the first: - its first ``t_start``), the time per
    iteration whose mean is makespan / iterations; ``checksum``: SHA-256 of the ranks'
    prediction checksums in rank order. Runs of one workload must agree on it for every
    collective and lag bound: that is the bit-identical-predictions check.

``runs`` (:func:`runs_table`), one row per run
    ``makespan_s`` = max over ranks of the last ``t_done`` - min over ranks of the first
    measured ``t_start``; ``throughput_sps`` = global measured samples / makespan;
    ``latency_p50_s``, ``latency_p95_s``, ``latency_p99_s`` (linear interpolation between
    order statistics, numpy's default), ``latency_mean_s``, ``latency_max_s`` over the
    per-iteration latencies; ``iteration_time_mean_s``, ``iteration_time_p50_s``,
    ``iteration_time_p95_s``, ``iteration_time_p99_s`` over the iteration times;
    ``wait_s``, ``delay_s``, ``compute_s`` (sums over ranks and measured iterations),
    ``wait_share`` = wait / (wait + compute + delay) and
    ``delay_share`` likewise; ``lag_max``, ``lag_mean``; the bound from
    :mod:`bls_dlrm.theory` on the logged work ``w[r, i] = compute_s + delay_s``:
    ``ideal_makespan_s`` (under the run's lag bound; the synchronous baselines count as
    ``L = 0``), ``ideal_makespan_sync_s`` (``L = 0``), ``ideal_speedup`` (sync / ideal) and
    ``ideal_efficiency`` (ideal makespan / measured makespan: 1.0 means the run attained
    the bound); the per-rank work spread: for each measured iteration the coefficient of
    variation across ranks of ``w[r, i]`` (population std / mean), its mean over the
    iterations as ``work_cv`` and its percentiles ``work_cv_p50``, ``work_cv_p99`` (0 when
    every rank works equally long; what skew and delays create);
    ``predictions_checksum`` (SHA-256 over the per-iteration checksums);
    counts (``iterations`` with warm-up, ``measured_iterations``, ``samples``); provenance
    (``run_dir``, ``hosts``, ``git_rev``, ``started_utc``, ``versions.*``); ``clock_error_s``,
    the largest bound on the clock alignment of any rank, and ``clock_drift_s``, the largest
    change of a host's offset between the start and the end of the run (both 0 on one
    host); placement and
    order from the headers: ``binding`` (as logged, ``"mixed"`` if ranks differ),
    ``cores_per_rank`` (fewest over ranks), ``series_order`` (the launch's series labels
    joined by ``|``), ``series_index``, ``shuffle_seed`` (null for logs without them).

Run parameters, on every row of every table: ``run_id``, ``collective``, ``lag_bound``
(nullable integer; null for the synchronous baselines), ``world_size``, and the header's
resolved config flattened to ``config.<key>.<subkey>`` columns (for example
``config.delay.kind``, ``config.batch_size``). Nested dicts are flattened with dots;
lists become JSON strings so they can be grouped on; the ``config.`` prefix keeps config
keys such as ``warmup`` or ``iterations`` from colliding with measured columns.

Times are seconds, all on rank 0's monotonic clock. Ranks of rank 0's host read that clock
(offset 0, error 0), so on one host cross-rank quantities (makespan, spreads) are exact.
The times of a rank on another host are moved onto it with the offsets measured through MPI
ping-pong right before and right after the run (:mod:`bls_dlrm.logs.clocks`; header and footer
of each log): each host takes, at either end, the measurement of its ranks with the
smallest error bound, and the offset of an iteration is interpolated linearly between the
two in that host's own time at the iteration's ``t_start`` (so a drift between the clocks
during the run is followed, and times of one host stay exactly as far apart as logged).
``clock_offset_s`` is that offset (the rank's clock minus rank 0's; the table's times are
the logged ones minus it) and ``clock_error_s`` bounds its error (the larger of the two
measurements' bounds, half a round trip each): cross-host differences of times are exact
to within the sum of the two ranks' bounds. Logs made before these measurements existed
align only ranks of one host; a run of them spanning hosts leaves each host on its own
clock (``clock_error_s`` NaN) and warns. Wall clocks play no part (``started_utc`` is
provenance only).

"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from bls_dlrm.logs.reading import RunLog
from bls_dlrm.logs.records import ClockSync

TABLE_NAMES = ("iterations", "per_iteration", "runs")


TIME_COLUMNS = ("t_start", "t_lookup", "t_posted", "t_bottom", "t_completed", "t_done")


_RUN_KEY = ("run_id", "collective", "lag_bound", "world_size")


class Tables(NamedTuple):
    """The three tidy tables built from a set of runs."""

    iterations: pd.DataFrame
    per_iteration: pd.DataFrame
    runs: pd.DataFrame


def flatten_config(config: Mapping[str, Any], prefix: str = "config") -> dict[str, Any]:
    """Nested config -> flat ``{"prefix.a.b": value}`` with scalar values.

    Lists and tuples become compact JSON strings: they stay readable, survive Parquet with
    any content and can be grouped on. Empty dicts add no column.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, name))
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(value, separators=(",", ":"), sort_keys=True)
        else:
            flat[name] = value
    return flat


def run_parameters(run: RunLog) -> dict[str, Any]:
    """The columns that say which run a row belongs to and how it was configured."""
    header = run.header
    return {
        "run_id": header.run_id,
        "collective": header.collective,
        "lag_bound": header.lag_bound,
        "world_size": header.world_size,
        **flatten_config(header.config),
    }


def _effective_lag_bound(run: RunLog) -> int | None:
    """The lag bound the theory should assume: the baselines are synchronous (``L = 0``)."""
    return run.lag_bound if run.collective == "bls" else 0


class _Alignment(NamedTuple):
    """How one rank's times go onto rank 0's clock: ``t - offset(t)``, within ``error``."""

    start: ClockSync | None
    end: ClockSync | None
    error: float

    def offset(self, t: float) -> float:
        """The offset at this rank's time ``t``: linear between the two measurements."""
        start, end = self.start, self.end
        if start is None or end is None:
            known = start or end
            return 0.0 if known is None else known.offset_s
        if end.t <= start.t:
            return start.offset_s
        share = min(max((t - start.t) / (end.t - start.t), 0.0), 1.0)
        return start.offset_s + share * (end.offset_s - start.offset_s)


_SAME_CLOCK = _Alignment(None, None, 0.0)


def _best(syncs: Iterable[ClockSync | None]) -> ClockSync | None:
    """The measurement with the smallest error bound (None if there is none)."""
    return min((s for s in syncs if s is not None), key=lambda s: s.error_s, default=None)


def _clock_alignment(run: RunLog, warn: bool = True) -> list[_Alignment]:
    """Per rank: how its times go onto rank 0's clock (module docstring)."""
    hosts = [log.header.host for log in run]
    per_host: dict[str, _Alignment] = {hosts[0]: _SAME_CLOCK}
    unaligned: list[str] = []
    for host in dict.fromkeys(hosts[1:]):
        if host in per_host:
            continue
        logs = [log for log in run if log.header.host == host]
        start = _best(log.header.clock_sync for log in logs)
        end = _best(log.footer.clock_sync for log in logs)
        if start is None and end is None:
            unaligned.append(host)
            per_host[host] = _Alignment(None, None, math.nan)
            continue
        error = max(s.error_s for s in (start, end) if s is not None)
        per_host[host] = _Alignment(start, end, error)
    if unaligned and warn:
        warnings.warn(
            f"{run.run_dir}: the run spans hosts but the logs of {', '.join(unaligned)} carry "
            "no clock offsets (made before they were measured): their times stay on their "
            "own clocks",
            stacklevel=3,
        )
    return [per_host[h] for h in hosts]


def _broadcast(df: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """Add constant run-parameter columns to every row, with a nullable int lag bound."""
    n = len(df)
    dtypes = _param_dtypes([params])
    columns: dict[str, Any] = {}
    for key, value in params.items():
        if key in dtypes:
            columns[key] = pd.array([value] * n, dtype=dtypes[key])
        else:
            columns[key] = [value] * n
    extra = pd.DataFrame(columns, index=df.index)
    return pd.concat([df, extra], axis=1)


def iterations_table(run: RunLog, *, include_warmup: bool = False) -> pd.DataFrame:
    """One row per (rank, iteration): every logged iteration field plus the run parameters.

    Warm-up iterations are left out unless ``include_warmup`` (for timeline plots); every
    statistic in the other tables is over measured iterations only.
    """
    alignment = _clock_alignment(run)
    rows = [
        (log.header.rank, log.header.host, align.offset(it.t_start), it, align.error)
        for log, align in zip(run, alignment, strict=True)
        for it in log.iterations
        if include_warmup or not it.warmup
    ]
    n = len(rows)
    columns: dict[str, pd.Series] = {
        "run_id": pd.Series([run.run_id] * n, dtype="str"),
        "rank": pd.Series([r[0] for r in rows], dtype="int64"),
        "host": pd.Series([r[1] for r in rows], dtype="str"),
        "iteration": pd.Series([r[3].iteration for r in rows], dtype="int64"),
        "warmup": pd.Series([r[3].warmup for r in rows], dtype="bool"),
        "samples": pd.Series([r[3].samples for r in rows], dtype="int64"),
    }
    for name in TIME_COLUMNS:
        columns[name] = pd.Series(
            [getattr(it, name) - off for _, _, off, it, _ in rows], dtype="float64"
        )
    # From the logged times: one rank's durations never pass through another clock.
    columns["latency_s"] = pd.Series(
        [it.t_done - it.t_start for _, _, _, it, _ in rows], dtype="float64"
    )
    for name in ("wait_s", "delay_s", "compute_s"):
        columns[name] = pd.Series([getattr(r[3], name) for r in rows], dtype="float64")
    columns["lag"] = pd.Series([r[3].lag for r in rows], dtype="int64")
    columns["checksum"] = pd.Series([r[3].checksum for r in rows], dtype="str")
    columns["clock_offset_s"] = pd.Series([r[2] for r in rows], dtype="float64")
    columns["clock_error_s"] = pd.Series([r[4] for r in rows], dtype="float64")
    # Open-loop runs only (bls-dlrm serve); NaN / <NA> in closed-loop runs.
    columns["t_close"] = pd.Series(
        [np.nan if it.t_close is None else it.t_close - off for _, _, off, it, _ in rows],
        dtype="float64",
    )
    columns["batch_samples"] = pd.Series([r[3].batch_samples for r in rows], dtype="Int64")
    df = pd.DataFrame(columns)
    params = run_parameters(run)
    params.pop("run_id")
    return _broadcast(df, params)


def _combine_checksums(checksums: Iterable[str]) -> str:
    """One digest for several in order: equal iff every part is equal."""
    return hashlib.sha256(",".join(checksums).encode("ascii")).hexdigest()


def _per_iteration(iterations: pd.DataFrame) -> pd.DataFrame:
    """Per-iteration rows from an iterations table (of one or several runs)."""
    df = iterations[~iterations["warmup"]].sort_values(["run_id", "iteration", "rank"])
    df = df.assign(blocked=(df["wait_s"] > 0).astype("int64"))
    grouped = df.groupby(["run_id", "iteration"], sort=False)
    out = grouped.agg(
        samples=("samples", "sum"),
        latency_s=("latency_s", "max"),
        t_start_min=("t_start", "min"),
        t_start_max=("t_start", "max"),
        t_done_min=("t_done", "min"),
        t_done_max=("t_done", "max"),
        wait_max_s=("wait_s", "max"),
        wait_sum_s=("wait_s", "sum"),
        delay_max_s=("delay_s", "max"),
        delay_sum_s=("delay_s", "sum"),
        compute_max_s=("compute_s", "max"),
        lag_max=("lag", "max"),
        blocked_ranks=("blocked", "sum"),
    ).reset_index()
    # Rows are sorted by (run, iteration, rank), so each group is a consecutive run of rows
    # in the order groupby(sort=False) lists them; plain Python is much faster here than a
    # per-group pandas callback.
    keyed = zip(
        zip(df["run_id"].tolist(), df["iteration"].tolist(), strict=True),
        df["checksum"].tolist(),
        strict=True,
    )
    out["checksum"] = [
        _combine_checksums(c for _, c in group)
        for _, group in itertools.groupby(keyed, key=lambda kv: kv[0])
    ]
    # Iteration time: how long after the previous iteration this one was done on every
    # rank (the first measured one: from its earliest start). Its mean is makespan /
    # iterations, the reference DLRM's "ms/it"; its tail shows how delays reach the output.
    previous = out.groupby("run_id", sort=False)["t_done_max"].shift()
    out["iteration_time_s"] = (out["t_done_max"] - previous).fillna(
        out["t_done_max"] - out["t_start_min"]
    )
    out.insert(4, "span_s", out["t_done_max"] - out["t_start_min"])
    out.insert(5, "start_spread_s", out["t_start_max"] - out["t_start_min"])
    out.insert(6, "end_spread_s", out["t_done_max"] - out["t_done_min"])
    param_cols = [c for c in iterations.columns if c in _RUN_KEY or c.startswith("config.")]
    params = df[param_cols].drop_duplicates("run_id")
    out = out.merge(params, on="run_id", how="left", validate="many_to_one")
    return out


def per_iteration_table(run: RunLog) -> pd.DataFrame:
    """One row per measured iteration of ``run`` (columns in the module docstring)."""
    return _per_iteration(iterations_table(run))


def _stats(name: str, values: np.ndarray) -> dict[str, float]:
    """Mean and p50/p95/p99 of ``values`` as ``{name}_mean_s``, ``{name}_p50_s``, ..."""
    if not len(values):
        return {f"{name}_{k}_s": math.nan for k in ("mean", "p50", "p95", "p99")}
    p50, p95, p99 = (float(x) for x in np.percentile(values, [50, 95, 99]))
    return {
        f"{name}_mean_s": float(values.mean()),
        f"{name}_p50_s": p50,
        f"{name}_p95_s": p95,
        f"{name}_p99_s": p99,
    }


def _run_row(run: RunLog, iterations: pd.DataFrame, per_iteration: pd.DataFrame) -> dict[str, Any]:
    """Every per-run statistic, from the run's own iterations and per-iteration rows."""
    # Imported here so that reading logs and building the other tables never needs it.
    from bls_dlrm import theory

    measured = per_iteration["latency_s"].to_numpy(dtype=np.float64)
    interval = per_iteration["iteration_time_s"].to_numpy(dtype=np.float64)
    samples = int(iterations["samples"].sum())
    if len(iterations):
        makespan = float(iterations["t_done"].max() - iterations["t_start"].min())
    else:
        makespan = 0.0
    wait = float(iterations["wait_s"].sum())
    delay = float(iterations["delay_s"].sum())
    compute = float(iterations["compute_s"].sum())
    busy = wait + delay + compute
    if len(measured):
        p50, p95, p99 = (float(x) for x in np.percentile(measured, [50, 95, 99]))
        lat_mean, lat_max = float(measured.mean()), float(measured.max())
    else:
        p50 = p95 = p99 = lat_mean = lat_max = math.nan

    work_df = iterations.assign(work=iterations["compute_s"] + iterations["delay_s"])
    work = (
        work_df.pivot(index="rank", columns="iteration", values="work")
        .sort_index(axis=0)
        .sort_index(axis=1)
        .to_numpy(dtype=np.float64)
    )
    if work.size == 0:
        work = np.zeros((run.world_size, 0))
    ideal = theory.ideal_makespan(work, _effective_lag_bound(run))
    sync = theory.makespan_sync(work)
    cv = _work_cv(work)

    header = run.header
    row: dict[str, Any] = {
        "run_id": header.run_id,
        "collective": header.collective,
        "lag_bound": header.lag_bound,
        "world_size": header.world_size,
        "iterations": run.ranks[0].footer.iterations,
        "measured_iterations": len(per_iteration),
        "samples": samples,
        "makespan_s": makespan,
        "throughput_sps": samples / makespan if makespan > 0 else math.nan,
        "latency_mean_s": lat_mean,
        "latency_p50_s": p50,
        "latency_p95_s": p95,
        "latency_p99_s": p99,
        "latency_max_s": lat_max,
        **_stats("iteration_time", interval),
        "wait_s": wait,
        "delay_s": delay,
        "compute_s": compute,
        "wait_share": wait / busy if busy > 0 else math.nan,
        "delay_share": delay / busy if busy > 0 else math.nan,
        "lag_max": int(iterations["lag"].max()) if len(iterations) else 0,
        "lag_mean": float(iterations["lag"].mean()) if len(iterations) else math.nan,
        "ideal_makespan_s": ideal,
        "ideal_makespan_sync_s": sync,
        "ideal_speedup": sync / ideal if ideal > 0 else math.nan,
        "ideal_efficiency": ideal / makespan if makespan > 0 else math.nan,
        "work_cv": float(cv.mean()) if len(cv) else math.nan,
        "work_cv_p50": float(np.percentile(cv, 50)) if len(cv) else math.nan,
        "work_cv_p99": float(np.percentile(cv, 99)) if len(cv) else math.nan,
        **_placement(run),
        "predictions_checksum": _combine_checksums(per_iteration["checksum"]),
        "run_dir": str(run.run_dir),
        "hosts": len({log.header.host for log in run}),
        "clock_error_s": float(iterations["clock_error_s"].max()) if len(iterations) else 0.0,
        "clock_drift_s": _clock_drift(run),
        "git_rev": header.git_rev,
        "started_utc": min(log.header.started_utc for log in run),
    }
    row.update(flatten_config(header.versions, "versions"))
    row.update(flatten_config(header.config))
    return row


def _clock_drift(run: RunLog) -> float:
    """The largest change of a host's offset to rank 0's clock from the run's start to its
    end (0 on one host, NaN if some host has not both measurements)."""
    drifts = [0.0]
    for align in _clock_alignment(run, warn=False):
        if align is _SAME_CLOCK:
            continue
        if align.start is None or align.end is None:
            return math.nan
        drifts.append(abs(align.end.offset_s - align.start.offset_s))
    return max(drifts)


def _work_cv(work: np.ndarray) -> np.ndarray:
    """Per iteration: std / mean across ranks of the work (population std, ``ddof=0``).

    ``work`` is ranks x iterations. Iterations without any work (mean 0) are left out: their
    spread is undefined, not zero.
    """
    if work.size == 0:
        return np.zeros(0)
    mean = work.mean(axis=0)
    std = work.std(axis=0)
    keep = mean > 0
    return std[keep] / mean[keep]


def _placement(run: RunLog) -> dict[str, Any]:
    """Where the run's ranks ran and its place in its launch, from the headers.

    ``binding`` as logged when every rank logged the same (``"mixed"`` otherwise, null if
    none logged it); ``cores_per_rank`` the fewest any rank had; ``series_order`` the
    launch's series labels joined by ``|``; ``series_index`` and ``shuffle_seed`` as logged
    (rank 0). Older logs without these fields give nulls.
    """
    headers = [log.header for log in run]
    bindings = {h.binding for h in headers}
    if len(bindings) > 1:
        binding: str | None = "mixed"
    else:
        binding = bindings.pop()
    cores = [h.cores_per_rank for h in headers if h.cores_per_rank is not None]
    order = headers[0].series_order
    return {
        "binding": binding,
        "cores_per_rank": min(cores) if cores else None,
        "series_order": None if order is None else "|".join(order),
        "series_index": headers[0].series_index,
        "shuffle_seed": headers[0].shuffle_seed,
    }


_NULLABLE_INT_COLUMNS = ("cores_per_rank", "series_index", "shuffle_seed")


def _param_dtypes(params: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Column dtypes for run parameters, decided from their Python values over all runs.

    Decided from the values rather than from the frames because a key missing from some
    runs (or null in them) would otherwise turn an integer column into floats; nullable
    ``Int64``/``boolean`` keep ``config.pooling_k == 4`` exact. Mixed types are left alone
    (and stored as strings when written).
    """
    kinds: dict[str, set[type]] = {}
    for row in params:
        for key, value in row.items():
            seen = kinds.setdefault(key, set())
            if value is not None:
                seen.add(type(value))
    dtypes: dict[str, str] = {}
    for key, seen in kinds.items():
        if not seen or seen == {int}:
            dtypes[key] = "Int64"
        elif seen == {bool}:
            dtypes[key] = "boolean"
        elif seen <= {int, float}:
            dtypes[key] = "float64"
    return dtypes


def _apply_dtypes(df: pd.DataFrame, dtypes: Mapping[str, str]) -> pd.DataFrame:
    for key, dtype in dtypes.items():
        if key in df.columns:
            df[key] = df[key].astype(dtype)
    return df


def _rows_param_dtypes(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Dtypes of the run-parameter columns (``lag_bound``, ``config.*``) of these run rows."""
    keys = {k for row in rows for k in row if k == "lag_bound" or k.startswith("config.")}
    return _param_dtypes([{k: row.get(k) for k in keys} for row in rows])


def _runs_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = _apply_dtypes(pd.DataFrame(rows), _rows_param_dtypes(rows))
    for name in _NULLABLE_INT_COLUMNS:  # null in older logs: keep the integers exact
        if name in df.columns:
            df[name] = df[name].astype("Int64")
    return df


def runs_table(runs: Iterable[RunLog]) -> pd.DataFrame:
    """One row per run: throughput, latency percentiles, shares, lag and the ideal bound."""
    rows = []
    for run in runs:
        it = iterations_table(run)
        rows.append(_run_row(run, it, _per_iteration(it)))
    return _runs_frame(rows)
