"""A series: one collective of a launch and, for BLS, its lag bound.

The unit every table, figure and claim compares. One type, three spellings of it, each
made here and nowhere else: the config form ``bls:4`` (:attr:`Series.spec`, the only one
parsed, from user input), the name in tables and figures ``bls L=4`` (:attr:`Series.label`)
and a run folder's name ``bls-L4`` (:attr:`Series.folder`). The lag bound is an int.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

COLLECTIVES = ("gloo", "mpi", "bls")
#: torch.distributed backend behind each collective name of the configs
BACKENDS = {"gloo": "gloo", "mpi": "mpisync", "bls": "bls"}


class SeriesError(ValueError):
    """A series that is not ``gloo``, ``mpi`` or ``bls:L``; the message says which."""


@dataclass(frozen=True)
class Series:
    """One collective of a launch: ``gloo``, ``mpi`` or ``bls:L``."""

    collective: str
    lag_bound: int = 0

    @classmethod
    def parse(cls, text: Any) -> Series:
        if not isinstance(text, str):
            raise SeriesError(f"series: entries are strings like 'gloo' or 'bls:4', got {text!r}")
        name, sep, lag = text.strip().partition(":")
        if name not in COLLECTIVES:
            raise SeriesError(f"series: {text!r} is not gloo, mpi or bls:L")
        if name != "bls":
            if sep:
                raise SeriesError(f"series: {text!r}: {name} is synchronous, it takes no lag bound")
            return cls(name, 0)
        if not sep or not lag.strip().isdigit():
            raise SeriesError(f"series: {text!r}: give the lag bound as bls:L with L >= 0")
        return cls("bls", int(lag))

    @property
    def backend(self) -> str:
        """The torch.distributed backend name."""
        return BACKENDS[self.collective]

    @classmethod
    def from_folder(cls, name: str) -> Series:
        """The series of a run folder (:attr:`folder`): ``bls-L4`` -> ``Series("bls", 4)``."""
        if name.startswith("bls-L") and name[5:].isdigit():
            return cls("bls", int(name[5:]))
        if name in COLLECTIVES and name != "bls":
            return cls(name)
        raise SeriesError(f"{name!r} is not a series' run folder (gloo, mpi, bls-L<lag>)")

    @property
    def folder(self) -> str:
        """A run folder's name and a run id's suffix: ``gloo``, ``mpi``, ``bls-L4``."""
        return f"bls-L{self.lag_bound}" if self.collective == "bls" else self.collective

    @property
    def label(self) -> str:
        """The name in tables, figures and the claims: ``gloo``, ``mpi``, ``bls L=4``."""
        return f"bls L={self.lag_bound}" if self.collective == "bls" else self.collective

    @property
    def spec(self) -> str:
        """The config and command-line form, which :meth:`parse` reads: ``bls:4``."""
        return f"bls:{self.lag_bound}" if self.collective == "bls" else self.collective


def is_missing(value: Any) -> bool:
    """None, NaN or pandas' NA: a table cell without a value (a run without a lag bound)."""
    if value is None or repr(value) == "<NA>":
        return True
    return isinstance(value, float) and math.isnan(value)


SYNC_COLLECTIVES = ("gloo", "mpi")


#: The synchronous series, in the one order every table, figure and tie-break uses: gloo,
#: mpi, and the BLS engine with L = 0, which is the same synchronous exchange. Comparing a
#: lag bound L >= 1 with these measures what the lag bound adds, not how our engine
#: compares with MPI's.
SYNC_SERIES = (*(Series(c).label for c in SYNC_COLLECTIVES), Series("bls", 0).label)


def series_label(collective: str, lag_bound: Any = None) -> str:
    """The :attr:`Series.label` of a table row's ``collective`` and ``lag_bound`` (a missing
    lag bound is 0); other collective names (a benchmark's ``native``) as they are."""
    if collective == "bls":
        return Series("bls", 0 if is_missing(lag_bound) else int(lag_bound)).label
    return str(collective)


def series_sort_key(label: str) -> tuple[int, float, str]:
    """Synchronous baselines first (gloo, mpi), then BLS by increasing lag bound."""
    lag = lag_of(label)
    if lag is not None:
        return (1, float(lag), label)
    order = {name: i for i, name in enumerate(SYNC_COLLECTIVES)}
    return (0, order.get(label, len(order)), label)


def lag_of(label: str) -> int | None:
    """The lag bound of a :attr:`Series.label` (``bls L=4`` -> 4); None for other series.

    The inverse of the label, beside it, for figures that hold only the labels they draw.
    """
    name, sep, lag = label.partition(" L=")
    if name != "bls" or not sep or not lag.isdigit():
        return None
    return int(lag)
