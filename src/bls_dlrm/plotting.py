"""What every figure notebook shares: finding and loading the tables, naming runs, the palette.

The figures compare *series* (a collective and, for BLS, its lag bound: ``mpi``, ``gloo``,
``bls L=0``, ``bls L=8``) across *workloads* (everything about a run that is not the
collective: delay schedule, data, placement, ranks). Both are defined here, once, so that
the five figures, the overview notebook and :mod:`bls_dlrm.claims` group runs the same way
and give a series the same colour everywhere.

Definitions (our own; the sweep only promises a ``scenario`` tag and the delay columns):

- **workload**: the run's flattened ``config.*`` columns and ``world_size``, less the keys
  that choose the collective or only label a run (:data:`NOT_WORKLOAD`,
  :data:`PER_RUN_TAGS`). Runs of one workload are compared side by side; repetitions of a
  workload are summarised by their median.
- **scenario**: the ``config.tags.scenario`` tag, or ``"<delay kind> <size> ms"`` when the
  sweep set none.
- **scenario class**: ``stress`` for a labeled stress scenario (more ranks than cores, see
  :func:`placement_of`; no claim is judged on it), ``delayed`` when the delay schedule
  injects anything, ``skewed`` when the scenario name, the table placement or the data tags
  say the work is uneven (:data:`SKEW_HINTS`, :data:`SKEW_COLUMNS`), otherwise ``balanced``.
- **synchronous baseline** of a workload: the synchronous series (:data:`SYNC_SERIES`: mpi,
  gloo and bls L=0) with the highest median throughput ("best synchronous", the default),
  or ``mpi`` alone on request.
- **speedup interval**: a series' throughput over its workload's synchronous baseline with a
  95% bootstrap confidence interval over repetitions (:func:`speedup_intervals`, through
  :func:`bls_dlrm.stats.ratio_ci`, paired by repetition).
- **caption**: what a figure's runs were (ranks, placement, repetitions, iterations,
  synthetic data and injected delays), read from the runs' header columns
  (:func:`sweep_facts`, :func:`caption`), never written by hand.

Matplotlib and seaborn are imported inside the drawing helpers only, so the claims CLI can
use the table helpers without loading a plotting stack.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "BOUND",
    "CLASS_COLORS",
    "CLASS_ORDER",
    "COLUMN_WIDTH_IN",
    "COMPONENT_COLORS",
    "CONFIDENCE",
    "INTERVAL_COLUMNS",
    "OVERSUBSCRIBED",
    "SYNC_COLLECTIVES",
    "SYNC_SERIES",
    "annotate_runs",
    "attach_labels",
    "baseline_series",
    "best_bls",
    "caption",
    "figsize",
    "find_project_root",
    "footnote",
    "interval_settings",
    "lag_of",
    "load_protocol",
    "load_table",
    "load_tables",
    "missing_note",
    "most_common",
    "paired_values",
    "palette",
    "pick_delayed_workload",
    "pick_reference_workload",
    "placeholder",
    "placement_of",
    "plain_log_ticks",
    "plain_number",
    "primary_delay_kind",
    "project_path",
    "protocol_claims",
    "repetition_numbers",
    "representative_run",
    "resolve_out_dir",
    "save_drawn_data",
    "save_figure",
    "series_label",
    "series_markers",
    "series_sort_key",
    "set_plain_log_axis",
    "set_style",
    "speedup_intervals",
    "sweep_facts",
    "sync_baseline",
    "threshold_text",
    "with_speedup",
    "workload_columns",
]

SYNC_COLLECTIVES = ("mpi", "gloo")
#: The synchronous series: mpi, gloo, and the BLS engine with L = 0, which is the same
#: synchronous exchange. Comparing the best lag bound L >= 1 with the best of these
#: measures what the lag bound adds, not how our engine compares with MPI's.
SYNC_SERIES = (*SYNC_COLLECTIVES, "bls L=0")
TABLE_NAMES = ("runs", "per_iteration", "iterations")
#: Tables of the serving sweep (``bls-dlrm serve-tables``).
SERVING_TABLE_NAMES = ("serving", "capacity")

#: Config keys that pick or label the collective rather than describe the workload.
NOT_WORKLOAD = frozenset(
    {
        "config.collective",
        "config.lag_bound",
        "config.series_label",
        "config.backend",
        "config.transport",
        "config.repetition",
        "config.run_id",
        "config.timeout_s",
        "config.verify_data",
    }
)
#: ``config.tags.<name>`` labels that vary within one workload (the sweep's collective axes).
PER_RUN_TAGS = frozenset(
    {
        "collective",
        "lag",
        "lag_bound",
        "series",
        "mode",
        "transport",
        "rep",
        "repetition",
        "run",
        "run_id",
        "name",
    }
)
#: Words in a scenario name that mark an uneven workload without injected delays.
SKEW_HINTS = ("skew", "zipf", "unbalanced", "imbalanced", "heavy", "hot", "uneven")
#: Columns (if the sweep logged them) whose values other than these mark uneven work.
SKEW_COLUMNS = {
    "config.plan": ("contiguous", "balanced"),
    "config.tags.index_dist": ("uniform",),
    "config.tags.pooling": ("fixed",),
}
#: Delay kinds that inject nothing.
NO_DELAY_KINDS = ("none", "", "nan")
#: Words in a scenario name that mark a labeled stress scenario (no claim is judged on it).
STRESS_HINTS = ("oversub", "stress")
CLASS_ORDER = ("balanced", "skewed", "delayed", "stress")

# --------------------------------------------------------------------------------------
# Paths


def find_project_root(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: cwd) holding ``pyproject.toml``."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return None


def project_path(path: str | os.PathLike[str]) -> Path:
    """A relative path as the workflow means it: from the project root.

    Snakemake runs the notebooks from the project root, JupyterLab from ``notebooks/``;
    with this the same default (``results/tables``) works in both. Absolute paths, and
    relative ones that exist from the current folder, are returned unchanged.
    """
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    root = find_project_root()
    if root is None or root == Path.cwd().resolve():
        return p
    return root / p


def resolve_out_dir(path: str | os.PathLike[str]) -> Path:
    """Like :func:`project_path` for an output folder, which is created."""
    out = project_path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------------------------
# Tables


def load_table(
    tables_dir: str | os.PathLike[str], name: str, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """One table of a sweep (``runs``, ``per_iteration``, ``iterations``; of the serving
    sweep, ``serving`` and ``capacity``).

    ``columns`` limits what is read (the iterations table can be large); names that the
    table lacks are skipped rather than failing, so notebooks survive older tables.
    """
    known = TABLE_NAMES + SERVING_TABLE_NAMES
    if name not in known:
        raise ValueError(f"unknown table {name!r}; expected one of {known}")
    path = project_path(tables_dir) / f"{name}.parquet"
    if not path.is_file():
        tool = "serve-tables" if name in SERVING_TABLE_NAMES else "tables"
        raise FileNotFoundError(f"{path}: no such table (build it with `bls-dlrm {tool}`)")
    if columns is not None:
        import pyarrow.parquet as pq

        present = set(pq.read_schema(path).names)
        columns = [c for c in dict.fromkeys(columns) if c in present]
    return pd.read_parquet(path, columns=columns)


def load_tables(
    tables_dir: str | os.PathLike[str], names: Iterable[str] = TABLE_NAMES
) -> dict[str, pd.DataFrame]:
    """Several tables by name: ``{"runs": df, ...}``."""
    return {name: load_table(tables_dir, name) for name in names}


# --------------------------------------------------------------------------------------
# Series, workloads, scenarios


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def series_label(collective: str, lag_bound: Any = None) -> str:
    """``mpi``, ``gloo`` or ``bls L=<lag bound>``: the unit every figure compares."""
    if collective == "bls":
        lag = 0 if _is_missing(lag_bound) else int(lag_bound)
        return f"bls L={lag}"
    return str(collective)


def series_sort_key(label: str) -> tuple[int, float, str]:
    """Synchronous baselines first (mpi, gloo), then BLS by increasing lag bound."""
    if label.startswith("bls L="):
        try:
            return (1, float(label.split("=", 1)[1]), label)
        except ValueError:
            return (1, math.inf, label)
    order = {name: i for i, name in enumerate(SYNC_COLLECTIVES)}
    return (0, order.get(label, len(order)), label)


def lag_of(label: str) -> int | None:
    """The lag bound of a ``bls L=<n>`` label; None for other series."""
    if label.startswith("bls L="):
        try:
            return int(label.split("=", 1)[1])
        except ValueError:
            return None
    return None


def workload_columns(runs: pd.DataFrame) -> list[str]:
    """Columns that together say which workload a run belongs to (module docstring)."""
    cols = ["world_size"] if "world_size" in runs.columns else []
    for col in runs.columns:
        if not col.startswith("config.") or col in NOT_WORKLOAD:
            continue
        if col.startswith("config.tags.") and col.removeprefix("config.tags.") in PER_RUN_TAGS:
            continue
        cols.append(col)
    return cols


def _text(value: Any) -> str:
    return "-" if _is_missing(value) else str(value)


def _format_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g}"


def _delay_ms(row: pd.Series) -> float:
    size = row.get("config.delay.size_s")
    if _is_missing(size):
        return 0.0 if _delay_kind(row) in NO_DELAY_KINDS else math.nan
    return float(size) * 1e3


def _delay_kind(row: pd.Series) -> str:
    kind = row.get("config.delay.kind")
    return "none" if _is_missing(kind) else str(kind)


def _is_delayed(row: pd.Series) -> bool:
    kind = _delay_kind(row)
    if kind in NO_DELAY_KINDS:
        return False
    if kind in ("trace", "heterogeneous"):
        return True
    size = row.get("config.delay.size_s")
    return not _is_missing(size) and float(size) > 0


def _scenario_name(row: pd.Series) -> str:
    tag = row.get("config.tags.scenario")
    if not _is_missing(tag) and str(tag):
        return str(tag)
    kind = _delay_kind(row)
    if kind in NO_DELAY_KINDS:
        plan = row.get("config.plan")
        return "balanced" if _is_missing(plan) or plan != "unbalanced" else "unbalanced"
    size = row.get("config.delay.size_s")
    return kind if _is_missing(size) else f"{kind} {_format_ms(float(size))} ms"


def _scenario_class(row: pd.Series) -> str:
    if placement_of(row) == OVERSUBSCRIBED:
        return "stress"
    if _is_delayed(row):
        return "delayed"
    name = _scenario_name(row).lower()
    if any(hint in name for hint in SKEW_HINTS):
        return "skewed"
    for column, even in SKEW_COLUMNS.items():
        value = row.get(column)
        if not _is_missing(value) and str(value) not in even:
            return "skewed"
    return "balanced"


#: Placement of a run's ranks on cores (:func:`placement_of`).
BOUND = "bound one per core"
OVERSUBSCRIBED = "oversubscribed"
UNBOUND = "not bound"
UNRECORDED = "placement not recorded"


def _last_key(column: str) -> str:
    return column.rsplit(".", 1)[-1].lower()


def _binding_columns(row: pd.Series) -> list[str]:
    """Columns (header or config) that say how ranks were bound: ``...bind``,
    ``...binding``, ``...bind_to``."""
    found = [c for c in row.index if _last_key(c) in ("bind", "binding", "bind_to")]
    return sorted(found, key=lambda c: c.startswith("config."))  # logged before configured


def _cores_per_rank(row: pd.Series) -> float:
    for col in row.index:
        if _last_key(col) == "cores_per_rank":
            try:
                value = float(row[col])
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                return value
    return math.nan


def placement_of(row: pd.Series) -> str:
    """How one run's ranks sat on the cores: :data:`BOUND`, :data:`OVERSUBSCRIBED`,
    :data:`UNBOUND` or :data:`UNRECORDED`.

    Oversubscribed: the scenario name says so (:data:`STRESS_HINTS`) or the log recorded
    less than one core per rank. Bound: a binding column names cores (``core``). The
    column names are matched by their last key, so header and config columns both work;
    a logged (header) value wins over a configured one, and ``auto`` says nothing.
    """
    name = _scenario_name(row).lower()
    if any(hint in name for hint in STRESS_HINTS):
        return OVERSUBSCRIBED
    cores = _cores_per_rank(row)
    if math.isfinite(cores) and cores < 1:
        return OVERSUBSCRIBED
    for col in _binding_columns(row):
        value = row[col]
        if _is_missing(value):
            continue
        text = str(value).strip().lower()
        if text in ("auto", "default"):  # resolved elsewhere (the header), if at all
            continue
        if text in ("", "none", "no", "false", "off"):
            return UNBOUND
        if "core" in text or text in ("true", "yes", "on"):
            return BOUND
        return f"bound to {text}"
    return UNRECORDED


def annotate_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """A copy of a runs (or per-iteration, or iterations) table with the labels figures use.

    Adds ``series``, ``scenario``, ``scenario_class`` (balanced/skewed/delayed/stress),
    ``delay_kind``, ``delay_ms``, ``placement`` (:func:`placement_of`) and ``workload`` (a
    short id, equal for runs that differ only in collective, lag bound or repetition).
    Missing config columns are tolerated.
    """
    df = runs.copy()
    if df.empty:
        for col in ("series", "scenario", "scenario_class", "delay_kind", "workload", "placement"):
            df[col] = pd.Series(dtype="str")
        df["delay_ms"] = pd.Series(dtype="float64")
        return df
    lag = df["lag_bound"] if "lag_bound" in df.columns else pd.Series([None] * len(df))
    df["series"] = [
        series_label(c, lb) for c, lb in zip(df["collective"], lag.tolist(), strict=True)
    ]
    rows = [row for _, row in df.iterrows()]
    df["scenario"] = [_scenario_name(r) for r in rows]
    df["scenario_class"] = [_scenario_class(r) for r in rows]
    df["delay_kind"] = [_delay_kind(r) for r in rows]
    df["delay_ms"] = np.array([_delay_ms(r) for r in rows], dtype="float64")
    df["placement"] = [placement_of(r) for r in rows]
    cols = workload_columns(df)
    if cols:
        columns = [df[c].tolist() for c in cols]
        keys = ["|".join(_text(v) for v in values) for values in zip(*columns, strict=True)]
    else:
        keys = [""] * len(df)
    df["workload"] = _workload_ids(keys, df["scenario"].tolist(), _world_sizes(df))
    return df


def _world_sizes(df: pd.DataFrame) -> list[Any]:
    if "world_size" in df.columns:
        return df["world_size"].tolist()
    return [None] * len(df)


def _workload_ids(keys: list[str], scenarios: list[str], world_sizes: list[Any]) -> list[str]:
    """Readable workload ids: the scenario name, made unique with ``P=<ranks>`` or ``#k``."""
    first: dict[str, tuple[str, Any]] = {}
    for key, scenario, ws in zip(keys, scenarios, world_sizes, strict=True):
        first.setdefault(key, (scenario, ws))
    by_name: dict[str, list[str]] = {}
    for key, (scenario, _) in first.items():
        by_name.setdefault(scenario, []).append(key)
    ids: dict[str, str] = {}
    for name, group in by_name.items():
        group = sorted(group)
        if len(group) == 1:
            ids[group[0]] = name
            continue
        sizes = [first[k][1] for k in group]
        by_size = len(set(map(str, sizes))) == len(group)
        for i, key in enumerate(group, start=1):
            ids[key] = f"{name} P={first[key][1]}" if by_size else f"{name} #{i}"
    return [ids[k] for k in keys]


