"""The paper's claims, judged on a sweep's tables by a protocol fixed before the runs.

    python -m bls_dlrm.analysis.claims --tables results/tables --protocol config/protocol.yaml \\
        --out results/claims.md --macros paper/macros.tex

What is judged comes only from ``config/protocol.yaml`` (validated against
``workflow/schemas/protocol.schema.yaml``): for each claim, the workloads, the metric, the
lag bound(s) of the BLS series and the threshold. This module holds no threshold, workload
name or lag bound of its own; it knows only how to compute each metric:

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

Each ratio carries a bootstrap interval over repetitions (:func:`bls_dlrm.analysis.stats.ratio_ci`,
the protocol's confidence, resamples and seed) and gets a verdict from the interval
(:func:`bls_dlrm.analysis.stats.verdict`): *supported*, *not supported*, *inconclusive*; *not
tested here* when the sweep lacks the runs, or when the protocol says a part is judged by
another experiment. A claim judged on several workloads or lag bounds is supported only if
every one is, not supported if any one is not, and inconclusive otherwise. Fewer
repetitions than the protocol's minimum make a verdict at best inconclusive.

The same numbers go into LaTeX macros (``paper/macros.tex``), so the paper quotes exactly
what ``results/claims.md`` says. Macro names: ``\\Claim<Macro><Field>`` with the protocol
entry's ``macro`` stem and fields ``Verdict``, ``Measured``, ``Point``, ``Low``, ``High``,
``Threshold``, ``Workloads``, ``Lag``, ``Repetitions`` (accuracy: ``Identical``,
``Workloads``, ``Runs``, ``Iterations``; a part not tested: ``Verdict``, ``Reason``);
``\\Machine*``, ``\\Version*``, ``\\Sweep*`` and ``\\Protocol*`` describe where and how.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from bls_dlrm.analysis import stats
from bls_dlrm.analysis.compare import REPETITION_COLUMNS, best_synchronous
from bls_dlrm.analysis.protocol import (
    RATIO_METRICS,
    SERVING_METRICS,
    ProtocolError,
    load_protocol,
)
from bls_dlrm.analysis.workloads import NO_DELAY_KINDS, annotate_runs, most_common
from bls_dlrm.paths import PROTOCOL
from bls_dlrm.series import series_label, series_sort_key

__all__ = [
    "INCONCLUSIVE",
    "NA",
    "NOT_SUPPORTED",
    "NOT_TESTED",
    "SUPPORTED",
    "Claim",
    "Judgement",
    "ProtocolError",
    "evaluate",
    "evaluate_checks",
    "load_protocol",
    "machine_info",
    "main",
    "render_macros",
    "render_markdown",
    "run_info",
    "sweep_info",
    "workload_table",
]

SUPPORTED = stats.SUPPORTED
NOT_SUPPORTED = stats.NOT_SUPPORTED
INCONCLUSIVE = stats.INCONCLUSIVE
NOT_TESTED = "not tested here"
NA = "n/a"
#: Verdicts from worst to best: a claim over several judgements takes the worst present.
_RANK = {NOT_SUPPORTED: 0, INCONCLUSIVE: 1, NOT_TESTED: 2, SUPPORTED: 3}


FIGURE_COMMAND = "snakemake --cores 2 figures/{name}.pdf"
CLAIMS_COMMAND = "snakemake --cores 2 results/claims.md"
#: The role of a serving launch's synchronous series in the serving tables.
SYNC_ROLE = "sync"


# --------------------------------------------------------------------------------------
# The protocol


# --------------------------------------------------------------------------------------
# What a claim says


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


@dataclass
class Claim:
    """One claim (or one part of it, or one check) and what this sweep says about it."""

    key: str
    part: str
    macro: str
    claim: str  # the protocol's summary
    words: str  # the paper's words
    figure: str
    command: str
    metric: str
    threshold: str
    measured: str
    verdict: str
    judgements: list[Judgement] = field(default_factory=list)
    details: pd.DataFrame | None = None
    numbers: dict[str, str] = field(default_factory=dict)  # macro field -> plain text

    @property
    def label(self) -> str:
        return f"({self.key})" + (f" {self.part}" if self.part else "")


def _fmt(value: Any, digits: int = 2) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return NA
    return NA if not math.isfinite(v) else f"{v:.{digits}f}"


def _ci_text(j: Judgement) -> str:
    if not math.isfinite(j.point):
        return NA
    return f"{_fmt(j.point)} [{_fmt(j.low)}, {_fmt(j.high)}]"


def combine(verdicts: Sequence[str]) -> str:
    """Several judgements -> one verdict: all supported, or the worst one, where untested
    parts beside tested ones leave the claim inconclusive."""
    if not verdicts or all(v == NOT_TESTED for v in verdicts):
        return NOT_TESTED
    worst = min(verdicts, key=_RANK.__getitem__)
    return INCONCLUSIVE if worst == NOT_TESTED else worst


# --------------------------------------------------------------------------------------
# Metrics


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


def _figure_command(entry: Mapping[str, Any]) -> str:
    fig = entry.get("figure")
    return FIGURE_COMMAND.format(name=fig) if fig else CLAIMS_COMMAND


def _base_claim(entry: Mapping[str, Any]) -> Claim:
    threshold = NA
    if "threshold" in entry:
        threshold = stats.describe_threshold(entry["threshold"], what="95% CI")
    elif entry.get("metric") == "checksums_identical":
        threshold = "one checksum per workload"
    return Claim(
        key=str(entry["key"]),
        part=str(entry.get("part", "")),
        macro=str(entry["macro"]),
        claim=str(entry["summary"]),
        words=" ".join(str(entry.get("words", "")).split()),
        figure=str(entry.get("figure") or NA),
        command=_figure_command(entry),
        metric=str(entry.get("metric", NA)),
        threshold=threshold,
        measured=NA,
        verdict=NOT_TESTED,
    )


def _margin(j: Judgement, threshold: Mapping[str, Any]) -> float:
    """How far the interval clears its threshold (negative: it does not): the judgement
    with the smallest margin is the one the paper's macros quote."""
    op = threshold["op"]
    if op == "within":
        return min(j.low - float(threshold["low"]), float(threshold["high"]) - j.high)
    if op in (">", ">="):
        return j.low - float(threshold["value"])
    return float(threshold["value"]) - j.high


