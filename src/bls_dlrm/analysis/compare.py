"""The one comparison of series: the synchronous baseline rule, pairing by repetition, and
speedup intervals. Claims, figures and the simulation's check all call these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from bls_dlrm.analysis.workloads import annotate_runs
from bls_dlrm.series import SYNC_SERIES, lag_of, series_sort_key


def _lower_is_better(metric: str) -> bool:
    return metric.startswith(("latency", "makespan", "iteration_time"))


def best_synchronous(
    runs: pd.DataFrame, candidates: Sequence[str] = SYNC_SERIES, metric: str = "throughput_sps"
) -> str | None:
    """The baseline rule: of ``candidates``, the series with the best median ``metric`` in
    ``runs`` (annotated runs of one workload); the highest for a throughput, the lowest for
    a latency or makespan. Ties go to the candidate listed first. None without any run.

    Claims, figures and the simulation's check all pick a workload's synchronous baseline
    here, so a figure and the claims table cannot disagree on it.
    """
    cand = runs[runs["series"].isin(candidates)]
    if cand.empty:
        return None
    med = cand.groupby("series")[metric].median().dropna()
    if med.empty:
        return None
    sign = -1.0 if _lower_is_better(metric) else 1.0
    order = {s: i for i, s in enumerate(candidates)}
    return str(max(med.index, key=lambda s: (sign * med[s], -order[s])))


def baseline_series(
    runs: pd.DataFrame, how: str = "best", metric: str = "throughput_sps"
) -> pd.Series:
    """The synchronous series each workload is compared with (index: workload, values:
    series labels such as ``gloo`` or ``bls L=0``).

    ``how="best"`` (the default) applies :func:`best_synchronous` to each workload;
    ``how="mpi"`` picks ``mpi`` and falls back to the best synchronous series where a
    workload has no mpi run. Workloads without any synchronous run are absent.
    """
    if how not in ("best", "mpi"):
        raise ValueError(f"how must be 'best' or 'mpi', got {how!r}")
    df = runs if "workload" in runs.columns else annotate_runs(runs)
    chosen: dict[str, str] = {}
    for workload, part in df.groupby("workload", sort=True):
        best = best_synchronous(part, SYNC_SERIES, metric)
        if how == "mpi" and (part["series"] == "mpi").any():
            best = "mpi"
        if best is not None:
            chosen[str(workload)] = best
    return pd.Series(chosen, dtype="object", name="baseline")


def sync_baseline(
    runs: pd.DataFrame, how: str = "best", metric: str = "throughput_sps"
) -> pd.Series:
    """Median ``metric`` of the synchronous baseline per workload (index: workload).

    The baseline series is :func:`baseline_series` (``how="best"``: the best of mpi, gloo
    and bls L=0; ``how="mpi"``: mpi where it ran). Workloads without any synchronous run
    are absent from the result.
    """
    df = runs if "workload" in runs.columns else annotate_runs(runs)
    chosen = baseline_series(df, how=how, metric=metric)
    if chosen.empty:
        return pd.Series(dtype="float64", name=metric)
    med = df.groupby(["workload", "series"])[metric].median()
    values = [med.get((w, s), math.nan) for w, s in chosen.items()]
    return pd.Series(values, index=chosen.index, dtype="float64", name=metric)


def with_speedup(runs: pd.DataFrame, how: str = "best") -> pd.DataFrame:
    """Annotated runs with ``speedup`` = throughput / the workload's synchronous baseline
    (:func:`sync_baseline`; default: the best synchronous series) and ``baseline``, the
    baseline's series label.

    Runs of one workload process the same samples, so this equals the makespan ratio.
    NaN where the workload has no synchronous run.
    """
    df = runs if "workload" in runs.columns else annotate_runs(runs)
    base = sync_baseline(df, how=how)
    chosen = baseline_series(df, how=how)
    df = df.copy()
    df["baseline"] = df["workload"].map(chosen)
    df["baseline_sps"] = df["workload"].map(base).astype("float64")
    df["speedup"] = df["throughput_sps"] / df["baseline_sps"]
    return df


#: Columns that number a run's repetition, most specific first.
REPETITION_COLUMNS = ("config.repetition", "config.tags.rep", "repetition")


def repetition_numbers(runs: pd.DataFrame) -> pd.Series:
    """Each run's repetition number (from :data:`REPETITION_COLUMNS`; NaN if none)."""
    out = pd.Series(math.nan, index=runs.index, dtype="float64")
    for col in REPETITION_COLUMNS:
        if col in runs.columns:
            out = out.fillna(pd.to_numeric(runs[col], errors="coerce").astype("float64"))
    return out


