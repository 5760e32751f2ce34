"""The sparse half of a batch: per-table bags of row indices in one packed structure.

Layout (the only one used across the project, from the dataset files to the lookups):

- ``indices``: 1-D int64, every table's indices one after another (table-major); within a
  table, sample 0's bag, then sample 1's, ...
- ``offsets``: int64 of shape ``(T, B + 1)``; row ``t`` is table ``t``'s offsets into its own
  segment of ``indices`` in ``torch.nn.EmbeddingBag``'s ``include_last_offset`` form: it
  starts at 0 and ends at that table's index count, and bag ``b`` is
  ``segment[offsets[t, b]:offsets[t, b + 1]]``. Empty bags are allowed (they sum to 0).

Why this shape: table ``t``'s ``(indices, offsets)`` pair is two zero-copy views, exactly what
``EmbeddingBag`` takes, so a rank touches only its own tables' memory; a batch is a handful
of contiguous arrays, cheap to memory-map from disk and to slice by sample for the
exchange.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

__all__ = ["SparseBatch"]


@dataclass(frozen=True, eq=False)
class SparseBatch:
    """``T`` tables' bags for ``B`` samples; see the module docstring for the layout."""

    indices: torch.Tensor
    offsets: torch.Tensor

    def __post_init__(self) -> None:
        if self.indices.dtype != torch.int64 or self.indices.dim() != 1:
            raise ValueError(
                f"indices must be a 1-D int64 tensor, got {self.indices.dtype} "
                f"of shape {tuple(self.indices.shape)}"
            )
        if self.offsets.dtype != torch.int64 or self.offsets.dim() != 2:
            raise ValueError(
                f"offsets must be a 2-D int64 tensor (tables, batch + 1), got "
                f"{self.offsets.dtype} of shape {tuple(self.offsets.shape)}"
            )
        if self.offsets.shape[1] < 1:
            raise ValueError("offsets needs at least one column (batch + 1 >= 1)")
        if self.offsets.numel() and (
            bool((self.offsets[:, 0] != 0).any())
            or bool((self.offsets[:, 1:] < self.offsets[:, :-1]).any())
        ):
            raise ValueError("every table's offsets must start at 0 and never decrease")
        if sum(self.table_counts) != self.indices.numel():
            raise ValueError(
                f"offsets announce {sum(self.table_counts)} indices, "
                f"indices holds {self.indices.numel()}"
            )

    @property
    def num_tables(self) -> int:
        return self.offsets.shape[0]

    @property
    def batch_size(self) -> int:
        return self.offsets.shape[1] - 1

    @cached_property
    def table_counts(self) -> list[int]:
        """Number of indices of each table (its segment length in ``indices``)."""
        return self.offsets[:, -1].tolist()

    @cached_property
    def table_starts(self) -> list[int]:
        """Where each table's segment starts in ``indices``."""
        starts, pos = [], 0
        for count in self.table_counts:
            starts.append(pos)
            pos += count
        return starts

    def table(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Table ``t``'s ``(indices, offsets)``, zero-copy views in EmbeddingBag form."""
        start = self.table_starts[t]
        return self.indices[start : start + self.table_counts[t]], self.offsets[t]

    def lengths(self) -> torch.Tensor:
        """Bag sizes (pooling factors), shape ``(T, B)``."""
        return self.offsets[:, 1:] - self.offsets[:, :-1]

    def select(self, table_ids: Sequence[int]) -> SparseBatch:
        """The given tables, in the given order (what a shard's ``forward`` takes)."""
        table_ids = list(table_ids)
        if not table_ids:
            return SparseBatch(
                self.indices.new_empty(0), self.offsets.new_zeros(0, self.batch_size + 1)
            )
        parts = [self.table(t)[0] for t in table_ids]
        return SparseBatch(torch.cat(parts), self.offsets[table_ids].contiguous())

    def slice(self, start: int, stop: int) -> SparseBatch:
        """Samples ``start:stop`` of every table: one rank's part of the global batch."""
        if not 0 <= start <= stop <= self.batch_size:
            raise ValueError(f"sample slice {start}:{stop} outside the batch of {self.batch_size}")
        bounds = self.offsets[:, [start, stop]].tolist()
        parts = [
            self.indices[s0 + lo : s0 + hi]
            for s0, (lo, hi) in zip(self.table_starts, bounds, strict=True)
        ]
        offsets = self.offsets[:, start : stop + 1]
        offsets = (offsets - offsets[:, :1]).contiguous()
        indices = torch.cat(parts) if parts else self.indices.new_empty(0)
        return SparseBatch(indices, offsets)

    @classmethod
    def from_lengths(
        cls, indices: torch.Tensor | np.ndarray, lengths: torch.Tensor | np.ndarray
    ) -> SparseBatch:
        """Build from packed indices and per-sample bag sizes ``lengths`` of shape (T, B)."""
        lengths_np = np.asarray(lengths)
        if lengths_np.ndim != 2:
            raise ValueError(f"lengths must have shape (tables, batch), got {lengths_np.shape}")
        offsets = np.zeros((lengths_np.shape[0], lengths_np.shape[1] + 1), dtype=np.int64)
        np.cumsum(lengths_np, axis=1, dtype=np.int64, out=offsets[:, 1:])
        if isinstance(indices, np.ndarray):
            indices = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64))
        return cls(indices, torch.from_numpy(offsets))

    @classmethod
    def from_tables(cls, tables: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> SparseBatch:
        """Pack per-table ``(indices, offsets)`` pairs, each offsets of length B + 1."""
        if not tables:
            raise ValueError("from_tables needs at least one table")
        indices = torch.cat([torch.as_tensor(i, dtype=torch.int64) for i, _ in tables])
        offsets = torch.stack([torch.as_tensor(o, dtype=torch.int64) for _, o in tables])
        return cls(indices, offsets)

    @classmethod
    def concat(cls, parts: Sequence[SparseBatch]) -> SparseBatch:
        """The samples of ``parts`` one after the other (same tables in each)."""
        if not parts:
            raise ValueError("concat needs at least one batch")
        tables = {p.num_tables for p in parts}
        if len(tables) != 1:
            raise ValueError(f"concat: batches hold different table counts {sorted(tables)}")
        pieces, offsets, base = [], [parts[0].offsets[:, :1]], parts[0].offsets[:, :1] * 0
        for p in parts:
            offsets.append(p.offsets[:, 1:] + base)
            base = base + p.offsets[:, -1:]
        for t in range(parts[0].num_tables):
            pieces.extend(p.table(t)[0] for p in parts)
        return cls(torch.cat(pieces), torch.cat(offsets, dim=1).contiguous())

    def equal(self, other: SparseBatch) -> bool:
        """Same bags in every table (exact)."""
        return torch.equal(self.offsets, other.offsets) and torch.equal(self.indices, other.indices)