def _ratio_claim(
    runs: pd.DataFrame,
    entry: Mapping[str, Any],
    protocol: Mapping,
    serving: Mapping[str, pd.DataFrame] | None = None,
) -> Claim:
    claim = _base_claim(entry)
    confidence = float(protocol["statistics"]["confidence"])
    claim.threshold = stats.describe_threshold(entry["threshold"], what=f"{confidence:.0%} CI")
    if entry["metric"] in SERVING_METRICS:
        names = list(entry["workloads"])
        js = [
            _judge_serving(serving, w, int(lag), entry, protocol)
            for w in names
            for lag in entry["lag_bounds"]
        ]
        if "load" in entry:
            claim.threshold += f" (at {entry['load']:g} x the synchronous capacity)"
    else:
        names = _workloads(runs, entry["workloads"])
        if entry["workloads"] == "all":  # stress workloads are never judged on timing
            stress = set(_stress(runs, protocol))
            names = [w for w in names if w not in stress]
        js = [
            _judge_ratio(runs, w, int(lag), entry, protocol)
            for w in names
            for lag in entry["lag_bounds"]
        ]
    claim.judgements = js
    claim.verdict = combine([j.verdict for j in js])
    parts = []
    for j in js:
        where = f"{j.workload}, {j.series}"
        if math.isfinite(j.point):
            extra = f"; n={j.repetitions} vs {j.baseline}"
            if entry["metric"] == "ideal_fraction":
                extra += f"; ideal x{_fmt(j.ideal)}"
            parts.append(f"{_ci_text(j)} ({where}{extra}{'; ' + j.note if j.note else ''})")
        else:
            parts.append(f"not measured ({where}: {j.note})")
    claim.measured = "; ".join(parts) if parts else "no judged workload"
    decisive = min(
        (j for j in js if math.isfinite(j.point)),
        key=lambda j: (_RANK[j.verdict], _margin(j, entry["threshold"])),
        default=None,
    )
    claim.numbers = {
        "Verdict": claim.verdict,
        "Measured": claim.measured,
        "Point": _fmt(decisive.point) if decisive else NA,
        "Low": _fmt(decisive.low) if decisive else NA,
        "High": _fmt(decisive.high) if decisive else NA,
        "Threshold": claim.threshold,
        "Workloads": ", ".join(dict.fromkeys(j.workload for j in js)) or NA,
        "Lag": ", ".join(str(x) for x in entry["lag_bounds"]),
        "Repetitions": str(min((j.repetitions for j in js), default=0)) if js else NA,
    }
    if entry["metric"] == "ideal_fraction":
        claim.numbers["Ideal"] = _fmt(decisive.ideal) if decisive else NA
    if js:
        claim.details = pd.DataFrame(
            [
                {
                    "workload": j.workload,
                    "series": j.series,
                    "best synchronous": j.baseline,
                    "n": j.repetitions,
                    "point": j.point,
                    "CI low": j.low,
                    "CI high": j.high,
                    **({"ideal": j.ideal} if entry["metric"] == "ideal_fraction" else {}),
                    "verdict": j.verdict,
                    "note": j.note,
                }
                for j in js
            ]
        )
    return claim


