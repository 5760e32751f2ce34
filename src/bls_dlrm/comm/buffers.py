"""Zero-copy byte views of numpy arrays and torch CPU tensors, counted in rows.

The engine moves bytes; callers think in rows of their array (elements of a 1-D array,
rows of a 2-D one). A view shares memory with the caller's buffer, so nothing is copied
on the way into or out of MPI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class RowBuffer:
    """A contiguous buffer seen as ``rows`` rows of ``row_bytes`` bytes each."""

    view: memoryview  # 1-D, format "B", writable where the owner is
    rows: int
    row_bytes: int
    dtype: str  # the owner's dtype, for messages and checks
    row_shape: tuple[int, ...]


def _is_torch(buf: Any) -> bool:
    return type(buf).__module__.startswith("torch")


def row_buffer(buf: Any, what: str = "buffer") -> RowBuffer:
    """View ``buf`` (numpy array or torch CPU tensor, C-contiguous, >= 1-D) as bytes."""
    if _is_torch(buf):
        import torch

        if not isinstance(buf, torch.Tensor):
            raise TypeError(f"{what} must be a numpy array or a torch tensor, got {type(buf)}")
        if buf.device.type != "cpu":
            raise ValueError(f"{what} must be a CPU tensor, got device {buf.device}")
        if not buf.is_contiguous():
            raise ValueError(f"{what} must be contiguous; call .contiguous() first")
        if buf.dim() == 0:
            raise ValueError(f"{what} must have at least one dimension")
        flat = buf.detach().reshape(-1)
        # An empty tensor may have stride 0 (torch.from_numpy of an empty array), which
        # torch refuses to view as bytes; there are no bytes to share anyway.
        flat = flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, np.uint8)
        shape, dtype = tuple(buf.shape), str(buf.dtype).removeprefix("torch.")
    elif isinstance(buf, np.ndarray):
        if not buf.flags.c_contiguous:
            raise ValueError(f"{what} must be C-contiguous; use np.ascontiguousarray first")
        if buf.ndim == 0:
            raise ValueError(f"{what} must have at least one dimension")
        flat = buf.reshape(-1).view(np.uint8)
        shape, dtype = buf.shape, str(buf.dtype)
    else:
        raise TypeError(f"{what} must be a numpy array or a torch tensor, got {type(buf)}")
    rows = shape[0]
    row_bytes = flat.nbytes // rows if rows else _row_bytes_of_empty(buf, shape)
    return RowBuffer(memoryview(flat), rows, row_bytes, dtype, tuple(shape[1:]))


def _row_bytes_of_empty(buf: Any, shape: tuple[int, ...]) -> int:
    itemsize = buf.element_size() if _is_torch(buf) else buf.itemsize
    return int(itemsize * int(np.prod(shape[1:], dtype=np.int64)))


def new_like(template: Any, rows: int) -> Any:
    """An uninitialised buffer of ``rows`` rows with the template's dtype and row shape."""
    if _is_torch(template):
        import torch

        return torch.empty((rows, *template.shape[1:]), dtype=template.dtype)
    return np.empty((rows, *template.shape[1:]), dtype=template.dtype)
