"""What the comm rank programs share: expected pieces every rank can compute, ``raises``,
the group-state accessor, and the per-rank report file that the tests read."""

from __future__ import annotations

from pathlib import Path

import torch
from mpi4py import MPI

import bls_dlrm.comm  # noqa: F401  (registers the backends "bls" and "mpisync")
from bls_dlrm.comm.native import backend_of

DTYPES = (torch.int64, torch.float32, torch.bfloat16, torch.complex64)


def raises(exc_types, fn, *args, match=None, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc_types as exc:
        assert match is None or match in str(exc), (match, str(exc))
        return exc
    raise AssertionError(f"{fn} did not raise {exc_types}")


def count(src, dst, salt):
    return (src * 7 + dst * 3 + salt) % 4  # zero for some pairs


def piece(src, dst, n, dtype, salt, width=3):
    # what global rank src sends global rank dst: a pure function, known to every rank
    g = torch.Generator().manual_seed(salt * 10007 + src * 101 + dst)
    if dtype.is_complex:
        return torch.randn(n, width, dtype=dtype, generator=g)
    if dtype.is_floating_point:
        return torch.randn(n, width, generator=g).to(dtype)
    return torch.randint(-(2**40), 2**40, (n, width), generator=g)


def engine(group=None):
    """A "bls" group's exchange state: the native backend itself, or a Python group's
    engine (transport ``ialltoallv``, or ``BLS_NATIVE=0``)."""
    state = backend_of(group)
    return getattr(state, "engine", state)


def report(tag: str, **values) -> None:
    """This rank finished ``tag``: one file per rank in the working directory (never a
    line on a stdout that several ranks share)."""
    rank = MPI.COMM_WORLD.Get_rank()
    lines = [f"{k}={v!r}" for k, v in values.items()]
    Path(f"{tag}.rank{rank}").write_text("\n".join(["ok", *lines]) + "\n")
