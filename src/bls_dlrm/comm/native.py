"""The native (C++) backends "bls" and "mpisync": loading, checks, and their Python face.

``bls_dlrm.comm._native`` is built by the ordinary install (``setup.py``). It holds the
BLS core (``csrc/core.cpp``) and the two ``c10d::Backend`` subclasses with their own Work
(``csrc/backend.cpp``); a group's creator hands it the group's MPI communicator, which it
duplicates. Python and C++ share one MPI: the extension links the libmpi that mpi4py
loaded (checked here once, by ``MPI_Get_library_version`` on both sides).

The native errors arrive in Python as the classes of this package, each also a
:class:`torch.distributed.DistBackendError`: ``BLSTimeoutError`` (an exchange, with
``iteration``, ``peers``, ``lag``), ``BLSCountError`` (counts of two ranks disagree),
``BLSClosedError``, :class:`CollectiveTimeoutError` and :class:`ThreadLevelError`.

``BLS_NATIVE=0`` in the environment makes new groups use the Python backends
(:mod:`~bls_dlrm.comm.torch_backend`, :mod:`~bls_dlrm.comm.torch_mpi`), for comparisons.
The "bls" transport ``ialltoallv`` exists only there.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from mpi4py import MPI

from .engine import BLSClosedError, BLSCountError, BLSError, BLSTimeoutError
from .torch_common import CollectiveTimeoutError, dist_type

NATIVE_ENV = "BLS_NATIVE"


class ThreadLevelError(BLSError):
    """A group was called from a second thread while MPI's thread level forbids it."""


_native = None


def _load():
    global _native
    if _native is None:
        from . import _native as ext

        mine, theirs = ext.mpi_library_version(), MPI.Get_library_version()
        if mine != theirs:
            raise ImportError(
                "bls_dlrm.comm._native was linked against another MPI than the one mpi4py "
                f"loaded ({mine.splitlines()[0]!r} vs {theirs.splitlines()[0]!r}); rebuild "
                "it in this environment (pip install --no-build-isolation -e .)"
            )
        ext.set_error_types(
            BLSTimeoutError,
            dist_type(BLSCountError),
            dist_type(BLSClosedError),
            CollectiveTimeoutError,
            dist_type(ThreadLevelError),
            dist.DistBackendError,
        )
        _native = ext
    return _native


def enabled() -> bool:
    """Whether new groups get the native backends (``BLS_NATIVE`` unset or not ``0``)."""
    return os.environ.get(NATIVE_ENV, "1").strip() not in ("0", "false", "no")


def module():
    """The extension module (loaded and checked on first use)."""
    return _load()


def bls_backend(comm: MPI.Comm, lag_bound: int, timeout_s: float | None):
    """A native "bls" backend over a duplicate of ``comm``."""
    ext = _load()
    return ext.BLSBackend(MPI._addressof(comm), lag_bound, timeout_s or 0.0)


def mpisync_backend(comm: MPI.Comm, timeout_s: float | None):
    """A native "mpisync" backend over a duplicate of ``comm``."""
    ext = _load()
    return ext.MPISyncBackend(MPI._addressof(comm), timeout_s or 0.0)


FLOOR_BACKEND_NAME = "blsfloor"


def register_floor() -> None:
    """Register "blsfloor" (benchmarks only): its ``all_to_all_single`` returns a completed
    Work at once, without touching the tensors, so it measures torch's own dispatch."""
    from .torch_common import group_comm, register_backend

    def create(dist_opts, backend_options):
        comm = group_comm(dist_opts, FLOOR_BACKEND_NAME)
        try:
            return _load().FloorBackend(MPI._addressof(comm))
        finally:
            comm.Free()

    register_backend(FLOOR_BACKEND_NAME, create)


def backend_of(group=None):
    """The object that holds a "bls"/"mpisync" group's state (``lag_bound``, ``in_flight``).

    For a native group that is its CPU ``c10d::Backend``; for a Python one (``BLS_NATIVE=0``,
    or transport ``ialltoallv``) the ProcessGroup itself. ``None``: the default group.
    """
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    if isinstance(pg, dist.ProcessGroup) and type(pg) is dist.ProcessGroup:
        return pg._get_backend(torch.device("cpu"))
    return pg


__all__ = [
    "FLOOR_BACKEND_NAME",
    "NATIVE_ENV",
    "ThreadLevelError",
    "backend_of",
    "bls_backend",
    "enabled",
    "module",
    "mpisync_backend",
    "register_floor",
]