def _accuracy_claim(
    runs: pd.DataFrame,
    per_iteration: pd.DataFrame | None,
    entry: Mapping[str, Any],
    protocol: Mapping[str, Any],
) -> Claim:
    claim = _base_claim(entry)
    claim.numbers = {"Verdict": NOT_TESTED, "Identical": NA, "Workloads": NA}
    claim.numbers |= {"Runs": NA, "Iterations": NA}
    if runs.empty or "predictions_checksum" not in runs.columns:
        claim.measured = "no runs with prediction checksums"
        return claim
    names = _workloads(runs, entry["workloads"])
    per_it = None
    if per_iteration is not None and {"run_id", "checksum", "iteration"} <= set(
        per_iteration.columns
    ):
        wl = runs.set_index("run_id")["workload"]
        per_it = per_iteration.assign(workload=per_iteration["run_id"].map(wl))
    rows, verdicts = [], []
    n_iterations = 0
    for w in names:
        df = runs[runs["workload"] == w]
        sums = df["predictions_checksum"].dropna().astype(str)
        row = {
            "workload": w,
            "series": int(df["series"].nunique()) if len(df) else 0,
            "runs": len(sums),
            "checksums": int(sums.nunique()),
            "iterations": NA,
            "differing iterations": NA,
        }
        ok = row["checksums"] == 1
        if per_it is not None:
            its = per_it[per_it["workload"] == w]
            n_iterations += len(its)
            differing = int((its.groupby("iteration")["checksum"].nunique() > 1).sum())
            row["iterations"], row["differing iterations"] = len(its), differing
            ok = ok and differing == 0
        if len(sums) < 2:
            v = NOT_TESTED
        elif len(sums) < len(df):
            v = NOT_SUPPORTED  # a run without a checksum cannot be shown identical
        else:
            v = SUPPORTED if ok else NOT_SUPPORTED
        row["verdict"] = v
        rows.append(row)
        verdicts.append(v)
    claim.verdict = combine(verdicts)
    tested = [r for r in rows if r["verdict"] != NOT_TESTED]
    identical = sum(r["verdict"] == SUPPORTED for r in tested)
    n_runs = sum(r["runs"] for r in tested)
    claim.measured = (
        f"{identical} of {len(tested)} workload(s) bit-identical across {n_runs} runs"
        if tested
        else "no workload with two or more runs"
    )
    if per_it is not None and tested:
        claim.measured += f" ({n_iterations} iteration checksums)"
    claim.numbers = {
        "Verdict": claim.verdict,
        "Identical": str(identical) if tested else NA,
        "Workloads": str(len(tested)) if tested else NA,
        "Runs": str(n_runs) if tested else NA,
        "Iterations": str(n_iterations) if per_it is not None and tested else NA,
    }
    claim.details = pd.DataFrame(rows) if rows else None
    return claim


def _not_tested_claim(entry: Mapping[str, Any]) -> Claim:
    claim = _base_claim(entry)
    reason = " ".join(str(entry["not_tested"]).split())
    claim.measured = reason
    claim.numbers = {"Verdict": NOT_TESTED, "Reason": reason}
    return claim


