"""Our batches as TorchRec ``KeyedJaggedTensor`` s: the same samples for both loops.

Notation: T tables, B global batch, W ranks, b = B / W samples per rank.

A dataset batch (``bls_dlrm.data.BatchStore``) holds ``lengths`` (T, B) and ``indices``
table-major, then sample, then bag: exactly a KJT's key-major layout. Table ``t`` is key
``f{t}`` (feature) of table ``t{t}``. Every rank feeds its own slice of the global batch,
samples ``[r * b, (r + 1) * b)`` with their dense rows, as TorchRec's data-parallel input
expects; after the input distribution the rank holding table ``t`` has all B samples' bags
of it, which is the layout our own loop starts from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

__all__ = [
    "check_features",
    "feature_keys",
    "local_batch",
    "rank_slice",
    "table_names",
    "to_kjt",
]


def feature_keys(num_tables: int) -> list[str]:
    """KJT keys of ``num_tables`` tables, in table order."""
    return [f"f{t}" for t in range(num_tables)]


def table_names(num_tables: int) -> list[str]:
    """Embedding table names (``EmbeddingBagConfig.name``), in table order."""
    return [f"t{t}" for t in range(num_tables)]


def rank_slice(batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s samples ``[lo, hi)`` of a global batch; B must divide by W."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} ranks")
    if batch_size % world:
        raise ValueError(
            f"global batch size {batch_size} is not divisible by {world} ranks: TorchRec's "
            f"table-wise plan gives every rank the same local batch (B / W samples); use a "
            f"batch size that is a multiple of {world}"
        )
    per = batch_size // world
    return rank * per, (rank + 1) * per


def to_kjt(lengths: np.ndarray, indices: np.ndarray, keys: Sequence[str]) -> KeyedJaggedTensor:
    """KJT of ``lengths`` (T, b) and key-major ``indices`` (sum of lengths,)."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 2 or lengths.shape[0] != len(keys):
        raise ValueError(f"lengths must be (tables={len(keys)}, batch), got {lengths.shape}")
    flat = torch.from_numpy(np.ascontiguousarray(lengths, dtype=np.int32).reshape(-1))
    values = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64))
    if int(flat.sum()) != values.numel():
        raise ValueError(f"lengths announce {int(flat.sum())} indices, got {values.numel()}")
    return KeyedJaggedTensor(keys=list(keys), values=values, lengths=flat)


def _slice_indices(lengths: np.ndarray, indices: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Key-major indices of samples ``[lo, hi)`` of every table."""
    per_table = lengths.sum(axis=1, dtype=np.int64)
    table_start = np.concatenate(([0], np.cumsum(per_table)[:-1]))
    before = lengths[:, :lo].sum(axis=1, dtype=np.int64)
    inside = lengths[:, lo:hi].sum(axis=1, dtype=np.int64)
    parts = [
        indices[s + a : s + a + n] for s, a, n in zip(table_start, before, inside, strict=True)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def local_batch(store, i: int, rank: int, world: int) -> tuple[torch.Tensor, KeyedJaggedTensor]:
    """Batch ``i`` of ``store`` (a ``BatchStore``): this rank's dense rows and KJT."""
    dense, lengths, indices, _labels = store.numpy_batch(i)
    lo, hi = rank_slice(lengths.shape[1], rank, world)
    kjt = to_kjt(
        lengths[:, lo:hi],
        _slice_indices(lengths, np.asarray(indices), lo, hi),
        feature_keys(lengths.shape[0]),
    )
    return torch.from_numpy(np.array(dense[lo:hi], dtype=np.float32)), kjt


def check_features(kjt: KeyedJaggedTensor, keys: Sequence[str], local_batch_size: int) -> None:
    """Raise ``ValueError`` unless ``kjt`` has exactly ``keys`` (in order) and b samples.

    Checked before any exchange is posted: a KJT that TorchRec would split by the wrong
    keys, or a batch of the wrong size, fails on its own rank with this one message
    instead of as a count mismatch inside an exchange every peer waits on.
    """
    have = list(kjt.keys())
    if have != list(keys):
        missing = [k for k in keys if k not in have]
        extra = [k for k in have if k not in keys]
        detail = []
        if missing:
            detail.append(f"missing {missing}")
        if extra:
            detail.append(f"not a table's feature {extra}")
        if not detail:
            detail.append("same keys in another order")
        raise ValueError(
            f"KJT keys do not match the sharded tables' features ({'; '.join(detail)}): "
            f"expected {list(keys)}, got {have}"
        )
    if kjt.variable_stride_per_key() or kjt.stride() != local_batch_size:
        raise ValueError(
            f"KJT holds {kjt.stride()} samples per key, the plan needs {local_batch_size} "
            f"per rank (global batch / ranks)"
        )