# --------------------------------------------------------------------------------------
# Baselines and speedups (medians over repetitions)


def _lower_is_better(metric: str) -> bool:
    return metric.startswith(("latency", "makespan", "iteration_time"))


def baseline_series(
    runs: pd.DataFrame, how: str = "best", metric: str = "throughput_sps"
) -> pd.Series:
    """The synchronous series each workload is compared with (index: workload, values:
    series labels such as ``gloo`` or ``bls L=0``).

    ``how="best"`` (the default) picks, per workload, the series of :data:`SYNC_SERIES`
    with the best median ``metric`` (highest throughput, or lowest latency or makespan);
    ``how="mpi"`` picks ``mpi`` and falls back to the best synchronous series where a
    workload has no mpi run. Workloads without any synchronous run are absent.
    """
    if how not in ("best", "mpi"):
        raise ValueError(f"how must be 'best' or 'mpi', got {how!r}")
    df = runs if "workload" in runs.columns else annotate_runs(runs)
    sync = df[df["series"].isin(SYNC_SERIES)]
    if sync.empty:
        return pd.Series(dtype="object", name="baseline")
    med = sync.groupby(["workload", "series"])[metric].median().unstack("series")
    med = med.reindex(columns=sorted(med.columns, key=series_sort_key))
    best = med.idxmin(axis=1) if _lower_is_better(metric) else med.idxmax(axis=1)
    if how == "mpi" and "mpi" in med.columns:
        best = best.where(med["mpi"].isna(), "mpi")
    return best.dropna().rename("baseline")


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
REPETITION_COLUMNS = ("config.repetition", "repetition", "config.tags.rep")


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
    confidence interval over repetitions (:func:`bls_dlrm.stats.ratio_ci`).

    ``series``: the series to compare (default: every series other than the workload's
    baseline). Columns: :data:`INTERVAL_COLUMNS`; ``speedup`` is the point estimate of
    ``ratio_ci``, ``low``/``high`` its interval (NaN with fewer than two repetitions on a
    side), ``paired`` whether repetitions were paired, ``ideal_speedup`` the median over the
    series' runs (NaN if the table has none).
    """
    from bls_dlrm.stats import ratio_ci

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


LABEL_COLUMNS = (
    "series",
    "scenario",
    "scenario_class",
    "delay_kind",
    "delay_ms",
    "workload",
    "placement",
)


def attach_labels(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Give a per-iteration or iterations table the labels of :func:`annotate_runs`.

    Labels are computed on the (small) runs table and joined on ``run_id``, rather than
    recomputed row by row on the large tables; rows of runs not in ``runs`` are dropped.
    """
    labelled = runs if "workload" in runs.columns else annotate_runs(runs)
    cols = ["run_id", *LABEL_COLUMNS]
    table = table.drop(columns=[c for c in LABEL_COLUMNS if c in table.columns])
    return table.merge(labelled[cols], on="run_id", how="inner", validate="many_to_one")