def _judge(
    runs: pd.DataFrame,
    per_iteration: pd.DataFrame | None,
    entry: Mapping[str, Any],
    protocol: Mapping[str, Any],
    serving: Mapping[str, pd.DataFrame] | None = None,
) -> Claim:
    if "not_tested" in entry:
        return _not_tested_claim(entry)
    if entry["metric"] in (*RATIO_METRICS, *SERVING_METRICS):
        return _ratio_claim(runs, entry, protocol, serving)
    return _accuracy_claim(runs, per_iteration, entry, protocol)


def evaluate(
    runs: pd.DataFrame,
    per_iteration: pd.DataFrame | None = None,
    protocol: Mapping[str, Any] | None = None,
    serving: Mapping[str, pd.DataFrame] | None = None,
) -> list[Claim]:
    """Judge the protocol's claims (in its order) on a runs table (raw or annotated) and,
    for the serving metrics, the serving sweep's tables (``{"serving": ..., "capacity":
    ...}``; None: those parts are not tested here)."""
    protocol = protocol if protocol is not None else load_protocol()
    runs = _slim(runs, protocol)
    return [_judge(runs, per_iteration, e, protocol, serving) for e in protocol["claims"]]


def evaluate_checks(
    runs: pd.DataFrame,
    per_iteration: pd.DataFrame | None = None,
    protocol: Mapping[str, Any] | None = None,
    serving: Mapping[str, pd.DataFrame] | None = None,
) -> list[Claim]:
    """The protocol's reported checks (not claims of the paper), judged the same way."""
    protocol = protocol if protocol is not None else load_protocol()
    runs = _slim(runs, protocol)
    return [_judge(runs, per_iteration, e, protocol, serving) for e in protocol.get("checks") or ()]


