"""Judging one workload and lag bound of a claim by its metric: the ratio, its interval, the
verdict.

The metrics (what the protocol's ``metric`` keys mean):


``throughput_ratio``
    Throughput of the series ``bls L=<lag bound>`` over the workload's *best synchronous*
    series (of the protocol's synchronous series, the one with the highest median
    throughput over its repetitions in that workload), paired by repetition.
``ideal_fraction``
    That ratio divided, repetition by repetition, by the ideal speedup the theory gives
    for the judged BLS run's own logged per-rank work (``ideal_speedup`` of the runs table,
    :mod:`bls_dlrm.theory`): the share of the possible gain the run realised.
``prediction_ratio``
    The speedup :mod:`bls_dlrm.analysis.simulate` predicts for ``bls L=<lag bound>`` over the best
    synchronous series (from that series' logged per-rank work, per-series overheads
    calibrated on the entry's ``calibration`` workload, the exchange cost fitted on the
    sweep's synchronous runs) over the measured speedup, paired by repetition: the
    model's prediction error plus one.
``checksums_identical``
    Within a workload, every run (every series and repetition) has the same predictions
    checksum; with the per-iteration table, every iteration agrees across runs too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bls_dlrm.analysis import stats
from bls_dlrm.analysis.compare import REPETITION_COLUMNS, best_synchronous
from bls_dlrm.analysis.workloads import annotate_runs
from bls_dlrm.series import series_label

SUPPORTED = stats.SUPPORTED


NOT_SUPPORTED = stats.NOT_SUPPORTED


INCONCLUSIVE = stats.INCONCLUSIVE


NOT_TESTED = "not tested here"


NA = "n/a"


#: The role of a serving launch's synchronous series in the serving tables.
SYNC_ROLE = "sync"


@dataclass
class Judgement:
    """One workload and lag bound of a claim: the interval and its verdict."""

    workload: str
    series: str
    baseline: str
    repetitions: int
    point: float
    low: float
    high: float
    verdict: str
    ideal: float = math.nan
    note: str = ""


def _annotated(runs: pd.DataFrame) -> pd.DataFrame:
    return runs if "workload" in runs.columns or runs.empty else annotate_runs(runs)


#: The columns judging reads (the rest of a wide runs table only slows selection down).
_JUDGED_COLUMNS = (
    "run_id",
    "workload",
    "scenario",
    "scenario_class",
    "series",
    "collective",
    "lag_bound",
    "ideal_speedup",
    "predicted_speedup",
    "predictions_checksum",
    *REPETITION_COLUMNS,
)


def _slim(runs: pd.DataFrame, protocol: Mapping[str, Any]) -> pd.DataFrame:
    runs = _annotated(runs)
    keep = [*_JUDGED_COLUMNS, protocol["synchronous"]["metric"]]
    return runs[[c for c in runs.columns if c in keep]]


def _workloads(runs: pd.DataFrame, names: Any) -> list[str]:
    """Workload ids judged for a protocol entry: its names matched against the workload id
    or scenario name (each match judged), or every workload for ``all``."""
    if runs.empty:
        return [] if names == "all" else list(names)
    present = list(dict.fromkeys(runs["workload"]))
    if names == "all":
        return present
    out: list[str] = []
    for name in names:
        hits = [
            w
            for w in present
            if w == name or (runs.loc[runs["workload"] == w, "scenario"] == name).any()
        ]
        out.extend(hits or [name])  # a name with no runs stays, to be reported as missing
    return list(dict.fromkeys(out))


def _repetition_column(runs: pd.DataFrame) -> str | None:
    return next((c for c in REPETITION_COLUMNS if c in runs.columns), None)


def _best_sync(df: pd.DataFrame, protocol: Mapping[str, Any]) -> str | None:
    sync = protocol["synchronous"]
    return best_synchronous(df, sync["series"], sync["metric"])


def _per_rep(df: pd.DataFrame, rep: str | None, column: str) -> pd.Series:
    if rep is None:
        return df[column].astype("float64").reset_index(drop=True)
    return df.groupby(rep)[column].median().astype("float64")


def _judge_ratio(
    runs: pd.DataFrame,
    workload: str,
    lag: int,
    entry: Mapping[str, Any],
    protocol: Mapping[str, Any],
) -> Judgement:
    st = protocol["statistics"]
    series = series_label("bls", lag)
    df = runs[runs["workload"] == workload] if not runs.empty else runs
    empty = Judgement(workload, series, NA, 0, math.nan, math.nan, math.nan, NOT_TESTED)
    if df.empty:
        empty.note = "no runs"
        return empty
    base = _best_sync(df, protocol)
    target = df[df["series"] == series]
    if base is None or target.empty:
        empty.note = f"no {series} run" if target.empty else "no synchronous run"
        empty.baseline = base or NA
        return empty
    baseline = df[df["series"] == base]
    metric = protocol["synchronous"]["metric"]
    rep = _repetition_column(df)
    paired = bool(st["paired"]) and rep is not None
    num = _per_rep(target, rep if paired else None, metric)
    den = _per_rep(baseline, rep if paired else None, metric)
    if entry["metric"] == "prediction_ratio":
        return _judge_prediction(target, base, num, den, rep if paired else None, entry, st)
    ideal = (
        _per_rep(target, rep if paired else None, "ideal_speedup")
        if ("ideal_speedup" in target.columns)
        else pd.Series(dtype="float64")
    )
    note = "" if paired else "unpaired (no repetition column)"
    if paired:
        common = num.index.intersection(den.index)
        if entry["metric"] == "ideal_fraction":
            common = common.intersection(ideal.dropna().index)
        num, den = num.loc[common], den.loc[common]
        ideal = ideal.loc[common] if entry["metric"] == "ideal_fraction" else ideal
    if entry["metric"] == "ideal_fraction":
        ideal = ideal.dropna()
        if ideal.empty:
            empty.baseline = base
            empty.note = "no ideal speedup in the runs table"
            return empty
        # paired: each repetition's own ideal; unpaired: the median ideal of the series
        den = den * ideal.to_numpy() if paired else den * float(ideal.median())
    n = int(min(len(num), len(den)))
    if n == 0:
        empty.baseline = base
        empty.note = "no repetition with both series"
        return empty
    point, low, high, verdict, note = _interval(num, den, paired, n, note, entry, st)
    return Judgement(
        workload=workload,
        series=series,
        baseline=base,
        repetitions=n,
        point=point,
        low=low,
        high=high,
        verdict=verdict,
        ideal=float(ideal.median()) if len(ideal) else math.nan,
        note=note,
    )


def _judge_prediction(target, base, num, den, rep, entry, st) -> Judgement:
    """``prediction_ratio``: predicted / measured speedup, per repetition (paired)."""
    series = str(target["series"].iloc[0])
    workload = str(target["workload"].iloc[0])
    pred = (
        _per_rep(target, rep, "predicted_speedup").dropna()
        if "predicted_speedup" in target.columns
        else pd.Series(dtype="float64")
    )
    if rep is not None:
        common = num.index.intersection(den.index).intersection(pred.index)
        num, den, pred = num.loc[common], den.loc[common], pred.loc[common]
    n = int(min(len(num), len(den), len(pred)))
    if n == 0:
        return Judgement(
            workload, series, base, 0, math.nan, math.nan, math.nan, NOT_TESTED,
            note="no simulated speedup (iterations table or calibration runs missing)",
        )  # fmt: skip
    # predicted / (bls / base) = (predicted * base) / bls
    point, low, high, verdict, note = _interval(
        den.iloc[:n] * pred.to_numpy()[:n], num.iloc[:n], rep is not None, n, "", entry, st
    )
    return Judgement(workload, series, base, n, point, low, high, verdict, note=note)


def attach_predictions(
    runs: pd.DataFrame, iterations: pd.DataFrame | None, protocol: Mapping[str, Any]
) -> pd.DataFrame:
    """``runs`` with ``predicted_speedup`` on each BLS run the protocol's
    ``prediction_ratio`` entries judge (:func:`bls_dlrm.analysis.simulate.validation_table`, one
    calibration per entry's ``calibration`` workload); unchanged if none or no iterations."""
    from bls_dlrm.analysis import simulate

    entries = [
        e
        for g in ("claims", "checks")
        for e in protocol.get(g) or ()
        if e.get("metric") == "prediction_ratio"
    ]
    if not entries or iterations is None or runs.empty:
        return runs
    out = runs.copy()
    out["predicted_speedup"] = math.nan
    works = simulate.work_matrices(iterations)
    sync = list(protocol["synchronous"]["series"])
    cost = simulate.exchange_cost_from_sweep(out, iterations)
    for calibration in dict.fromkeys(str(e["calibration"]) for e in entries):
        table = simulate.validation_table(
            out, iterations, cost, calibration=calibration, sync_series=sync, works=works
        )
        if table.empty:
            continue
        predicted = table.set_index(["run_id", "series"])["predicted_speedup"]
        keys = pd.MultiIndex.from_arrays([out["run_id"], out["series"]])
        hit = keys.isin(predicted.index)
        out.loc[hit, "predicted_speedup"] = predicted.reindex(keys[hit]).to_numpy()
    return out


#: Iterations-table columns the simulation reads.
SIMULATION_COLUMNS = (
    "run_id", "collective", "lag_bound", "rank", "iteration", "warmup",
    "compute_s", "delay_s", "wait_s", "t_posted", "t_bottom", "t_completed",
)  # fmt: skip


def _interval(num, den, paired: bool, n: int, note: str, entry, st):
    """The ratio's bootstrap interval and its verdict: ``(point, low, high, verdict, note)``.

    Fewer repetitions than the entry's (else the protocol's) minimum make the verdict at
    best inconclusive, said in the note."""
    point, low, high = stats.ratio_ci(
        num.to_numpy(),
        den.to_numpy(),
        paired=paired,
        confidence=float(st["confidence"]),
        n_resamples=int(st["n_resamples"]),
        seed=int(st["seed"]),
    )
    verdict = stats.verdict(low, high, entry["threshold"], rtol=float(st["rtol"]))
    least = int(entry.get("min_repetitions", st["min_repetitions"]))
    if n < least and verdict != INCONCLUSIVE:
        note = ", ".join(x for x in (note, f"{n} of {least} repetitions") if x)
        verdict = INCONCLUSIVE
    return point, low, high, verdict, note


def _judge_serving(
    serving: Mapping[str, pd.DataFrame] | None,
    workload: str,
    lag: int,
    entry: Mapping[str, Any],
    protocol: Mapping[str, Any],
) -> Judgement:
    """A serving metric of ``bls L=<lag>`` against the synchronous series of the same
    launch, paired by repetition.

    ``capacity_ratio``: capacity at the SLO, BLS / sync. A capacity whose search found no
    passing rate counts as its lowest failing probe (an upper bound): the note says so and
    the verdict is at best inconclusive. ``p99_gain``: p99 query latency at the entry's
    ``load`` (matched within the protocol's rtol), sync / BLS.
    """
    st = protocol["statistics"]
    series = series_label("bls", lag)
    empty = Judgement(workload, series, SYNC_ROLE, 0, math.nan, math.nan, math.nan, NOT_TESTED)
    metric = entry["metric"]
    table = (serving or {}).get("capacity" if metric == "capacity_ratio" else "serving")
    if table is None or table.empty:
        empty.note = "no serving runs in this sweep"
        return empty
    df = table[table["workload"] == workload]
    if metric == "capacity_ratio":
        value = df["capacity_qps"].astype("float64")
        below = df.get("below_qps", pd.Series(math.nan, index=df.index)).astype("float64")
        df = df.assign(value=value.fillna(below), bounded=value.isna() & below.notna())
    else:
        load = float(entry["load"])
        df = df[(df["load"] - load).abs() <= float(st["rtol"]) * abs(load)]
        df = df.assign(value=df["p99_ms"], bounded=False)
    if df.empty:
        empty.note = "no serving runs of this workload" + (
            f" at load {entry['load']:g}" if metric == "p99_gain" else ""
        )
        return empty
    wide = df.pivot_table(index="repetition", columns="role", values="value")
    if series not in wide.columns or SYNC_ROLE not in wide.columns:
        empty.note = f"no {series} or no synchronous serving run"
        return empty
    pair = wide[[series, SYNC_ROLE]].dropna()
    pair = pair[(pair > 0).all(axis=1)]
    judged = df[df["role"].isin([series, SYNC_ROLE]) & df["repetition"].isin(pair.index)]
    bounded = int(judged["bounded"].sum())
    # A capacity whose search passed no probe is only an upper bound: a ratio built on one
    # is a bound too, so it decides nothing.
    note = f"{bounded} capacities are upper bounds (no probe passed)" if bounded else ""
    refs = sorted(set(df["reference"].dropna()))
    base = f"sync ({', '.join(refs)})" if refs else SYNC_ROLE
    if pair.empty:
        empty.baseline, empty.note = base, "no repetition with both series"
        return empty
    num, den = pair[series], pair[SYNC_ROLE]
    if metric == "p99_gain":
        num, den = den, num
    point, low, high, verdict, note = _interval(num, den, True, len(pair), note, entry, st)
    if bounded:
        verdict = INCONCLUSIVE
    return Judgement(workload, series, base, len(pair), point, low, high, verdict, note=note)


def _fmt(value: Any, digits: int = 2) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return NA
    return NA if not math.isfinite(v) else f"{v:.{digits}f}"


def _stress(runs: pd.DataFrame, protocol: Mapping[str, Any]) -> list[str]:
    named = set(_workloads(runs, protocol.get("stress_workloads") or []))
    if "scenario_class" in runs.columns:
        named |= set(runs.loc[runs["scenario_class"] == "stress", "workload"])
    return sorted(named & set(runs["workload"]))