def most_common(values: Iterable[Any]) -> Any:
    """The most frequent value (smallest on ties), or None for no values."""
    counts = pd.Series(list(values)).dropna().value_counts()
    if counts.empty:
        return None
    top = counts[counts == counts.max()].index
    return sorted(top)[0]


def primary_delay_kind(runs: pd.DataFrame) -> str | None:
    """The delay kind the sweep varied most (most distinct sizes; ``rotating`` wins ties).

    Figures that put the delay size on an axis use this kind; None when nothing is delayed.
    """
    df = runs if "workload" in runs.columns else annotate_runs(runs)
    delayed = df[df["scenario_class"] == "delayed"]
    if delayed.empty:
        return None
    sizes = df[df["delay_kind"].isin(delayed["delay_kind"])].groupby("delay_kind")["delay_ms"]
    counts = sizes.nunique()
    best = counts.max()
    kinds = sorted(k for k, n in counts.items() if n == best)
    return "rotating" if "rotating" in kinds else kinds[0]


def pick_delayed_workload(runs: pd.DataFrame, kind: str | None = None) -> str | None:
    """A delayed workload to show in detail: the largest delay of ``kind`` (default: the
    primary kind), preferring workloads with both a synchronous and a BLS run."""
    df = runs if "workload" in runs.columns else annotate_runs(runs)
    kind = kind or primary_delay_kind(df)
    cand = df[(df["scenario_class"] == "delayed") & (df["delay_kind"] == kind)]
    if cand.empty:
        cand = df[df["scenario_class"] == "delayed"]
    if cand.empty:
        return None
    info = cand.groupby("workload").agg(
        delay_ms=("delay_ms", "max"),
        has_sync=("collective", lambda c: bool(set(c) & set(SYNC_COLLECTIVES))),
        has_bls=("collective", lambda c: "bls" in set(c)),
        series=("series", "nunique"),
    )
    info["both"] = info["has_sync"] & info["has_bls"]
    info = info.fillna({"delay_ms": -1.0}).reset_index()
    info = info.sort_values(["both", "delay_ms", "series", "workload"], ascending=[0, 0, 0, 1])
    return str(info["workload"].iloc[0])


