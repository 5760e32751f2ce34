"""The paper's contribution: the BLS alltoallv and its synchronous baselines.

Importing this package registers the torch.distributed backend "bls".

- :class:`BLSAlltoallv` — the engine, for numpy or torch code (``post`` / ``trim`` / ``drain``)
- :func:`make_collective` — "gloo", "mpi" or "bls" behind that one interface
- :class:`BLSOptions` — per-group options of the torch backend (``pg_options=``)
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
from .torch_backend import BACKEND_NAME, LAG_BOUND_ENV, BLSOptions, ProcessGroupBLS, register

register()


def init_torch(backend: str = BACKEND_NAME, **kwargs) -> None:
    """``dist.init_process_group(backend)`` under mpiexec, for any backend (idempotent)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend, **kwargs)


__all__ = [
    "BACKEND_NAME",
    "COLLECTIVES",
    "LAG_BOUND_ENV",
    "BLSAlltoallv",
    "BLSClosedError",
    "BLSCountError",
    "BLSError",
    "BLSOptions",
    "BLSTimeoutError",
    "Backoff",
    "Exchange",
    "ExchangeStats",
    "ProcessGroupBLS",
    "SyncGloo",
    "SyncMPI",
    "init_torch",
    "make_collective",
    "register",
]
