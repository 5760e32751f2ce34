"""torch.distributed rendezvous from MPI, so ``init_process_group`` needs no MASTER_ADDR.

Under ``mpiexec`` the ranks already know each other. When the usual ``env://`` variables
(``MASTER_ADDR``, ``MASTER_PORT``) are missing and the process was started by an MPI
launcher, rank and world size come from ``MPI.COMM_WORLD`` and rank 0 opens a TCPStore on
a free port that it announces to the others over MPI. When the variables are set, the
stock ``env://`` handler runs unchanged. This applies to every backend (gloo as well as
bls), which is what lets the baselines run under the same launcher.
"""

from __future__ import annotations

import importlib
import os
import socket
from datetime import timedelta

import torch.distributed as dist

_rdzv = importlib.import_module("torch.distributed.rendezvous")

_MPI_LAUNCHER_VARS = (
    "PMI_RANK",
    "PMI_SIZE",
    "OMPI_COMM_WORLD_RANK",
    "PMIX_RANK",
    "MPI_LOCALRANKID",
)


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process (or MPI is already initialised)."""
    if any(v in os.environ for v in _MPI_LAUNCHER_VARS):
        return True
    try:
        from mpi4py import MPI
    except ImportError:  # pragma: no cover - mpi4py is a dependency
        return False
    return MPI.Is_initialized() and MPI.COMM_WORLD.Get_size() > 1


def _mpi_store(timeout: timedelta):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    store = None
    if rank == 0:
        host = socket.gethostname() if size > 1 else "127.0.0.1"
        store = dist.TCPStore("0.0.0.0", 0, size, True, timeout=timeout, wait_for_workers=False)
        address = (host, store.port)
    else:
        address = None
    host, port = comm.bcast(address, root=0)
    if store is None:
        store = connect_store(host, port, size, timeout, rank)
    return store, rank, size


def connect_store(host: str, port: int, size: int, timeout: timedelta, rank: int):
    """A client of rank 0's TCPStore at ``host:port``.

    When rank 0's host name does not take us to the store, a rank on the same host (the
    same host name) falls back to the loopback address. A rank on another host has no
    address to fall back to: the error says so and what to set, instead of a rank waiting
    for a store that is not there.
    """
    try:
        return dist.TCPStore(host, port, size, False, timeout=timeout)
    except (RuntimeError, OSError) as exc:
        if socket.gethostname() != host:
            raise RuntimeError(
                f"rank {rank} on host {socket.gethostname()!r} cannot reach rank 0's "
                f"rendezvous store at {host}:{port} ({exc}); rank 0's host name must resolve "
                "to an address every node can reach, or set MASTER_ADDR (an address of rank "
                "0's host) and MASTER_PORT (a free port there)"
            ) from exc
        return dist.TCPStore("127.0.0.1", port, size, False, timeout=timeout)


def _env_or_mpi_handler(url: str, timeout: timedelta = timedelta(minutes=30), **kwargs):
    if (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")) or not launched_by_mpi():
        yield from _stock_env_handler(url, timeout=timeout, **kwargs)
        return
    yield _mpi_store(timeout)
    raise RuntimeError("MPI rendezvous cannot re-rendezvous")


_stock_env_handler = _rdzv._rendezvous_handlers["env"]
_installed = False


def install() -> None:
    """Make ``env://`` fall back to MPI when MASTER_ADDR/MASTER_PORT are not set."""
    global _installed
    if not _installed:
        # register_rendezvous_handler refuses a known scheme; we wrap, not replace, it.
        _rdzv._rendezvous_handlers["env"] = _env_or_mpi_handler
        _installed = True
