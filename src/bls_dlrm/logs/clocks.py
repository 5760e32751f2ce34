"""Every rank's monotonic clock against rank 0's, measured through MPI ping-pong.

Ranks of one host read one monotonic clock; ranks of different hosts do not, and their
clocks may differ by any amount (boot times differ; a time namespace moves one by a chosen
offset). To put a run spanning hosts on one timeline, each run measures, right before its
first iteration and right after its last, how far every rank's clock is from rank 0's:

- rank 0 exchanges a handful of round trips with each rank ``r`` in turn: it reads its
  clock (``t0_send``), sends, rank ``r`` reads its clock on arrival (``t_r``) and sends it
  back, rank 0 reads its clock on the reply (``t0_recv``);
- the round trip with the smallest ``rtt = t0_recv - t0_send`` is kept:
  ``offset = t_r - (t0_send + t0_recv) / 2``, with error bound ``rtt / 2``. Whatever the
  split of the round trip between the two directions, ``t_r`` was read between the two
  readings of rank 0, so the true offset lies within ``offset +- rtt / 2``;
- rank 0 sends each rank its result; rank 0's own is ``(0, 0)``.

The result is a :class:`~bls_dlrm.logs.records.ClockSync` that the run logs in its header (start)
and footer (end); :mod:`bls_dlrm.analysis.tables` uses both to put every rank's times on rank 0's
clock. Wall clocks play no part.

Cost: ``ROUND_TRIPS`` round trips per rank, one rank after the other, plus a barrier. A
rank that waits for its turn sleeps between polls instead of spinning, so on an
oversubscribed machine the pair that measures keeps the cores. Measured on 2 cores: about
0.5 ms for 2 ranks, a few ms for 4 to 8 ranks on one host or 4 ranks on two namespace
hosts (tens of ms with 16 ranks on the 2 cores, or under other load). It runs outside
every timed region (before the header is stamped, after the last iteration).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from bls_dlrm.logs.records import ClockSync

__all__ = ["ROUND_TRIPS", "estimate_offset", "measure"]

ROUND_TRIPS = 8
_POLL_S = 5e-4  # how long a rank waiting for its turn sleeps between polls
_TAG_GO, _TAG_PING, _TAG_PONG, _TAG_RESULT = 1, 2, 3, 4
_comms: dict[int, object] = {}  # the private duplicate of each communicator measured on

# One round trip seen from rank 0: (t0_send, t_r, t0_recv).
RoundTrip = Callable[[], tuple[float, float, float]]


def estimate_offset(round_trip: RoundTrip, n: int = ROUND_TRIPS) -> tuple[float, float]:
    """``(offset, error bound)`` of a peer's clock against this one from ``n`` round trips.

    ``round_trip()`` runs one exchange and returns ``(t0_send, t_r, t0_recv)``: this
    clock before sending, the peer's clock when it answered, this clock when the answer
    came. The round trip with the smallest duration gives ``offset = t_r - (t0_send +
    t0_recv) / 2`` and the bound ``(t0_recv - t0_send) / 2``.
    """
    if n < 1:
        raise ValueError(f"need at least one round trip, got {n}")
    best_rtt, offset = float("inf"), 0.0
    for _ in range(n):
        t_send, t_peer, t_recv = round_trip()
        rtt = t_recv - t_send
        if rtt < 0:
            raise ValueError(f"a round trip ended before it started ({t_send!r} -> {t_recv!r})")
        if rtt < best_rtt:
            best_rtt, offset = rtt, t_peer - (t_send + t_recv) / 2
    return offset, best_rtt / 2


def _private(comm):
    """A duplicate of ``comm`` (made once, collectively) so no message of the measurement
    can match a receive of the collectives running on ``comm`` or its groups."""
    key = comm.py2f()
    dup = _comms.get(key)
    if dup is None:
        dup = _comms[key] = comm.Dup()
    return dup


def _idle(req) -> None:
    """Wait for a request without spinning: poll and sleep, leaving the core to others."""
    while not req.Test():
        time.sleep(_POLL_S)


def measure(comm, n: int = ROUND_TRIPS) -> ClockSync:
    """This rank's clock against rank 0's, measured now; collective over ``comm``.

    Every rank of ``comm`` must call it at the same point; it ends with a barrier, so the
    ranks leave it together (within a poll interval).
    """
    clock = time.monotonic
    comm = _private(comm)
    rank, size = comm.Get_rank(), comm.Get_size()
    ping = np.zeros(1)
    pong = np.zeros(1)
    if rank == 0:
        result = np.zeros(2)
        for peer in range(1, size):
            comm.Send(ping, dest=peer, tag=_TAG_GO)

            def round_trip(peer=peer):
                t_send = clock()
                comm.Send(ping, dest=peer, tag=_TAG_PING)
                comm.Recv(pong, source=peer, tag=_TAG_PONG)
                t_recv = clock()
                return t_send, float(pong[0]), t_recv

            result[:] = estimate_offset(round_trip, n)
            comm.Send(result, dest=peer, tag=_TAG_RESULT)
        sync = ClockSync(0.0, 0.0, clock())
    else:
        _idle(comm.Irecv(ping, source=0, tag=_TAG_GO))
        t_first = clock()
        for _ in range(n):
            comm.Recv(ping, source=0, tag=_TAG_PING)
            pong[0] = clock()
            comm.Send(pong, dest=0, tag=_TAG_PONG)
        result = np.zeros(2)
        comm.Recv(result, source=0, tag=_TAG_RESULT)
        sync = ClockSync(float(result[0]), float(result[1]), t_first)
    _idle(comm.Ibarrier())  # ranks done early must not spin while rank 0 measures others
    return sync
