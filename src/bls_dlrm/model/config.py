"""Model configurations: the DLRM shapes of the Criteo benchmarks, scaled by a row cap.

A configuration is plain data so that it can travel in a log header or a dataset manifest
and be rebuilt exactly on every rank. The named configurations copy the shapes of the
reference DLRM code (the paper we reproduce gives none of its own):

- ``kaggle``: Criteo Kaggle display-advertising data; 26 tables with the cardinalities of the
  reference preprocessing, d = 16, bottom MLP 13-512-256-64-16, top MLP 512-256-1.
- ``terabyte``: the MLPerf DLRM benchmark on Criteo Terabyte (day 23 counts, every table
  capped at 40M rows as MLPerf does), d = 128, bottom 13-512-256-128, top 1024-1024-512-256-1.
- ``tiny``: four small tables and narrow MLPs, for tests and smoke runs.

``max_rows`` caps every table (``rows = min(table_rows, max_rows)``) so that the full table
count and MLP shapes fit one machine; indices are drawn or hashed into the capped range.
The top MLP's input width is not configured but follows from the interaction, as in the
reference code (367 for ``kaggle`` with the dot interaction).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CONFIGS",
    "INTERACTIONS",
    "KAGGLE_ROWS",
    "TERABYTE_ROWS",
    "TERABYTE_ROW_CAP",
    "ModelConfig",
    "get_config",
]

INTERACTIONS = ("dot", "cat")

#: Criteo Kaggle table cardinalities (reference DLRM preprocessing, in feature order).
KAGGLE_ROWS: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip

#: MLPerf's per-table cap for Criteo Terabyte.
TERABYTE_ROW_CAP = 40_000_000

#: Criteo Terabyte table cardinalities (day 23 counts as used by MLPerf), capped at 40M.
TERABYTE_ROWS: tuple[int, ...] = tuple(
    min(rows, TERABYTE_ROW_CAP)
    for rows in (
        39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346,
        10, 2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972,
        108, 36,
    )
)  # fmt: skip


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return int(value)


def _int_list(key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{key} must be a non-empty list of positive integers, got {value!r}")
    return tuple(_positive_int(f"{key}[{i}]", v) for i, v in enumerate(value))


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and seed of one DLRM; immutable so that every rank can trust a copy.

    ``table_rows`` are the tables' full cardinalities; ``rows`` applies ``max_rows`` and is
    what is allocated and what data indices range over. ``bottom_mlp`` and ``top_mlp`` list
    the output widths of each layer (inputs are ``num_dense`` and the interaction width);
    the bottom MLP must end in ``embedding_dim`` so that the dense vector can meet the
    embeddings, and the top MLP in 1, the click probability.
    """

    name: str
    embedding_dim: int
    table_rows: tuple[int, ...]
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    num_dense: int = 13
    interaction: str = "dot"
    max_rows: int | None = None
    seed: int = 0
    # Derived; kept out of equality and repr so they never disagree with the fields above.
    rows: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        set_ = object.__setattr__  # frozen: normalise inputs once, here
        set_(self, "embedding_dim", _positive_int("embedding_dim", self.embedding_dim))
        set_(self, "table_rows", _int_list("table_rows", self.table_rows))
        set_(self, "bottom_mlp", _int_list("bottom_mlp", self.bottom_mlp))
        set_(self, "top_mlp", _int_list("top_mlp", self.top_mlp))
        set_(self, "num_dense", _positive_int("num_dense", self.num_dense))
        if self.interaction not in INTERACTIONS:
            raise ValueError(f"interaction must be one of {INTERACTIONS}, got {self.interaction!r}")
        if self.max_rows is not None:
            set_(self, "max_rows", _positive_int("max_rows", self.max_rows))
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        set_(self, "seed", int(self.seed))
        if self.bottom_mlp[-1] != self.embedding_dim:
            raise ValueError(
                f"bottom_mlp must end in embedding_dim={self.embedding_dim} so the dense "
                f"vector can interact with the embeddings, got bottom_mlp={list(self.bottom_mlp)}"
            )
        if self.top_mlp[-1] != 1:
            raise ValueError(
                f"top_mlp must end in 1 (the click probability), got top_mlp={list(self.top_mlp)}"
            )
        cap = self.max_rows
        set_(self, "rows", tuple(r if cap is None else min(r, cap) for r in self.table_rows))

    @property
    def num_tables(self) -> int:
        return len(self.table_rows)

    @property
    def top_input_width(self) -> int:
        """Width of the interaction output, i.e. of the top MLP's input.

        ``dot``: the dense vector plus the strict lower triangle of the Gram matrix of the
        T+1 vectors [bottom output, T embeddings]; ``cat``: all T+1 vectors side by side.
        """
        n = self.num_tables + 1
        if self.interaction == "dot":
            return self.embedding_dim + n * (n - 1) // 2
        return self.embedding_dim * n

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (lists, not tuples); ``from_dict`` inverts it."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Rebuild a config from ``to_dict`` output; unknown keys are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))


CONFIGS: dict[str, ModelConfig] = {
    "kaggle": ModelConfig(
        name="kaggle",
        embedding_dim=16,
        table_rows=KAGGLE_ROWS,
        bottom_mlp=(512, 256, 64, 16),
        top_mlp=(512, 256, 1),
    ),
    "terabyte": ModelConfig(
        name="terabyte",
        embedding_dim=128,
        table_rows=TERABYTE_ROWS,
        bottom_mlp=(512, 256, 128),
        top_mlp=(1024, 1024, 512, 256, 1),
    ),
    "tiny": ModelConfig(
        name="tiny",
        embedding_dim=8,
        table_rows=(100, 250, 500, 1000),
        bottom_mlp=(16, 8),
        top_mlp=(16, 1),
    ),
}


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The named configuration with some fields replaced, e.g. ``max_rows=100_000``.

    Raises ``ValueError`` naming the unknown configuration, the unknown key, or the key whose
    value is invalid, so that a typo in a workflow config fails before any job starts.
    """
    try:
        base = CONFIGS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model config {name!r}; known configs: {sorted(CONFIGS)}"
        ) from None
    known = {f.name for f in dataclasses.fields(ModelConfig) if f.init}
    for key in overrides:
        if key not in known:
            raise ValueError(
                f"unknown model config key {key!r} for config {name!r}; known: {sorted(known)}"
            )
    return dataclasses.replace(base, **overrides)