def pick_reference_workload(runs: pd.DataFrame, like: str | None = None) -> str | None:
    """A workload without delays to set beside a delayed one: the size-0 member of the same
    delay kind as ``like`` if the sweep has it, else a balanced workload; same ranks."""
    df = runs if "workload" in runs.columns else annotate_runs(runs)
    quiet = df[df["scenario_class"] == "balanced"]
    if like is not None and like in set(df["workload"]):
        ref = df[df["workload"] == like].iloc[0]
        if "world_size" in df.columns:
            quiet = quiet[quiet["world_size"] == ref["world_size"]]
        same_kind = quiet[quiet["delay_kind"] == ref["delay_kind"]]
        if not same_kind.empty:
            quiet = same_kind
    if quiet.empty:
        return None
    counts = quiet.groupby("workload")["series"].nunique().reset_index()
    counts = counts.sort_values(["series", "workload"], ascending=[False, True])
    return str(counts["workload"].iloc[0])


def representative_run(runs: pd.DataFrame, metric: str = "makespan_s") -> pd.Series:
    """Of several repetitions, the run whose ``metric`` is the median (lower middle)."""
    ordered = runs.sort_values([metric, "run_id"])
    return ordered.iloc[(len(ordered) - 1) // 2]


def missing_note(wanted: Iterable[str], present: Iterable[str], what: str = "series") -> str:
    """A one-line note naming what a sweep lacks (empty when nothing is missing)."""
    have = set(present)
    lacking = [w for w in wanted if w not in have]
    if not lacking:
        return ""
    return f"not in this sweep ({what}): {', '.join(lacking)}"


# --------------------------------------------------------------------------------------
# The protocol: thresholds and judged lag bounds a figure draws

PROTOCOL_PATH = "config/protocol.yaml"


def load_protocol(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The claims protocol (``config/protocol.yaml``), as :mod:`bls_dlrm.claims` reads it.

    Uses the claims module's own loader when it has one (so figures and the claims table
    read the same validated file; an invalid one raises), else parses the YAML. An absent
    file gives ``{}``: a figure then draws no threshold rather than one written into the
    notebook.
    """
    from bls_dlrm import claims

    file = project_path(path or PROTOCOL_PATH)
    if not file.is_file():
        return {}
    loader = getattr(claims, "load_protocol", None)
    if callable(loader):
        return dict(loader(file))
    import yaml

    return yaml.safe_load(file.read_text()) or {}


def protocol_claims(
    protocol: dict[str, Any], figure: str | None = None, metric: str | None = None
) -> list[dict[str, Any]]:
    """The claims and checks of a protocol (optionally: drawn on ``figure``, judged on
    ``metric``) that have a threshold."""
    entries = [*protocol.get("claims", []), *protocol.get("checks", [])]
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or "threshold" not in entry:
            continue
        if figure is not None and entry.get("figure") != figure:
            continue
        if metric is not None and entry.get("metric") != metric:
            continue
        out.append(entry)
    return out


def interval_settings(protocol: dict[str, Any]) -> dict[str, Any]:
    """``confidence``, ``seed`` and ``n_resamples`` of the protocol's ``statistics``
    section (defaults where absent), as keywords of :func:`speedup_intervals`."""
    stats = protocol.get("statistics") or {}
    return {
        "confidence": float(stats.get("confidence", CONFIDENCE)),
        "seed": int(stats.get("seed", BOOTSTRAP_SEED)),
        "n_resamples": int(stats["n_resamples"]) if "n_resamples" in stats else None,
    }


def threshold_text(threshold: dict[str, Any]) -> str:
    """``> 1.8x``, ``>= 0.9``, ``within 0.95-1.05``: a threshold spec for a legend."""
    op = threshold.get("op")
    if op == "within":
        return f"within {threshold['low']:g}-{threshold['high']:g}"
    return f"{op} {threshold.get('value', math.nan):g}"


# --------------------------------------------------------------------------------------
# Captions: what the drawn runs were, read from their header columns

#: Columns that name a run's dataset, most specific first.
DATASET_COLUMNS = ("config.tags.dataset", "config.dataset", "dataset")
#: Values of a ``config.delay.*`` column that say how an injected delay is spent.
DELAY_MODES = {
    "busy": "busy work on the rank's core",
    "work": "busy work on the rank's core",
    "compute": "busy work on the rank's core",
    "spin": "busy work on the rank's core",
    "cpu": "busy work on the rank's core",
    "sleep": "sleeping",
    "noisy": "a competing process on the rank's core",
    "noisy-neighbour": "a competing process on the rank's core",
    "noisy_neighbour": "a competing process on the rank's core",
}


def _span(values: Iterable[Any]) -> str:
    """``5`` or ``3-5`` (integers) from a set of values; ``?`` for none."""
    nums = sorted({int(v) for v in values if not _is_missing(v)})
    if not nums:
        return "?"
    return str(nums[0]) if nums[0] == nums[-1] else f"{nums[0]}-{nums[-1]}"


def _join_words(words: Sequence[str]) -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _dataset_kind(runs: pd.DataFrame) -> tuple[str, list[str]]:
    for col in DATASET_COLUMNS:
        if col in runs.columns:
            names = sorted({Path(str(v)).name for v in runs[col] if not _is_missing(v)})
            if names:
                criteo = [n for n in names if "criteo" in n.lower() and "synthetic" not in n]
                if criteo and len(criteo) == len(names):
                    return "Criteo", names
                if criteo:
                    return "mixed", names
                return "synthetic", names
    return "unrecorded", []


def _delay_modes(runs: pd.DataFrame) -> list[str]:
    modes = set()
    for col in runs.columns:
        if not col.startswith("config.delay."):
            continue
        for value in runs[col].dropna().unique():
            text = str(value).strip().lower()
            if text in DELAY_MODES:
                modes.add(DELAY_MODES[text])
    return sorted(modes)


def sweep_facts(runs: pd.DataFrame) -> dict[str, Any]:
    """What a caption must say about ``runs`` (the runs a figure draws), from the tables.

    Keys: ``ranks`` (sorted world sizes), ``placements`` (sorted :func:`placement_of`
    values), ``repetitions`` (``"5"`` or ``"3-5"``: runs per workload and series),
    ``iterations`` (measured iterations per run, same form), ``warmup`` (or ``"?"``),
    ``data`` (``synthetic``, ``Criteo``, ``mixed`` or ``unrecorded``), ``datasets``,
    ``delay_kinds`` (injected delay kinds, sorted), ``delay_modes`` (how delays are spent,
    if logged), ``stress`` (workloads of the stress class).
    """
    df = runs if "workload" in runs.columns else annotate_runs(runs)
    facts: dict[str, Any] = {
        "runs": len(df),
        "ranks": sorted({int(v) for v in df.get("world_size", pd.Series()).dropna()}),
        "placements": sorted(set(df["placement"])) if "placement" in df.columns else [],
        "repetitions": "?",
        "iterations": "?",
        "warmup": "?",
        "data": "unrecorded",
        "datasets": [],
        "delay_kinds": [],
        "delay_modes": [],
        "stress": [],
    }
    if df.empty:
        return facts
    facts["repetitions"] = _span(df.groupby(["workload", "series"]).size())
    for key, cols in (
        ("iterations", ("measured_iterations", "config.iterations")),
        ("warmup", ("config.warmup",)),
    ):
        col = next((c for c in cols if c in df.columns and df[c].notna().any()), None)
        if col is not None:
            facts[key] = _span(df[col])
    facts["data"], facts["datasets"] = _dataset_kind(df)
    delayed = df[df["scenario_class"] == "delayed"]
    if "stress" in set(df["scenario_class"]):
        stress = df[df["scenario_class"] == "stress"]
        delayed = pd.concat([delayed, stress[stress.apply(_is_delayed, axis=1)]])
        facts["stress"] = sorted(set(stress["workload"]))
    facts["delay_kinds"] = sorted(set(delayed["delay_kind"]))
    facts["delay_modes"] = _delay_modes(delayed)
    return facts


def caption(runs: pd.DataFrame, *, stress_label: bool = True) -> str:
    """One or two sentences for a figure's caption, computed from the runs it draws.

    Example: "2 ranks, bound one per core; 5 repetitions of 300 measured iterations
    (3 warm-up) per series; synthetic data (kaggle-50k); injected delays (synthetic:
    rotating, straggler; busy work on the rank's core)." Runs of the stress class are
    described apart, as a stress scenario no claim is judged on (when ``stress_label``).
    """
    df = runs if "workload" in runs.columns else annotate_runs(runs)
    if df.empty:
        return "No runs."
    stress = df[df["scenario_class"] == "stress"] if stress_label else df.iloc[0:0]
    main = df.drop(index=stress.index)
    text = _describe(main) if not main.empty else ""
    if not stress.empty:
        f = sweep_facts(stress)
        ranks = _join_words([str(r) for r in f["ranks"]]) or "?"
        text += (
            f" Stress scenario {', '.join(f['stress'])} ({ranks} ranks, "
            f"{_join_words(f['placements'])}; {f['repetitions']} repetitions): "
            "no claim is judged on it."
        )
    return text.strip()


def _describe(runs: pd.DataFrame) -> str:
    f = sweep_facts(runs)
    ranks = _join_words([str(r) for r in f["ranks"]]) or "?"
    parts = [f"{ranks} ranks, {_join_words(f['placements']) or UNRECORDED}"]
    warm = f" ({f['warmup']} warm-up)" if f["warmup"] != "?" else ""
    parts.append(
        f"{f['repetitions']} repetitions of {f['iterations']} measured iterations{warm} per series"
    )
    data = {
        "synthetic": "synthetic data",
        "Criteo": "Criteo data",
        "mixed": "synthetic and Criteo data",
    }.get(f["data"], "data source not recorded")
    if f["datasets"]:
        data += f" ({', '.join(f['datasets'])})"
    parts.append(data)
    if f["delay_kinds"]:
        how = f"; {_join_words(f['delay_modes'])}" if f["delay_modes"] else ""
        parts.append(f"injected delays (synthetic: {', '.join(f['delay_kinds'])}{how})")
    else:
        parts.append("no injected delays")
    return "; ".join(parts) + "."


def footnote(fig: Figure, text: str, *, pad_pt: float = 4.0) -> None:
    """Write ``text`` under everything drawn on ``fig`` (axes, tick labels, axis labels),
    wrapped to the figure's width, in small grey type. Call it after the figure's layout
    is final (after ``tight_layout``); ``save_figure`` keeps it (tight bounding box)."""
    import textwrap

    from matplotlib.font_manager import FontProperties

    if not text:
        return
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes]
    boxes = [b for b in boxes if b is not None]
    width_px, height_px = fig.bbox.width, fig.bbox.height
    bottom = min((b.y0 for b in boxes), default=0.0) / height_px
    left = min((b.x0 for b in boxes), default=0.0) / width_px
    right = max((b.x1 for b in boxes), default=width_px) / width_px
    size_pt = FontProperties(size="x-small").get_size_in_points()
    span_in = (right - left) * fig.get_size_inches()[0]
    chars = max(int(span_in * 72 / (0.52 * size_pt)), 30)
    fig.text(
        left,
        bottom - pad_pt / 72 / fig.get_size_inches()[1],
        "\n".join(textwrap.wrap(text, chars, break_on_hyphens=False)),
        ha="left",
        va="top",
        fontsize=size_pt,
        color="#555555",
        linespacing=1.15,
    )


# --------------------------------------------------------------------------------------
# Log axes with plain numbers


def plain_number(value: float) -> str:
    """``0.5``, ``20``, ``1000``: a tick label without exponents."""
    text = np.format_float_positional(float(value), precision=6, trim="-")
    return text.rstrip(".")


def plain_log_ticks(low: float, high: float, min_ticks: int = 3) -> list[float]:
    """Ticks for a log axis spanning [low, high]: decades if they give ``min_ticks``, else
    1-3 steps, else 1-2-5 steps, else 1..9 steps, else ``min_ticks`` geometric steps
    rounded to as few digits (at least 2) as keep them apart."""
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0 or high <= low:
        raise ValueError(f"need 0 < low < high, got {low}, {high}")
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    ticks: list[float] = []
    for subs in ((1,), (1, 3), (1, 2, 5), tuple(range(1, 10))):
        ticks = [
            float(f"{m * 10.0**e:.12g}")
            for e in range(first, last + 1)
            for m in subs
            if low <= m * 10.0**e <= high
        ]
        if len(ticks) >= min_ticks:
            return ticks
    geo = np.geomspace(low, high, min_ticks + 2)[1:-1]
    for digits in range(2, 7):
        rounded = sorted({float(f"{v:.{digits}g}") for v in geo} | set(ticks))
        if len(rounded) >= min_ticks:
            break
    return rounded


def set_plain_log_axis(ax: Axes, axis: str = "x", min_ticks: int = 3) -> list[float]:
    """Put readable major ticks on a log axis (``10``, ``20``, ``50`` ms, not 10^x) for its
    current limits; minor ticks stay, unlabelled. Returns the ticks set."""
    from matplotlib.ticker import FixedLocator, NullFormatter

    which = ax.xaxis if axis == "x" else ax.yaxis
    low, high = ax.get_xlim() if axis == "x" else ax.get_ylim()
    ticks = plain_log_ticks(min(low, high), max(low, high), min_ticks)
    which.set_major_locator(FixedLocator(ticks))
    which.set_ticklabels([plain_number(t) for t in ticks])
    which.set_minor_formatter(NullFormatter())
    (ax.set_xlim if axis == "x" else ax.set_ylim)(low, high)
    return ticks


# --------------------------------------------------------------------------------------
# Drawn data


def save_drawn_data(data: pd.DataFrame, out_dir: str | os.PathLike[str], name: str) -> Path:
    """Write exactly the points a figure plots as ``<out_dir>/<name>.csv`` (atomically).

    Tests compare this file with values computed from the tables, so a figure that plots
    the wrong column or a placeholder is caught; readers can re-plot it without the tables.
    """
    out = resolve_out_dir(out_dir)
    path = out / f"{name}.csv"
    tmp = out / f".{name}.tmp.csv"
    data.to_csv(tmp, index=False, float_format="%.10g")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------
# Style and palette

COLUMN_WIDTH_IN = 3.3
#: Synchronous baselines in greys; BLS along a dark-blue -> orange ramp by lag bound.
SYNC_COLORS = {"mpi": "#222222", "gloo": "#8a8a8a"}
SERIES_MARKERS = {"mpi": "s", "gloo": "D"}
BLS_MARKER = "o"
COMPONENT_COLORS = {
    "compute": "#4C72B0",
    "injected delay": "#DD8452",
    "blocked wait": "#C44E52",
    "other": "#CFCFCF",
}
CLASS_COLORS = {
    "balanced": "#7f9fbf",
    "skewed": "#8c6bb1",
    "delayed": "#e08214",
    "stress": "#999999",
}
_BLS_RAMP = ("plasma", 0.05, 0.82)  # colormap, position of L=0, position of L=16 and above
_BLS_RAMP_TOP = 16

STYLES = {
    # name: (font size, figure width in inches)
    "paper": (8.0, COLUMN_WIDTH_IN),
    "notebook": (11.0, 6.0),
}


def bls_color(lag_bound: int) -> str:
    """Colour of ``bls L=lag_bound``: a fixed function of L, the same in every sweep."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    name, lo, hi = _BLS_RAMP
    pos = min(math.log2(max(lag_bound, 0) + 1) / math.log2(_BLS_RAMP_TOP + 1), 1.0)
    return to_hex(colormaps[name](lo + (hi - lo) * pos))


def palette(labels: Iterable[str]) -> dict[str, str]:
    """Series label -> colour, for ``hue=`` in seaborn (unknown labels get a neutral grey)."""
    colours: dict[str, str] = {}
    for label in labels:
        lag = lag_of(label)
        if lag is not None:
            colours[label] = bls_color(lag)
        else:
            colours[label] = SYNC_COLORS.get(label, "#b0b0b0")
    return colours


def series_markers(labels: Iterable[str]) -> dict[str, str]:
    """Series label -> marker: squares and diamonds for the baselines, circles for BLS."""
    return {label: SERIES_MARKERS.get(label, BLS_MARKER) for label in labels}


def set_style(style: str = "paper") -> None:
    """Seaborn/matplotlib defaults: ``paper`` is sized for a 3.3 in column, ``notebook``
    for the screen. Always selects the non-interactive ``agg`` backend."""
    import matplotlib

    matplotlib.use("agg")
    import seaborn as sns

    if style not in STYLES:
        raise ValueError(f"style must be one of {sorted(STYLES)}, got {style!r}")
    size, _ = STYLES[style]
    sns.set_theme(
        context="paper",
        style="ticks",
        rc={
            "font.size": size,
            "axes.titlesize": size,
            "axes.labelsize": size,
            "xtick.labelsize": size - 1,
            "ytick.labelsize": size - 1,
            "legend.fontsize": size - 1,
            "legend.title_fontsize": size - 1,
            "axes.linewidth": 0.6,
            "xtick.major.width": 0.6,
            "ytick.major.width": 0.6,
            "lines.linewidth": 1.2,
            "lines.markersize": 4.0 if style == "paper" else 6.0,
            "grid.linewidth": 0.4,
            "legend.frameon": False,
            "pdf.fonttype": 42,  # embed TrueType: text stays text in the PDF
            "ps.fonttype": 42,
            "savefig.bbox": "tight",
            "savefig.pad_inches": 0.02,
            "figure.dpi": 100,
        },
    )
    _CURRENT["style"] = style


_CURRENT: dict[str, str] = {"style": "paper"}


def figsize(height_ratio: float = 0.75, style: str | None = None) -> tuple[float, float]:
    """(width, height) in inches: the column width of the style, height = ratio x width."""
    _, width = STYLES[style or _CURRENT["style"]]
    return (width, width * height_ratio)


def placeholder(ax: Axes, message: str) -> None:
    """Mark an empty panel: the sweep has nothing to draw here; say why, on the figure."""
    ax.text(
        0.5,
        0.5,
        message,
        ha="center",
        va="center",
        wrap=True,
        fontsize="small",
        color="#666666",
        transform=ax.transAxes,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig: Figure, out_dir: str | os.PathLike[str], name: str) -> list[Path]:
    """Write ``<out_dir>/<name>.pdf`` and ``.png`` (300 dpi); returns both paths.

    Files are written under a temporary name and renamed, so an interrupted notebook never
    leaves a half-written figure that looks up to date.
    """
    out = resolve_out_dir(out_dir)
    paths = []
    for ext, kwargs in (("pdf", {}), ("png", {"dpi": 300})):
        path = out / f"{name}.{ext}"
        tmp = out / f".{name}.tmp.{ext}"
        fig.savefig(tmp, format=ext, metadata=_metadata(ext), **kwargs)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def _metadata(ext: str) -> dict[str, Any]:
    # Fixed metadata keeps rebuilt PDFs byte-stable (no creation date).
    if ext == "pdf":
        return {"CreationDate": None, "Creator": "bls_dlrm.plotting"}
    return {"Software": "bls_dlrm.plotting"}