def exploration(runs: pd.DataFrame, protocol: Mapping[str, Any]) -> pd.DataFrame:
    """Every BLS lag bound of every workload against its best synchronous series, with
    intervals; the best lag bound per workload is marked. Not judged: a best-L view picked
    after the runs."""
    runs = _slim(runs, protocol)
    cols = ["workload", "series", "n", "ratio", "CI low", "CI high", "ideal", "best L"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    entry = {"metric": "throughput_ratio", "threshold": {"op": ">", "value": 1.0}}
    for w in dict.fromkeys(runs["workload"]):
        df = runs[runs["workload"] == w]
        lags = sorted(
            {int(x) for x in df.loc[df["collective"] == "bls", "lag_bound"].dropna()} - {0}
        )
        for lag in lags:
            j = _judge_ratio(runs, w, lag, entry, protocol)
            if not math.isfinite(j.point):
                continue
            rows.append(
                {
                    "workload": w,
                    "series": j.series,
                    "n": j.repetitions,
                    "ratio": j.point,
                    "CI low": j.low,
                    "CI high": j.high,
                    "ideal": j.ideal,
                    "best L": "",
                }
            )
    out = pd.DataFrame(rows, columns=cols)
    if not out.empty:
        best = out.groupby("workload")["ratio"].idxmax()
        out.loc[best, "best L"] = "best"
    return out


# --------------------------------------------------------------------------------------
# Machine and sweep


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or NA
    for key in ("model name", "Hardware", "cpu model", "Processor"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return " ".join(m.group(1).split())
    return platform.processor() or NA


def _memory() -> str:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return NA
    m = re.search(r"^MemTotal:\s*(\d+)\s*kB", text, re.MULTILINE)
    return f"{int(m.group(1)) / 2**20:.1f} GiB" if m else NA


def _os_name() -> str:
    try:
        text = Path("/etc/os-release").read_text()
        m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', text, re.MULTILINE)
        if m:
            return f"{m.group(1)} (kernel {platform.release()})"
    except OSError:
        pass
    return platform.platform()


def _cores() -> str:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    total = os.cpu_count() or usable
    return str(total) if usable == total else f"{usable} of {total}"


def _most_common_text(runs: pd.DataFrame, column: str) -> str:
    if column not in runs.columns:
        return NA
    value = most_common(runs[column])
    return NA if value is None else str(value)


def machine_info(runs: pd.DataFrame | None = None) -> dict[str, str]:
    """Where the numbers come from: this machine's CPU, cores, memory and OS, and the
    software versions the runs recorded in their headers (most common over runs)."""
    runs = runs if runs is not None else pd.DataFrame()
    info = {
        "CPU": _cpu_model(),
        "Cores": _cores(),
        "Memory": _memory(),
        "OS": _os_name(),
        "Python": _most_common_text(runs, "versions.python"),
        "Torch": _most_common_text(runs, "versions.torch"),
        "MPI": _most_common_text(runs, "versions.mpi_library"),
        "MpiPy": _most_common_text(runs, "versions.mpi4py"),
        "Hosts": _most_common_text(runs, "hosts"),
    }
    if info["Python"] == NA:
        info["Python"] = platform.python_version()
    if info["MPI"] != NA:  # "MPICH Version: 4.3.0 MPICH Release date: ..." -> "MPICH 4.3.0"
        m = re.match(r"\s*(\w[\w .-]*?)\s+Version:?\s*([\w.]+)", info["MPI"])
        if m:
            info["MPI"] = f"{m.group(1)} {m.group(2)}"
    return info


def _join(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values) if len(values) else NA


_SWEEP_KEYS = (
    "Runs",
    "Workloads",
    "Scenarios",
    "Series",
    "Ranks",
    "LagBounds",
    "Iterations",
    "Repetitions",
    "SamplesPerIteration",
    "DelaySizes",
)


def sweep_info(runs: pd.DataFrame) -> dict[str, str]:
    """What the sweep covered, for the setup section of the paper."""
    runs = _annotated(runs)
    if runs.empty:
        return dict.fromkeys(_SWEEP_KEYS, NA)
    lags = sorted({int(v) for v in runs.loc[runs["collective"] == "bls", "lag_bound"].dropna()})
    series = sorted(runs["series"].unique(), key=series_sort_key)
    reps = runs.groupby(["workload", "series"])["run_id"].count()
    samples_per_it = (runs["samples"] / runs["measured_iterations"]).dropna()
    delays = sorted({round(v, 3) for v in runs["delay_ms"].dropna() if v > 0})
    return {
        "Runs": str(len(runs)),
        "Workloads": str(runs["workload"].nunique()),
        "Scenarios": _join(sorted(runs["scenario"].unique())),
        "Series": _join(series),
        "Ranks": _join(sorted(runs["world_size"].unique())),
        "LagBounds": _join(lags),
        "Iterations": _join(sorted(runs["measured_iterations"].unique())),
        "Repetitions": str(int(reps.max()))
        if int(reps.min()) == int(reps.max())
        else f"{int(reps.min())}-{int(reps.max())}",
        "SamplesPerIteration": _join(sorted({int(v) for v in samples_per_it})),
        "DelaySizes": _join([f"{v:g}" for v in delays]) + (" ms" if delays else ""),
    }


def _columns_by_key(runs: pd.DataFrame, *words: str) -> list[str]:
    """Columns whose last dotted key contains one of ``words`` (header or config alike)."""
    return [c for c in runs.columns if any(w in c.rsplit(".", 1)[-1].lower() for w in words)]


def _distinct(runs: pd.DataFrame, columns: Sequence[str]) -> str:
    values: list[str] = []
    for c in columns:
        for v in runs[c].dropna().unique():
            text = f"{v}"
            if text not in values:
                values.append(text)
    return _join(values)


def _by_workload(runs: pd.DataFrame, column: str) -> str:
    """``value`` if one value over all runs, else ``value (workloads); ...``."""
    if column not in runs.columns:
        return NA
    groups = runs.groupby(runs[column].astype(str))["workload"].unique()
    if len(groups) == 1:
        return str(groups.index[0])
    return "; ".join(f"{k} ({', '.join(map(str, v))})" for k, v in groups.items())


def _data_source(runs: pd.DataFrame) -> str:
    cols = [c for c in ("config.dataset", "config.tags.dataset", "config.tags.data") if c in runs]
    if not cols:
        return NA
    text = runs[cols].astype(str).agg(" ".join, axis=1).str.lower()
    criteo = text.str.contains("criteo")
    if criteo.all():
        return "Criteo (real click logs, preprocessed)"
    if not criteo.any():
        return "synthetic (seeded generator, `bls-dlrm make-data`)"
    return "synthetic and Criteo (see the workloads below)"


def _stress(runs: pd.DataFrame, protocol: Mapping[str, Any]) -> list[str]:
    named = set(_workloads(runs, protocol.get("stress_workloads") or []))
    if "scenario_class" in runs.columns:
        named |= set(runs.loc[runs["scenario_class"] == "stress", "workload"])
    return sorted(named & set(runs["workload"]))


def run_info(runs: pd.DataFrame, protocol: Mapping[str, Any]) -> dict[str, str]:
    """What was run, for the opening of the claims table: data, delays, placement, counts."""
    runs = _annotated(runs)
    if runs.empty:
        return {}
    delayed = runs[runs["scenario_class"] == "delayed"] if "scenario_class" in runs else runs
    kinds = sorted(set(delayed["delay_kind"])) if len(delayed) else []
    delay_modes = _distinct(
        runs, [c for c in runs.columns if c.startswith("config.delay.") and c.endswith("mode")]
    )
    delays = "none"
    if kinds:
        delays = f"{_join(kinds)} (workloads {_join(sorted(set(delayed['workload'])))})"
        if delay_modes != NA:
            delays += f"; delay mode {delay_modes}"
    return {
        "Data": _data_source(runs),
        "Injected delays": delays,
        "Ranks per run": _by_workload(runs, "world_size"),
        "Placement": _by_workload(runs, "placement"),
        "Cores per rank": _distinct(runs, _columns_by_key(runs, "cores_per_rank")),
        "Hosts per run": _most_common_text(runs, "hosts"),
        "Repetitions": sweep_info(runs)["Repetitions"],
        "Measured iterations per run": _join(sorted(runs["measured_iterations"].unique())),
        "Series order seed": _distinct(runs, _columns_by_key(runs, "shuffle", "order_seed")),
        "Stress scenarios (never judged)": _join(_stress(runs, protocol)),
    }


def workload_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per workload: class, delay, placement, ranks, repetitions, and the room the
    theory leaves (median ideal speedup of the BLS series with the largest lag bound), with
    the per-rank work spread where the tables carry it (columns named ``*work_cv*``)."""
    runs = _annotated(runs)
    if runs.empty:
        return pd.DataFrame()
    cv_cols = [c for c in runs.columns if "work_cv" in c.lower()]
    rep = _repetition_column(runs)
    rows = []
    for w, df in runs.groupby("workload", sort=False):
        bls = df[df["collective"] == "bls"].dropna(subset=["lag_bound"])
        top = bls[bls["lag_bound"] == bls["lag_bound"].max()] if len(bls) else bls
        row = {
            "workload": w,
            "class": df["scenario_class"].iloc[0] if "scenario_class" in df else NA,
            "delay": f"{df['delay_kind'].iloc[0]} {_fmt(df['delay_ms'].iloc[0], 1)} ms"
            if df["delay_kind"].iloc[0] not in NO_DELAY_KINDS
            else "none",
            "placement": df["placement"].iloc[0] if "placement" in df else NA,
            "ranks": _join(sorted(df["world_size"].unique())),
            "repetitions": int(df[rep].nunique()) if rep else NA,
            "series": int(df["series"].nunique()),
            "ideal speedup (largest L)": float(top["ideal_speedup"].median())
            if len(top) and "ideal_speedup" in top
            else math.nan,
        }
        for c in cv_cols:
            row[c] = float(pd.to_numeric(df[c], errors="coerce").median())
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# Output


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return _fmt(value, 3)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(df: pd.DataFrame) -> str:
    return df.map(_cell).to_markdown(index=False)


def _claims_frame(claims: Sequence[Claim]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "": c.label,
                "Claim": c.claim,
                "Paper's words": f"“{c.words}”" if c.words else NA,
                "Figure": c.figure,
                "Command": f"`{c.command}`",
                "Measured: point [95% CI]": c.measured,
                "Threshold": c.threshold,
                "Verdict": f"**{c.verdict}**",
            }
            for c in claims
        ]
    )


def render_markdown(
    claims: Sequence[Claim],
    machine: Mapping[str, str],
    sweep: Mapping[str, str],
    tables_dir: str = "results/tables",
    *,
    protocol: Mapping[str, Any] | None = None,
    checks: Sequence[Claim] = (),
    setup: Mapping[str, str] | None = None,
    explore: pd.DataFrame | None = None,
    workloads: pd.DataFrame | None = None,
) -> str:
    """The claims table with what was run, the checks, the machine and the sweep, then
    per-claim details and the labeled exploration, as Markdown."""
    protocol = protocol if protocol is not None else load_protocol()
    paper, st = protocol["paper"], protocol["statistics"]
    title = " ".join(paper["title"].split())
    lines = [
        "# Claims of the paper, tested on this machine",
        "",
        f"{' '.join(paper['reimplementation'].split())} Paper: {', '.join(paper['authors'])}, "
        f"“{title}”, arXiv {paper['arxiv']} ({paper['year']}).",
        "",
        "## What was run",
        "",
    ]
    if setup:
        lines += [_table(pd.DataFrame({"": list(setup), "value": list(setup.values())})), ""]
        if workloads is not None and not workloads.empty:
            lines += [_table(workloads), ""]
    else:
        lines += ["No runs in the tables.", ""]
    lines += [
        "## Claims",
        "",
        f"Judged by the protocol `{protocol.get('_path', PROTOCOL)}` (sha256 "
        f"`{str(protocol.get('_sha256', NA))[:16]}`), fixed before the runs: it names each "
        "claim's workloads, metric, lag bound and threshold. Ratios are over the best "
        "synchronous series of the same workload (of "
        f"{', '.join(protocol['synchronous']['series'])}: the highest median throughput), "
        f"paired by repetition; intervals are {st['confidence']:.0%} bootstrap intervals "
        f"(BCa, {st['n_resamples']} resamples, seed {st['seed']}). *supported*: the whole "
        "interval clears the threshold; *not supported*: it lies wholly on the wrong side; "
        "*inconclusive*: it straddles the threshold, or fewer than "
        f"{st['min_repetitions']} repetitions; *not tested here*: the sweep lacks the runs "
        f"or another experiment judges it. Tables: `{tables_dir}`.",
        "",
        _table(_claims_frame(claims)),
    ]
    if checks:
        lines += [
            "",
            "## Checks (reported, not claims of the paper)",
            "",
            _table(_claims_frame(checks).drop(columns=["Paper's words"])),
        ]
    lines += ["", "## Machine", ""]
    labels = {
        "CPU": "CPU model",
        "Cores": "Cores (usable)",
        "Memory": "Memory",
        "OS": "OS",
        "Python": "Python (runs)",
        "Torch": "torch (runs)",
        "MPI": "MPI library (runs)",
        "MpiPy": "mpi4py (runs)",
        "Hosts": "Hosts per run",
    }
    keys = [labels.get(k, k) for k in machine]
    lines += [_table(pd.DataFrame({"": keys, "value": list(machine.values())}))]
    lines += ["", "## Sweep", ""]
    lines += [_table(pd.DataFrame({"": list(sweep), "value": list(sweep.values())}))]
    for c in [*claims, *checks]:
        if c.details is None or c.details.empty:
            continue
        lines += ["", f"## {c.label} {c.claim}", "", _table(c.details)]
    if explore is not None and not explore.empty:
        lines += [
            "",
            "## Exploration (not judged): every lag bound against the best synchronous series",
            "",
            "Picked after the runs, so no verdict rests on it: the lag bound marked *best* "
            "is the one with the highest ratio in that workload.",
            "",
            _table(explore),
        ]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    ">": r"$>$",
    "<": r"$<$",
}


def latex_escape(text: str) -> str:
    """Plain text -> LaTeX that typesets the same characters."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def macro_name(*parts: str) -> str:
    """Parts joined, letters only (TeX control words cannot hold digits or dashes)."""
    name = "".join(re.sub(r"[^A-Za-z]", "", p[:1].upper() + p[1:]) for p in parts if p)
    if not name:
        raise ValueError("empty macro name")
    return name


def macro_values(
    claims: Sequence[Claim],
    machine: Mapping[str, str],
    sweep: Mapping[str, str],
    protocol: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Every macro the paper may use -> its plain-text value (not yet escaped)."""
    values: dict[str, str] = {}
    for c in claims:
        for stem, value in c.numbers.items():
            values[macro_name("Claim", c.macro, stem)] = value
    if protocol is not None:
        st = protocol["statistics"]
        values["ProtocolConfidence"] = f"{float(st['confidence']):.0%}"
        values["ProtocolResamples"] = str(st["n_resamples"])
        values["ProtocolMinRepetitions"] = str(st["min_repetitions"])
        values["ProtocolDigest"] = str(protocol.get("_sha256", NA))[:16]
        values["ProtocolSynchronous"] = ", ".join(protocol["synchronous"]["series"])
    for key, value in machine.items():
        prefix = "Version" if key in ("Python", "Torch", "MPI", "MpiPy") else "Machine"
        values[macro_name(prefix, key)] = value
    for key, value in sweep.items():
        values[macro_name("Sweep", key)] = value
    return values


def render_macros(
    claims: Sequence[Claim],
    machine: Mapping[str, str],
    sweep: Mapping[str, str],
    protocol: Mapping[str, Any] | None = None,
) -> str:
    """``\\newcommand{\\Name}{value}`` for every number the paper quotes (claims and checks
    alike: pass both lists concatenated)."""
    lines = [
        "% Generated by `python -m bls_dlrm.analysis.claims`; do not edit (git-ignored).",
        "% Every number the paper quotes is one of these macros.",
    ]
    for name, value in macro_values(claims, machine, sweep, protocol).items():
        lines.append(f"\\newcommand{{\\{name}}}{{{latex_escape(value)}}}")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bls_dlrm.analysis.claims",
        description="Judge the paper's claims on a sweep's tables by the protocol; write the "
        "claims table (Markdown) and the paper's number macros (LaTeX).",
    )
    parser.add_argument("--tables", type=Path, default=Path("results/tables"))
    parser.add_argument("--protocol", type=Path, default=PROTOCOL)
    parser.add_argument("--out", type=Path, default=Path("results/claims.md"))
    parser.add_argument("--macros", type=Path, default=Path("paper/macros.tex"))
    args = parser.parse_args(argv)
    try:
        protocol = load_protocol(args.protocol)
    except ProtocolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs_path = args.tables / "runs.parquet"
    if not runs_path.is_file():
        print(f"error: {runs_path}: no such table (run `bls-dlrm tables`)", file=sys.stderr)
        return 1
    runs = annotate_runs(pd.read_parquet(runs_path))
    per_iteration = None
    per_path = args.tables / "per_iteration.parquet"
    if per_path.is_file():
        per_iteration = pd.read_parquet(per_path, columns=["run_id", "iteration", "checksum"])
    serving = None
    if all((args.tables / f"{name}.parquet").is_file() for name in ("serving", "capacity")):
        serving = {
            n: pd.read_parquet(args.tables / f"{n}.parquet") for n in ("serving", "capacity")
        }
    its_path = args.tables / "iterations.parquet"
    if its_path.is_file():
        names = set(pq.read_schema(its_path).names)
        columns = [c for c in SIMULATION_COLUMNS if c in names]
        runs = attach_predictions(runs, pd.read_parquet(its_path, columns=columns), protocol)
    claims = evaluate(runs, per_iteration, protocol, serving)
    checks = evaluate_checks(runs, per_iteration, protocol, serving)
    machine = machine_info(runs)
    sweep = sweep_info(runs)
    text = render_markdown(
        claims,
        machine,
        sweep,
        str(args.tables),
        protocol=protocol,
        checks=checks,
        setup=run_info(runs, protocol),
        explore=exploration(runs, protocol),
        workloads=workload_table(runs),
    )
    _write(args.out, text)
    _write(args.macros, render_macros([*claims, *checks], machine, sweep, protocol))
    for c in [*claims, *checks]:
        print(f"{c.label} {c.verdict:>15}: {c.measured}")
    print(f"wrote {args.out} and {args.macros}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
