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
- **scenario class**: ``delayed`` when the delay schedule injects anything, ``skewed`` when
  the scenario name, the table placement or the data tags say the work is uneven
  (:data:`SKEW_HINTS`, :data:`SKEW_COLUMNS`), otherwise ``balanced``.
- **synchronous baseline** of a workload: the median throughput of ``mpi`` (the DESIGN's
  baseline), or the better of ``mpi`` and ``gloo`` ("best synchronous").

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
    "CLASS_COLORS",
    "COLUMN_WIDTH_IN",
    "COMPONENT_COLORS",
    "SYNC_COLLECTIVES",
    "SYNC_SERIES",
    "annotate_runs",
    "attach_labels",
    "best_bls",
    "figsize",
    "find_project_root",
    "load_table",
    "load_tables",
    "missing_note",
    "most_common",
    "palette",
    "pick_delayed_workload",
    "pick_reference_workload",
    "placeholder",
    "primary_delay_kind",
    "project_path",
    "representative_run",
    "resolve_out_dir",
    "save_figure",
    "series_label",
    "series_markers",
    "series_sort_key",
    "set_style",
    "sync_baseline",
    "with_speedup",
    "workload_columns",
]

SYNC_COLLECTIVES = ("mpi", "gloo")
#: The synchronous series: mpi, gloo, and the BLS engine with L = 0, which is the same
#: synchronous exchange. Comparing the best lag bound L >= 1 with the best of these
#: measures what the lag bound adds, not how our engine compares with MPI's.
SYNC_SERIES = (*SYNC_COLLECTIVES, "bls L=0")
TABLE_NAMES = ("runs", "per_iteration", "iterations")

#: Config keys that pick or label the collective rather than describe the workload.
NOT_WORKLOAD = frozenset(
    {
        "config.collective",
        "config.lag_bound",
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
CLASS_ORDER = ("balanced", "skewed", "delayed")

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
    """One table (``runs``, ``per_iteration`` or ``iterations``) of a sweep.

    ``columns`` limits what is read (the iterations table can be large); names that the
    table lacks are skipped rather than failing, so notebooks survive older tables.
    """
    if name not in TABLE_NAMES:
        raise ValueError(f"unknown table {name!r}; expected one of {TABLE_NAMES}")
    path = project_path(tables_dir) / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such table (build it with `bls-dlrm tables`)")
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


def _lag_of(label: str) -> int | None:
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


def annotate_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """A copy of a runs (or per-iteration, or iterations) table with the labels figures use.

    Adds ``series``, ``scenario``, ``scenario_class`` (balanced/skewed/delayed),
    ``delay_kind``, ``delay_ms`` and ``workload`` (a short id, equal for runs that differ
    only in collective, lag bound or repetition). Missing config columns are tolerated.
    """
    df = runs.copy()
    if df.empty:
        for col in ("series", "scenario", "scenario_class", "delay_kind", "workload"):
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


def sync_baseline(
    runs: pd.DataFrame, how: str = "mpi", metric: str = "throughput_sps"
) -> pd.Series:
    """Median ``metric`` of the synchronous baseline per workload (index: workload).

    ``how="mpi"`` uses mpi and falls back to the best synchronous series when a workload
    has no mpi run; ``how="best"`` takes the best of :data:`SYNC_SERIES` (highest
    throughput, or lowest value for latency and makespan metrics). Workloads without any
    synchronous run are absent from the result.
    """
    df = runs if "workload" in runs.columns else annotate_runs(runs)
    sync = df[df["series"].isin(SYNC_SERIES)]
    if sync.empty:
        return pd.Series(dtype="float64", name=metric)
    med = sync.groupby(["workload", "series"])[metric].median().unstack("series")
    lower_is_better = metric.startswith("latency") or metric.startswith("makespan")
    best = med.min(axis=1) if lower_is_better else med.max(axis=1)
    if how == "best":
        out = best
    elif how == "mpi":
        out = med["mpi"].fillna(best) if "mpi" in med.columns else best
    else:
        raise ValueError(f"how must be 'mpi' or 'best', got {how!r}")
    return out.dropna().rename(metric)


def with_speedup(runs: pd.DataFrame, how: str = "mpi") -> pd.DataFrame:
    """Annotated runs with ``speedup`` = throughput / the workload's synchronous baseline.

    Runs of one workload process the same samples, so this equals the makespan ratio.
    NaN where the workload has no synchronous run.
    """
    df = runs if "workload" in runs.columns else annotate_runs(runs)
    base = sync_baseline(df, how=how)
    df = df.copy()
    df["baseline_sps"] = df["workload"].map(base).astype("float64")
    df["speedup"] = df["throughput_sps"] / df["baseline_sps"]
    return df


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
    out["lag_bound"] = [_lag_of(s) for s in out["series"]]
    return out


LABEL_COLUMNS = ("series", "scenario", "scenario_class", "delay_kind", "delay_ms", "workload")


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
CLASS_COLORS = {"balanced": "#7f9fbf", "skewed": "#8c6bb1", "delayed": "#e08214"}
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
        lag = _lag_of(label)
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
