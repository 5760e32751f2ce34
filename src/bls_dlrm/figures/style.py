"""Figure style: palette, markers, sizes, plain log axes, saving figures and drawn data.

Matplotlib and seaborn are imported inside the drawing helpers only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bls_dlrm.paths import resolve_out_dir
from bls_dlrm.series import lag_of

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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
        return {"CreationDate": None, "Creator": "bls_dlrm.figures"}
    return {"Software": "bls_dlrm.figures"}
