"""A series: one collective of a launch and, for BLS, its lag bound.

The unit every table, figure and claim compares: ``gloo``, ``mpi``, ``bls L=0``, ``bls L=8``.
"""

from __future__ import annotations

import math
from typing import Any


def _is_missing(value: Any) -> bool:
    """None, NaN or pandas' NA (a table cell with no lag bound)."""
    if value is None or repr(value) == "<NA>":
        return True
    return isinstance(value, float) and math.isnan(value)


SYNC_COLLECTIVES = ("gloo", "mpi")


#: The synchronous series, in the one order every table, figure and tie-break uses: gloo,
#: mpi, and the BLS engine with L = 0, which is the same synchronous exchange. Comparing a
#: lag bound L >= 1 with these measures what the lag bound adds, not how our engine
#: compares with MPI's.
SYNC_SERIES = (*SYNC_COLLECTIVES, "bls L=0")


def series_label(collective: str, lag_bound: Any = None) -> str:
    """``mpi``, ``gloo`` or ``bls L=<lag bound>``: the unit every figure compares."""
    if collective == "bls":
        lag = 0 if _is_missing(lag_bound) else int(lag_bound)
        return f"bls L={lag}"
    return str(collective)


def series_sort_key(label: str) -> tuple[int, float, str]:
    """Synchronous baselines first (gloo, mpi), then BLS by increasing lag bound."""
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
