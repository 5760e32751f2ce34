"""The paper's contribution: the BLS alltoallv and its synchronous baselines.

Importing this package registers the torch.distributed backends "bls" (the BLS
alltoallv) and "mpisync" (MPI's own synchronous ``Alltoallv``, since pip torch has no MPI
backend); both rendezvous through ``mpiexec`` without ``MASTER_ADDR``. Both are C++
``c10d::Backend``s on the C++ BLS core (:mod:`bls_dlrm.comm.native`); the Python process
groups of :mod:`.torch_backend` and :mod:`.torch_mpi` serve the transport "ialltoallv" and
``BLS_NATIVE=0``.

- :class:`BLSAlltoallv` — the engine, for numpy or torch code (``post`` / ``trim`` / ``drain``)
- :func:`make_collective` — "gloo", "mpi" or "bls" behind that one interface
- :class:`BLSOptions` — per-group options of the torch backend (``pg_options=``)
- :class:`MPISyncOptions` — per-group options of the "mpisync" backend
"""

from __future__ import annotations

from .baselines import COLLECTIVES, SyncGloo, SyncMPI, make_collective
from .engine import (
    Backoff,
    BLSAlltoallv,
    BLSClosedError,
    BLSCountError,
    BLSError,
    BLSTimeoutError,
    Exchange,
    ExchangeStats,
)
from .native import ThreadLevelError, backend_of
from .torch_backend import BACKEND_NAME, LAG_BOUND_ENV, BLSOptions, ProcessGroupBLS, register
from .torch_common import CollectiveTimeoutError
from .torch_mpi import MPI_BACKEND_NAME, MPISyncOptions, ProcessGroupMPISync
from .torch_mpi import register as register_mpisync

register()
register_mpisync()


def init_torch(backend: str = BACKEND_NAME, **kwargs) -> None:
    """``dist.init_process_group(backend)`` under mpiexec, for any backend (idempotent)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend, **kwargs)


__all__ = [
    "BACKEND_NAME",
    "COLLECTIVES",
    "LAG_BOUND_ENV",
    "MPI_BACKEND_NAME",
    "BLSAlltoallv",
    "BLSClosedError",
    "BLSCountError",
    "BLSError",
    "BLSOptions",
    "BLSTimeoutError",
    "Backoff",
    "CollectiveTimeoutError",
    "Exchange",
    "ExchangeStats",
    "MPISyncOptions",
    "ProcessGroupBLS",
    "ProcessGroupMPISync",
    "SyncGloo",
    "SyncMPI",
    "ThreadLevelError",
    "backend_of",
    "init_torch",
    "make_collective",
    "register",
    "register_mpisync",
]
