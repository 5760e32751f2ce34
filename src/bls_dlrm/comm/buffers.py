"""Zero-copy byte views of numpy arrays and torch CPU tensors, counted in rows.

The engine moves bytes; callers think in rows of their array (elements of a 1-D array,
rows of a 2-D one). A view shares memory with the caller's buffer, so nothing is copied
on the way into or out of MPI.

MPI sees memory, not values: a torch tensor with a lazy conjugate (or negative) bit holds
the unconjugated numbers. :func:`send_ready` resolves the bit of a send tensor (a copy);
a receive buffer with it, or a read-only numpy receive array, is refused
(``row_buffer(..., writable=True)``), since writing into it would silently give the wrong
values or break a promise made to the array's owner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from mpi4py import MPI


@dataclass(slots=True)
class RowBuffer:
    """A contiguous buffer seen as ``rows`` rows of ``row_bytes`` bytes each."""

    view: memoryview  # 1-D, format "B", writable where the owner is
    rows: int
    row_bytes: int
    dtype: str  # the owner's dtype, for messages and checks
    row_shape: tuple[int, ...]
    address: int = 0  # of the first byte (the key of the engine's persistent requests)


def _address_view(address: int, nbytes: int) -> memoryview:
    """A writable byte view of memory the caller keeps alive (no copy, no torch/numpy call).

    Building the view from the address costs a fraction of a microsecond, against tens
    for ``tensor.view(torch.uint8).numpy()``: ``post`` does it twice per exchange, and on
    an oversubscribed machine every rank's microseconds add up on the critical path.
    """
    if nbytes == 0:
        return memoryview(bytearray())
    return memoryview(MPI.buffer.fromaddress(address, nbytes))


def send_ready(buf: Any) -> Any:
    """``buf`` itself, or for a torch tensor with a lazy conjugate/negative bit its values.

    The result is what must stay alive while MPI reads it.
    """
    if isinstance(buf, torch.Tensor) and (buf.is_conj() or buf.is_neg()):
        return buf.resolve_conj().resolve_neg()
    return buf


def send_buffer(buf: Any, what: str = "send buffer") -> tuple[Any, RowBuffer]:
    """:func:`send_ready` and :func:`row_buffer` in one: (what to keep alive, its view)."""
    buf = send_ready(buf)
    return buf, _row_buffer(buf, what, False, False)


def row_buffer(buf: Any, what: str = "buffer", writable: bool = False) -> RowBuffer:
    """View ``buf`` (numpy array or torch CPU tensor, C-contiguous, >= 1-D) as bytes.

    ``writable``: MPI will write into it (a receive buffer): a read-only numpy array is
    refused. A tensor with a lazy conjugate/negative bit is refused either way (a send
    tensor goes through :func:`send_buffer`, which resolves the bit).
    The view does not keep ``buf`` alive: the caller holds ``buf`` while MPI uses it.
    """
    return _row_buffer(buf, what, writable, True)


_DTYPE_NAMES: dict[Any, str] = {}


def _row_buffer(buf: Any, what: str, writable: bool, check_bits: bool) -> RowBuffer:
    if isinstance(buf, torch.Tensor):
        if not buf.is_cpu:
            raise ValueError(f"{what} must be a CPU tensor, got device {buf.device}")
        if check_bits and (buf.is_conj() or buf.is_neg()):
            bit = "conjugate" if buf.is_conj() else "negative"
            hint = "resolve_conj()" if buf.is_conj() else "resolve_neg()"
            raise ValueError(
                f"{what} has torch's lazy {bit} bit: its memory does not hold its values "
                f"(call .{hint} first)"
            )
        if not buf.is_contiguous():
            raise ValueError(f"{what} must be contiguous; call .contiguous() first")
        shape = buf.shape
        if not shape:
            raise ValueError(f"{what} must have at least one dimension")
        nbytes = buf.nbytes
        address = buf.data_ptr()
        dt = buf.dtype
        dtype = _DTYPE_NAMES.get(dt)
        if dtype is None:
            dtype = _DTYPE_NAMES[dt] = str(dt).removeprefix("torch.")
        rows = shape[0]
        row_bytes = nbytes // rows if rows else buf.element_size() * math.prod(shape[1:])
    elif isinstance(buf, np.ndarray):
        if not buf.flags.c_contiguous:
            raise ValueError(f"{what} must be C-contiguous; use np.ascontiguousarray first")
        shape = buf.shape
        if not shape:
            raise ValueError(f"{what} must have at least one dimension")
        if writable and not buf.flags.writeable:
            raise ValueError(f"{what} is read-only (numpy writeable flag is off)")
        nbytes, dtype = buf.nbytes, str(buf.dtype)
        address = buf.__array_interface__["data"][0]
        rows = shape[0]
        row_bytes = nbytes // rows if rows else buf.itemsize * math.prod(shape[1:])
    else:
        raise TypeError(f"{what} must be a numpy array or a torch tensor, got {type(buf)}")
    view = _address_view(address, nbytes)
    return RowBuffer(view, rows, row_bytes, dtype, tuple(shape[1:]), address)


def new_like(template: Any, rows: int) -> Any:
    """An uninitialised buffer of ``rows`` rows with the template's dtype and row shape."""
    if isinstance(template, torch.Tensor):
        return torch.empty((rows, *template.shape[1:]), dtype=template.dtype)
    return np.empty((rows, *template.shape[1:]), dtype=template.dtype)
