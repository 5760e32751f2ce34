"""Workloads: what a run is, apart from its series.

A *workload* is the run's flattened ``config.*`` columns and ``world_size``, less the keys
that choose the collective or only label a run; runs of one workload are compared side by
side. Its *scenario* is the ``config.tags.scenario`` tag, its *class* one of balanced,
skewed, delayed or stress (a labeled stress scenario, never judged), and its *placement*
whether ranks were bound one per core.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from bls_dlrm.series import SYNC_COLLECTIVES, is_missing, series_label

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
    return "-" if is_missing(value) else str(value)


def _format_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g}"


def _delay_ms(row: pd.Series) -> float:
    size = row.get("config.delay.size_s")
    if is_missing(size):
        return 0.0 if _delay_kind(row) in NO_DELAY_KINDS else math.nan
    return float(size) * 1e3


def _delay_kind(row: pd.Series) -> str:
    kind = row.get("config.delay.kind")
    return "none" if is_missing(kind) else str(kind)


def _is_delayed(row: pd.Series) -> bool:
    kind = _delay_kind(row)
    if kind in NO_DELAY_KINDS:
        return False
    if kind in ("trace", "heterogeneous"):
        return True
    size = row.get("config.delay.size_s")
    return not is_missing(size) and float(size) > 0


def _scenario_name(row: pd.Series) -> str:
    tag = row.get("config.tags.scenario")
    if not is_missing(tag) and str(tag):
        return str(tag)
    kind = _delay_kind(row)
    if kind in NO_DELAY_KINDS:
        plan = row.get("config.plan")
        return "balanced" if is_missing(plan) or plan != "unbalanced" else "unbalanced"
    size = row.get("config.delay.size_s")
    return kind if is_missing(size) else f"{kind} {_format_ms(float(size))} ms"


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
        if not is_missing(value) and str(value) not in even:
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
        if is_missing(value):
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
