"""Synchronous baselines behind the engine's interface: ``mpi`` and ``gloo``.

Both complete every exchange inside ``post``, so a loop written for
:class:`~bls_dlrm.comm.engine.BLSAlltoallv` (post -> work -> trim -> use) runs unchanged
and measures the synchronous collective. ``mpi`` is mpi4py's blocking ``Alltoallv``;
``gloo`` is torch.distributed's built-in ``all_to_all_single`` on a gloo group.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from mpi4py import MPI

from .buffers import new_like, row_buffer
from .engine import DEFAULT_HISTORY, ExchangeStats, split_counts


def _history_window(keep_history: bool | int) -> deque[ExchangeStats] | None:
    """``keep_history`` as in the BLS engine: True all, False/0 none, n the newest n."""
    if keep_history is True:
        return deque()
    if keep_history is False or keep_history == 0:
        return None
    if isinstance(keep_history, int) and keep_history > 0:
        return deque(maxlen=keep_history)
    raise ValueError(f"keep_history must be a bool or a count >= 0, got {keep_history!r}")


class _Completed:
    """Handle of an exchange that finished inside ``post``."""

    __slots__ = ("done", "recv", "stats")

    def __init__(self, stats: ExchangeStats, recv: Any):
        self.stats, self.recv, self.done = stats, recv, True

    @property
    def iteration(self) -> int:
        return self.stats.iteration

    def test(self) -> bool:
        return True

    def wait(self) -> Any:
        return self.recv


class _Synchronous:
    """Shared bookkeeping: numbering, history, the no-op completion calls."""

    name = "sync"
    lag_bound = 0

    def __init__(self, rank: int, size: int, keep_history: bool | int = DEFAULT_HISTORY):
        self.rank, self.size = rank, size
        self._history = _history_window(keep_history)
        self._posted = 0
        self._pending: list[_Completed] = []  # completed in post, handed out by trim/poll

    @property
    def posted(self) -> int:
        return self._posted

    @property
    def history(self) -> list[ExchangeStats]:
        """The kept :class:`ExchangeStats`, oldest first (a copy; as the BLS engine's)."""
        return [] if self._history is None else list(self._history)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def post(self, send, send_counts=None, recv_counts=None, recv=None) -> _Completed:
        t0 = time.monotonic()
        sbuf = row_buffer(send, "send buffer")
        send_counts, recv_counts = split_counts(
            self.rank, self.size, sbuf.rows, send_counts, recv_counts
        )
        if recv is None:
            recv = new_like(send, sum(recv_counts))
        stats = ExchangeStats(self._posted, t0, t0)
        self._exchange(send, sbuf, send_counts, recv, recv_counts)
        stats.t_posted = stats.t_complete = time.monotonic()
        stats.wait_s = stats.t_complete - t0
        stats.bytes_sent = sbuf.row_bytes * (sum(send_counts) - send_counts[self.rank])
        stats.bytes_received = sbuf.row_bytes * (sum(recv_counts) - recv_counts[self.rank])
        self._posted += 1
        if self._history is not None:
            self._history.append(stats)
        handle = _Completed(stats, recv)
        self._pending.append(handle)
        return handle

    def _exchange(self, send, sbuf, send_counts, recv, recv_counts) -> None:
        raise NotImplementedError

    def poll(self) -> list[_Completed]:
        return self.trim(0)

    def trim(self, keep: int | None = None) -> list[_Completed]:
        done, self._pending = self._pending, []
        return done

    def complete_oldest(self) -> _Completed:
        return self._pending.pop(0)

    def complete_until(self, iteration: int) -> list[_Completed]:
        done = [h for h in self._pending if h.iteration <= iteration]
        self._pending = [h for h in self._pending if h.iteration > iteration]
        return done

    def drain(self) -> list[_Completed]:
        return self.trim(0)

    def close(self) -> None:
        self._pending = []


class SyncMPI(_Synchronous):
    """mpi4py's blocking ``Alltoallv`` (MPI's own algorithm and progress)."""

    name = "mpi"

    def __init__(self, comm: MPI.Comm, keep_history: bool | int = DEFAULT_HISTORY):
        self.comm = comm.Dup()
        super().__init__(self.comm.Get_rank(), self.comm.Get_size(), keep_history)

    def _exchange(self, send, sbuf, send_counts, recv, recv_counts) -> None:
        rbuf = row_buffer(recv, "receive buffer")
        rb = sbuf.row_bytes
        self.comm.Alltoallv(
            [sbuf.view, [c * rb for c in send_counts], MPI.BYTE],
            [rbuf.view, [c * rb for c in recv_counts], MPI.BYTE],
        )

    def close(self) -> None:
        super().close()
        if self.comm != MPI.COMM_NULL:
            self.comm.Free()


class SyncGloo(_Synchronous):
    """torch.distributed's built-in gloo ``all_to_all_single`` (torch tensors only)."""

    name = "gloo"

    def __init__(self, group: Any = None, keep_history: bool | int = DEFAULT_HISTORY):
        import torch.distributed as dist

        self._dist, self.group = dist, group
        super().__init__(dist.get_rank(group), dist.get_world_size(group), keep_history)

    def _exchange(self, send, sbuf, send_counts, recv, recv_counts) -> None:
        import torch

        as_tensor = torch.from_numpy if not isinstance(send, torch.Tensor) else (lambda t: t)
        self._dist.all_to_all_single(
            as_tensor(recv),
            as_tensor(send),
            list(recv_counts),
            list(send_counts),
            group=self.group,
        )


def make_collective(
    name: str,
    lag_bound: int = 0,
    *,
    comm: MPI.Comm | None = None,
    timeout: float | None = 300.0,
    transport: str = "p2p",
    keep_history: bool | int = DEFAULT_HISTORY,
):
    """The collective called ``name`` ("mpi", "gloo" or "bls") with one interface.

    For "gloo" the default torch.distributed group must already be initialised with the
    gloo backend (:func:`bls_dlrm.comm.init_torch`).
    """
    from .engine import BLSAlltoallv

    comm = MPI.COMM_WORLD if comm is None else comm
    if name == "bls":
        return BLSAlltoallv(
            comm, lag_bound, timeout=timeout, transport=transport, keep_history=keep_history
        )
    if lag_bound:
        raise ValueError(f"collective {name!r} is synchronous: lag bound must be 0")
    if name == "mpi":
        return SyncMPI(comm, keep_history)
    if name == "gloo":
        return SyncGloo(None, keep_history)
    raise ValueError(f"unknown collective {name!r}: choose gloo, mpi or bls")


COLLECTIVES = ("gloo", "mpi", "bls")
