"""The paper's claims, judged on a sweep's tables by a protocol fixed before the runs.

    python -m bls_dlrm.analysis.report --tables results/tables --protocol config/protocol.yaml \\
        --out results/claims.md --macros paper/macros.tex

What is judged comes only from ``config/protocol.yaml`` (validated against
``workflow/schemas/protocol.schema.yaml``): for each claim, the workloads, the metric, the
lag bound(s) of the BLS series and the threshold. This module holds no threshold, workload
name or lag bound of its own; how each metric is computed is :mod:`bls_dlrm.analysis.judge`.

Each ratio carries a bootstrap interval over repetitions
(:func:`bls_dlrm.analysis.stats.ratio_ci`, the protocol's confidence, resamples and seed)
and gets a verdict from the interval (:func:`bls_dlrm.analysis.stats.verdict`):
*supported*, *not supported*, *inconclusive*; *not tested here* when the sweep lacks the
runs, or when the protocol says a part is judged by another experiment. A claim judged on
several workloads or lag bounds is supported only if every one is, not supported if any
one is not, and inconclusive otherwise. Fewer repetitions than the protocol's minimum make
a verdict at best inconclusive.

The same numbers go into LaTeX macros (``paper/macros.tex``), so the paper quotes exactly
what ``results/claims.md`` says. Macro names: ``\\Claim<Macro><Field>`` with the protocol
entry's ``macro`` stem and fields ``Verdict``, ``Measured``, ``Point``, ``Low``, ``High``,
``Threshold``, ``Workloads``, ``Lag``, ``Repetitions`` (accuracy: ``Identical``,
``Workloads``, ``Runs``, ``Iterations``; a part not tested: ``Verdict``, ``Reason``);
``\\Machine*``, ``\\Version*``, ``\\Sweep*`` and ``\\Protocol*`` describe where and how.

"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bls_dlrm.analysis import stats
from bls_dlrm.analysis.judge import (
    INCONCLUSIVE,
    NA,
    NOT_SUPPORTED,
    NOT_TESTED,
    SUPPORTED,
    Judgement,
    _fmt,
    _judge_ratio,
    _judge_serving,
    _slim,
    _stress,
    _workloads,
)
from bls_dlrm.analysis.protocol import (
    RATIO_METRICS,
    SERVING_METRICS,
    load_protocol,
)

#: Verdicts from worst to best: a claim over several judgements takes the worst present.
_RANK = {NOT_SUPPORTED: 0, INCONCLUSIVE: 1, NOT_TESTED: 2, SUPPORTED: 3}


FIGURE_COMMAND = "snakemake --cores 2 figures/{name}.pdf"


CLAIMS_COMMAND = "snakemake --cores 2 results/claims.md"


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