def paired_values(
    runs: pd.DataFrame, workload: str, numerator: str, denominator: str, metric: str
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``metric`` of two series of one workload, for a ratio over repetitions.

    Returns (numerator values, denominator values, paired). When both series have the
    same set of repetition numbers, the values are aligned by repetition (paired);
    otherwise every run of each series is returned in run-id order (unpaired).
    """
    df = runs[runs["workload"] == workload]
    parts = []
    for s in (numerator, denominator):
        part = df[df["series"] == s]
        part = part.assign(_rep=repetition_numbers(part).to_numpy()).sort_values(
            ["_rep", "run_id"] if "run_id" in part.columns else ["_rep"]
        )
        parts.append(part)
    num, den = parts
    reps_num, reps_den = num["_rep"], den["_rep"]
    paired = (
        len(num) == len(den)
        and not reps_num.isna().any()
        and reps_num.is_unique
        and reps_den.is_unique
        and set(reps_num) == set(reps_den)
    )
    return (
        num[metric].to_numpy(dtype="float64"),
        den[metric].to_numpy(dtype="float64"),
        bool(paired),
    )


#: Confidence level and bootstrap seed of every interval drawn (fixed: rebuilt figures
#: show the same intervals).
CONFIDENCE = 0.95


BOOTSTRAP_SEED = 0


INTERVAL_COLUMNS = (
    "workload",
    "series",
    "baseline",
    "speedup",
    "low",
    "high",
    "repetitions",
    "paired",
    "ideal_speedup",
)


def speedup_intervals(
    runs: pd.DataFrame,
    series: Iterable[str] | None = None,
    *,
    how: str = "best",
    metric: str = "throughput_sps",
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
    n_resamples: int | None = None,
) -> pd.DataFrame:
    """Per workload and series: ``metric`` over the synchronous baseline, with a bootstrap
    confidence interval over repetitions (:func:`bls_dlrm.analysis.stats.ratio_ci`).

    ``series``: the series to compare (default: every series other than the workload's
    baseline). Columns: :data:`INTERVAL_COLUMNS`; ``speedup`` is the point estimate of
    ``ratio_ci``, ``low``/``high`` its interval (NaN with fewer than two repetitions on a
    side), ``paired`` whether repetitions were paired, ``ideal_speedup`` the median over the
    series' runs (NaN if the table has none).
    """
    from bls_dlrm.analysis.stats import ratio_ci

    df = runs if "workload" in runs.columns else annotate_runs(runs)
    chosen = baseline_series(df, how=how, metric=metric)
    wanted = None if series is None else set(series)
    rows = []
    for workload, base in chosen.items():
        present = sorted(df.loc[df["workload"] == workload, "series"].unique(), key=series_sort_key)
        for s in present:
            if (wanted is None and s == base) or (wanted is not None and s not in wanted):
                continue
            num, den, paired = paired_values(df, workload, s, base, metric)
            extra = {} if n_resamples is None else {"n_resamples": n_resamples}
            point, low, high = ratio_ci(
                num, den, paired=paired, confidence=confidence, seed=seed, **extra
            )
            if min(len(num), len(den)) < 2:  # one repetition: a ratio, but no interval
                low = high = math.nan
            ideal = math.nan
            if "ideal_speedup" in df.columns:
                part = df.loc[(df["workload"] == workload) & (df["series"] == s)]
                ideal = float(part["ideal_speedup"].median())
            rows.append(
                {
                    "workload": workload,
                    "series": s,
                    "baseline": base,
                    "speedup": float(point),
                    "low": float(low),
                    "high": float(high),
                    "repetitions": int(min(len(num), len(den))),
                    "paired": paired,
                    "ideal_speedup": ideal,
                }
            )
    return pd.DataFrame(rows, columns=list(INTERVAL_COLUMNS))


def best_bls(runs: pd.DataFrame, metric: str = "throughput_sps") -> pd.DataFrame:
    """Per workload, the BLS series with a lag (L >= 1) with the highest median ``metric``.

    Columns: workload, series, lag_bound, and the median of every numeric column of the
    runs of that series (so ``ideal_speedup`` and latencies come from the same runs).
    """
    df = runs if "workload" in runs.columns else annotate_runs(runs)
    bls = df[(df["collective"] == "bls") & ~df["series"].isin(SYNC_SERIES)]
    if bls.empty:
        return pd.DataFrame(columns=["workload", "series", metric])
    numeric = [
        c
        for c in bls.columns
        if pd.api.types.is_numeric_dtype(bls[c])
        and not pd.api.types.is_bool_dtype(bls[c])
        and c != "lag_bound"
    ]
    med = bls.groupby(["workload", "series"])[numeric].median().reset_index()
    idx = med.groupby("workload")[metric].idxmax()
    out = med.loc[idx.dropna()].reset_index(drop=True)
    out["lag_bound"] = [lag_of(s) for s in out["series"]]
    return out
