"""The bounded lag synchronous (BLS) alltoallv engine.

Semantics (DESIGN.md, "BLS alltoallv"):

* Every rank posts the same sequence of exchanges; exchange *i* is the *i*-th ``post`` on
  this engine. Counts may change from one exchange to the next (alltoallv).
* With lag bound ``L`` a rank keeps at most ``L + 1`` exchanges in flight: before it posts
  exchange *i* it completes exchange *i - L - 1*, waiting only if some peer has not posted
  it yet. A slow rank may therefore fall ``L`` whole exchanges behind before the fastest
  rank blocks. ``L = 0`` is the ordinary synchronous exchange.
* Completion is local and in order: exchange *i* is complete when this rank's pieces from
  every peer have arrived. No barrier, no count exchange. An exchange whose data is
  already there can be completed without waiting.
* Sends leave on their own time: a large message leaves only once its receiver has copied
  it, so tying completion to the sends would tie every rank to its receivers' progress
  (measured: it cost a tenth of the masking at 64 KiB, see README). The engine keeps a send
  buffer until its pieces have left (``Exchange.sent``) and, before posting exchange *i*,
  waits for the sends of exchange *i - L - 1*.
* Memory: at most ``L + 1`` send and receive buffer sets are referenced by the engine.

Transport, chosen by measurement (``bls-dlrm bench-a2a --collectives
bls:0,bls:0:ialltoallv``, README "Progress strategy"): point-to-point ``Irecv``/``Isend``
on a private duplicate of the communicator, one message per peer and exchange, tagged by
exchange number modulo the tag space. MPI's non-overtaking rule keeps a peer's pieces in
exchange order. The alternative, one ``Ialltoallv`` per exchange, is available as
``transport="ialltoallv"``; MPI may skip empty pieces there, so a zero-count piece does
not hold a rank to the lag bound.

Waiting never busy-spins: ranks are often oversubscribed (4 ranks on 2 cores), and a
spinning rank steals the core from the very peer it waits for. A blocked rank tests its
requests (which also drives MPI progress), then yields the core, then sleeps with a
short exponential back-off; see :class:`Backoff`.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

from mpi4py import MPI

from .buffers import new_like, row_buffer

_TAG_SPACE = 1 << 15  # MPI guarantees tags up to 32767


class BLSError(RuntimeError):
    """Base class of the engine's errors."""


class BLSTimeoutError(BLSError, TimeoutError):
    """An exchange did not complete within the timeout."""

    def __init__(self, iteration: int, peers: Sequence[int], lag: int, timeout: float):
        self.iteration, self.peers, self.lag, self.timeout = iteration, list(peers), lag, timeout
        super().__init__(
            f"BLS alltoallv exchange {iteration} did not complete within {timeout:g} s: "
            f"no data from peer(s) {self.peers}; this rank is {lag} exchange(s) ahead of "
            "the slowest of them (has a peer died or stopped posting?)"
        )


class BLSCountError(BLSError, ValueError):
    """Send and receive counts of two ranks disagree."""


class BLSClosedError(BLSError):
    """The engine was used after ``close``."""


@dataclass(slots=True)
class ExchangeStats:
    """What one exchange cost this rank (times from ``time.monotonic``, seconds)."""

    iteration: int
    t_post: float  # when ``post`` started (after any lag-bound wait)
    t_posted: float  # when all sends and receives were started
    t_complete: float = float("nan")  # when the exchange was completed on this rank
    wait_s: float = 0.0  # time blocked waiting for this exchange's data
    # Exchanges this rank had posted that the slowest missing peer had not, when it blocked:
    # 1 for a blocked synchronous exchange, at most L + 1 at the lag bound; 0: no block.
    lag: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    send_wait_s: float = 0.0  # time ``post`` waited for old sends to leave (buffer bound)


class Backoff:
    """Polite waiting: poll and yield the core for a while, then sleep.

    A message that is already on its way needs both ranks to drive MPI's progress for a
    few rounds (large messages use a rendezvous handshake), so a blocked rank first polls,
    yielding its core to any runnable co-located rank every ``yield_every`` polls
    (``sched_yield``), for at most ``spin_s`` seconds. A wait longer than that means a peer
    is behind: the rank then sleeps, starting at ``first_sleep`` and doubling up to
    ``max_sleep``, so it costs nothing while it waits and notices its data at most
    ``max_sleep`` late. The defaults were chosen with ``bls-dlrm bench-a2a`` (README,
    "Progress strategy"); :meth:`preset` names the alternatives that were measured.
    """

    __slots__ = ("first_sleep", "max_sleep", "spin_s", "yield_every")

    PRESETS: ClassVar[dict[str, dict[str, float]]] = {
        "polite": {},
        "yield": {"spin_s": float("inf")},  # poll and yield, never sleep
        "sleep": {"spin_s": 0.0},  # sleep at once
    }

    def __init__(
        self,
        spin_s: float = 5e-3,
        first_sleep: float = 50e-6,
        max_sleep: float = 500e-6,
        yield_every: int = 1,
    ):
        if spin_s < 0 or first_sleep <= 0 or max_sleep < first_sleep or yield_every < 1:
            raise ValueError("Backoff needs spin_s >= 0, 0 < first_sleep <= max_sleep")
        self.spin_s, self.first_sleep, self.max_sleep = spin_s, first_sleep, max_sleep
        self.yield_every = int(yield_every)

    @classmethod
    def preset(cls, name: str) -> Backoff:
        try:
            return cls(**cls.PRESETS[name])
        except KeyError:
            raise ValueError(f"unknown wait preset {name!r}: {sorted(cls.PRESETS)}") from None

    def wait(self, done, deadline: float | None) -> bool:
        """Call ``done()`` until it returns true; False if ``deadline`` passed first."""
        now = time.monotonic
        start = now()
        spin_until = start + self.spin_s
        polls = 0
        while not done():
            polls += 1
            if polls % self.yield_every == 0:
                t = now()
                if t > spin_until:
                    break
                if deadline is not None and t > deadline:
                    return done()
                os.sched_yield()
        else:
            return True
        pause = self.first_sleep
        while not done():
            if deadline is not None and now() > deadline:
                return done()
            time.sleep(pause)
            pause = min(2 * pause, self.max_sleep)
        return True


class Exchange:
    """Handle of one posted alltoallv; ``wait`` returns the receive buffer."""

    __slots__ = (
        "_engine",
        "_peers",
        "_reqs",
        "_send_reqs",
        "_statuses",
        "done",
        "recv",
        "recv_bytes",
        "send",
        "sent",
        "stats",
    )

    def __init__(self, engine: BLSAlltoallv, stats: ExchangeStats, send: Any, recv: Any):
        self._engine = engine
        self.stats = stats
        self.send = send  # kept alive until ``sent``: MPI reads it
        self.recv = recv
        self.done = False  # every piece for this rank is in ``recv``
        self.sent = False  # every piece of ``send`` has left (``send`` may be reused)
        self._reqs: list[MPI.Request] = []  # receives (p2p) or the one Ialltoallv
        self._peers: list[int] = []  # the peer of each receive in ``_reqs`` (p2p)
        self._send_reqs: list[MPI.Request] = []
        self._statuses: list[MPI.Status] = []
        self.recv_bytes: list[int] = []

    @property
    def iteration(self) -> int:
        return self.stats.iteration

    def test(self) -> bool:
        """True once this exchange's data is here (does not complete it)."""
        return self.done or self._ready()

    def _ready(self) -> bool:
        try:
            return MPI.Request.Testall(self._reqs, self._statuses)
        except MPI.Exception as exc:
            # Testall reports a failed request as ERR_IN_STATUS, the cause in its status.
            classes = {exc.Get_error_class()}
            if MPI.ERR_IN_STATUS in classes:
                classes.update(MPI.Get_error_class(s.Get_error()) for s in self._statuses)
            if MPI.ERR_TRUNCATE in classes:
                raise BLSCountError(
                    f"exchange {self.stats.iteration}: a peer sent more rows than the "
                    "recv_counts of this rank allow (send and receive counts disagree)"
                ) from exc
            raise

    def wait(self) -> Any:
        """Complete every exchange up to this one, in order, and its sends; return ``recv``.

        Afterwards both buffers belong to the caller again.
        """
        self._engine.complete_until(self.stats.iteration)
        self._engine.flush_sends(self.stats.iteration)
        return self.recv


class BLSAlltoallv:
    """Bounded lag synchronous alltoallv over an MPI communicator.

    Parameters
    ----------
    comm:
        The communicator; the engine works on a private duplicate of it.
    lag_bound:
        ``L >= 0``; at most ``L + 1`` exchanges are in flight.
    timeout:
        Seconds an exchange may stay blocked before :class:`BLSTimeoutError`; None waits
        forever.
    transport:
        ``"p2p"`` (default, per-peer messages) or ``"ialltoallv"`` (one nonblocking
        collective per exchange).
    backoff:
        How a blocked rank waits (:class:`Backoff`); ``None`` uses MPI's ``Waitall``,
        which spins and ignores ``timeout``: it exists only to measure the difference.
    keep_history:
        Keep every exchange's :class:`ExchangeStats` in ``history``.
    """

    def __init__(
        self,
        comm: MPI.Comm,
        lag_bound: int = 0,
        *,
        timeout: float | None = 300.0,
        transport: str = "p2p",
        backoff: Backoff | str | None = "default",
        keep_history: bool = True,
    ):
        if isinstance(lag_bound, bool) or not isinstance(lag_bound, int) or lag_bound < 0:
            raise ValueError(f"lag bound must be an integer >= 0, got {lag_bound!r}")
        if lag_bound + 1 >= _TAG_SPACE:
            raise ValueError(f"lag bound must be below {_TAG_SPACE - 1}, got {lag_bound}")
        if transport not in ("p2p", "ialltoallv"):
            raise ValueError(f"transport must be 'p2p' or 'ialltoallv', got {transport!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive or None, got {timeout!r}")
        self.comm = comm.Dup()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.lag_bound = lag_bound
        self.timeout = timeout
        self.transport = transport
        self.backoff = Backoff() if backoff == "default" else backoff
        self.history: list[ExchangeStats] | None = [] if keep_history else None
        self._closed = False
        self._in_flight: deque[Exchange] = deque()  # posted, data not all here yet
        self._sending: deque[Exchange] = deque()  # completed, some sends still leaving
        self._posted = 0  # exchanges posted so far == number of the next one
        self._completed = 0
        # Peers in the order this rank talks to them: start after itself, so that no
        # rank is everybody's first target.
        self._peers = [(self.rank + k) % self.size for k in range(1, self.size)]

    # -- state ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def posted(self) -> int:
        """Number of exchanges posted so far (the next one gets this number)."""
        return self._posted

    @property
    def completed(self) -> int:
        return self._completed

    @property
    def closed(self) -> bool:
        return self._closed

    # -- posting -------------------------------------------------------------------------

    def post(
        self,
        send: Any,
        send_counts: Sequence[int] | None = None,
        recv_counts: Sequence[int] | None = None,
        recv: Any = None,
    ) -> Exchange:
        """Start the next exchange: ``send_counts[p]`` rows of ``send`` go to peer ``p``.

        Counts are in rows of the first dimension; ``None`` for both means equal split.
        ``recv`` (same dtype and row shape, ``sum(recv_counts)`` rows) is allocated when
        not given. ``send`` must not be modified until ``handle.sent`` (at the latest when
        exchange ``i + L + 1`` is posted, or after ``handle.wait()`` or ``drain()``). May
        block to keep the lag bound: exchange ``i - L - 1`` is completed first.
        """
        self._check_open()
        t_post = time.monotonic()
        sbuf = row_buffer(send, "send buffer")
        send_counts, recv_counts = split_counts(
            self.rank, self.size, sbuf.rows, send_counts, recv_counts
        )
        if recv is None:
            recv = new_like(send, sum(recv_counts))
        rbuf = row_buffer(recv, "receive buffer")
        if rbuf.row_bytes != sbuf.row_bytes or rbuf.dtype != sbuf.dtype:
            raise ValueError(
                f"receive buffer rows ({rbuf.dtype}, {rbuf.row_shape}) do not match send "
                f"buffer rows ({sbuf.dtype}, {sbuf.row_shape})"
            )
        if rbuf.rows < sum(recv_counts):
            raise ValueError(
                f"receive buffer has {rbuf.rows} rows, recv_counts need {sum(recv_counts)}"
            )
        # Keep the lag bound before anything of this exchange is started.
        while len(self._in_flight) > self.lag_bound:
            self._complete_oldest()
            t_post = time.monotonic()
        # At most L + 1 send buffer sets: the sends of exchange i - L - 1 must have left.
        oldest_allowed = self._posted - self.lag_bound
        send_wait = 0.0
        if self._sending and self._sending[0].iteration < oldest_allowed:
            self.flush_sends(oldest_allowed - 1)
            send_wait = time.monotonic() - t_post
            t_post = time.monotonic()

        iteration = self._posted
        stats = ExchangeStats(iteration, t_post, t_post, send_wait_s=send_wait)
        ex = Exchange(self, stats, send, recv)
        rb = sbuf.row_bytes
        sdispl = _displacements(send_counts)
        rdispl = _displacements(recv_counts)
        if self.transport == "p2p":
            self._start_p2p(ex, sbuf.view, rbuf.view, rb, send_counts, sdispl, recv_counts, rdispl)
        else:
            self._start_ialltoallv(
                ex, sbuf.view, rbuf.view, rb, send_counts, sdispl, recv_counts, rdispl
            )
        stats.bytes_sent = rb * (sum(send_counts) - send_counts[self.rank])
        stats.bytes_received = rb * (sum(recv_counts) - recv_counts[self.rank])
        stats.t_posted = time.monotonic()
        self._posted += 1
        self._in_flight.append(ex)
        if self.history is not None:
            self.history.append(stats)
        return ex

    def _start_p2p(self, ex, sview, rview, rb, scounts, sdispl, rcounts, rdispl) -> None:
        comm, tag, byte = self.comm, ex.stats.iteration % _TAG_SPACE, MPI.BYTE
        irecv, isend = comm.Irecv, comm.Isend
        peers = self._peers
        ex._reqs = [
            irecv([rview[rdispl[p] * rb : (rdispl[p] + rcounts[p]) * rb], byte], p, tag)
            for p in peers
        ]
        ex._send_reqs = [
            isend([sview[sdispl[p] * rb : (sdispl[p] + scounts[p]) * rb], byte], p, tag)
            for p in peers
        ]
        reqs = ex._reqs
        ex._peers = peers
        me = self.rank
        n = scounts[me] * rb
        if n:
            a, b = sdispl[me] * rb, rdispl[me] * rb
            rview[b : b + n] = sview[a : a + n]
        ex._statuses = [MPI.Status() for _ in reqs]
        ex.recv_bytes = [rcounts[peer] * rb for peer in self._peers]

    def _start_ialltoallv(self, ex, sview, rview, rb, scounts, sdispl, rcounts, rdispl) -> None:
        def spec(view, counts, displ):
            return [view, ([c * rb for c in counts], [d * rb for d in displ]), MPI.BYTE]

        ex._reqs.append(
            self.comm.Ialltoallv(spec(sview, scounts, sdispl), spec(rview, rcounts, rdispl))
        )
        ex._statuses = [MPI.Status()]

    # -- completing ----------------------------------------------------------------------

    def poll(self) -> list[Exchange]:
        """Complete, in order, the oldest exchanges whose data is already here; never blocks."""
        self._check_open()
        done = []
        while self._in_flight and self._in_flight[0]._ready():
            done.append(self._finish(self._in_flight.popleft(), waited=0.0, lag=0))
        self._reap_sends()
        return done

    def complete_oldest(self) -> Exchange:
        """Complete the oldest exchange in flight, waiting for it if needed."""
        self._check_open()
        if not self._in_flight:
            raise BLSError("no exchange in flight")
        return self._complete_oldest()

    def complete_until(self, iteration: int) -> list[Exchange]:
        """Complete every exchange up to and including ``iteration``, in order."""
        self._check_open()
        if iteration >= self._posted:
            raise BLSError(f"exchange {iteration} has not been posted (posted {self._posted})")
        done = []
        while self._completed <= iteration:
            done.append(self._complete_oldest())
        return done

    def trim(self, keep: int | None = None) -> list[Exchange]:
        """Complete the oldest exchanges until at most ``keep`` (default ``L``) are in flight.

        The usual loop is ``post`` -> local work -> ``trim()`` -> use the completed data:
        it keeps a peer up to ``L`` exchanges behind without blocking.
        """
        self._check_open()
        keep = self.lag_bound if keep is None else keep
        done = []
        while len(self._in_flight) > keep:
            done.append(self.complete_oldest())
        return done

    def drain(self) -> list[Exchange]:
        """Complete everything in flight, sends included (end of a run)."""
        done = self.trim(0)
        self.flush_sends()
        return done

    def flush_sends(self, iteration: int | None = None) -> None:
        """Wait until the sends of every exchange up to ``iteration`` (default: all) left."""
        self._check_open()
        while self._sending and (iteration is None or self._sending[0].iteration <= iteration):
            ex = self._sending[0]
            if not MPI.Request.Testall(ex._send_reqs):
                deadline = None if self.timeout is None else time.monotonic() + self.timeout
                if self.backoff is None:
                    MPI.Request.Waitall(ex._send_reqs)
                elif not self.backoff.wait(partial(MPI.Request.Testall, ex._send_reqs), deadline):
                    stuck = [
                        p
                        for p, r in zip(ex._peers, ex._send_reqs, strict=True)
                        if not r.Get_status()
                    ]
                    raise BLSTimeoutError(ex.iteration, stuck, 0, self.timeout)
            self._sending.popleft()
            self._sent(ex)

    def _reap_sends(self) -> None:
        """Release, in order, the send buffers whose pieces have all left; never blocks."""
        while self._sending and MPI.Request.Testall(self._sending[0]._send_reqs):
            self._sent(self._sending.popleft())

    @staticmethod
    def _sent(ex: Exchange) -> None:
        ex.sent = True
        ex.send = None
        ex._send_reqs = []

    def _complete_oldest(self) -> Exchange:
        ex = self._in_flight[0]
        if ex._ready():
            waited, lag = 0.0, 0
        else:
            lag = self._lag(ex)
            t0 = time.monotonic()
            deadline = None if self.timeout is None else t0 + self.timeout
            if self.backoff is None:  # MPI's own (spinning) wait, for measurements only
                MPI.Request.Waitall(ex._reqs, ex._statuses)
            elif not self.backoff.wait(ex._ready, deadline):
                raise BLSTimeoutError(ex.stats.iteration, self._missing(ex), lag, self.timeout)
            waited = time.monotonic() - t0
        self._in_flight.popleft()
        return self._finish(ex, waited, lag)

    def _finish(self, ex: Exchange, waited: float, lag: int) -> Exchange:
        ex.done = True
        stats = ex.stats
        stats.wait_s = waited
        stats.lag = lag
        stats.t_complete = time.monotonic()
        self._completed += 1
        if ex._peers:
            self._check_received(ex)
        ex._reqs = ex._statuses = []  # type: ignore[assignment]
        # Sends finish on their own time: a large message leaves only once its receiver
        # has copied it, and the receiver may be busy. Waiting for that here would tie this
        # rank to every receiver's progress; the send buffer is kept until ``sent``.
        if ex._send_reqs and not MPI.Request.Testall(ex._send_reqs):
            self._sending.append(ex)
        else:
            self._sent(ex)
        return ex

    def _check_received(self, ex: Exchange) -> None:
        # Receives are the first requests of an exchange; a short message is legal MPI,
        # so it is caught here (a long one fails as a truncation in ``_ready``).
        for k, (peer, expected) in enumerate(zip(ex._peers, ex.recv_bytes, strict=True)):
            got = ex._statuses[k].Get_count(MPI.BYTE)
            if got != expected:
                raise BLSCountError(
                    f"exchange {ex.stats.iteration}: peer {peer} sent {got} bytes but this "
                    f"rank expected {expected} (send and receive counts disagree)"
                )

    def _lag(self, ex: Exchange) -> int:
        """Exchanges this rank is ahead of the slowest peer that has not delivered ``ex``."""
        newest = self._posted - 1
        if not ex._peers:  # ialltoallv: per-peer arrival is not visible
            return newest - ex.stats.iteration + 1
        slowest = newest
        for k in range(len(ex._peers)):
            have = ex.stats.iteration - 1  # the peer has surely posted everything before
            for later in self._in_flight:  # the same peer's receive, exchange after exchange
                if not _arrived(later._reqs[k]):
                    break
                have = later.stats.iteration
            slowest = min(slowest, have)
        return newest - slowest

    def _missing(self, ex: Exchange) -> list[int]:
        if not ex._peers:
            return [p for p in range(self.size) if p != self.rank]
        return [peer for peer, req in zip(ex._peers, ex._reqs, strict=True) if not _arrived(req)]

    # -- lifetime ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BLSClosedError("this BLS alltoallv engine was closed")

    def close(self) -> None:
        """Drain and free the private communicator. Idempotent."""
        if self._closed:
            return
        try:
            self.drain()
        finally:
            self._closed = True
            self.comm.Free()

    def __enter__(self) -> BLSAlltoallv:
        return self

    def __exit__(self, exc_type, *_) -> None:
        # On an error the exchanges in flight cannot be completed safely: leave them.
        if exc_type is None:
            self.close()


def _arrived(req: MPI.Request) -> bool:
    """Whether a receive has completed, without freeing it.

    A receive that failed (a truncated message: counts disagree) raises in ``Get_status``;
    it has arrived all the same, and ``Exchange._ready`` reports it as a BLSCountError.
    """
    try:
        return req.Get_status()
    except MPI.Exception:
        return True


def split_counts(
    rank: int, size: int, rows: int, send_counts, recv_counts
) -> tuple[list[int], list[int]]:
    """Checked per-peer row counts for an alltoallv of ``rows`` rows (None, None: equal split).

    Shared by the engine and the synchronous baselines so that every collective refuses
    the same bad input, on the calling rank, before anything is sent.
    """
    p = size
    if send_counts is None and recv_counts is None:
        if rows % p:
            raise ValueError(f"equal split needs rows divisible by {p} ranks, got {rows}")
        equal = [rows // p] * p
        return equal, equal
    if send_counts is None or recv_counts is None:
        raise ValueError("give both send_counts and recv_counts, or neither (equal split)")
    send_counts = [_count(c, "send_counts") for c in send_counts]
    recv_counts = [_count(c, "recv_counts") for c in recv_counts]
    if len(send_counts) != p or len(recv_counts) != p:
        raise ValueError(
            f"need one count per rank ({p}), got {len(send_counts)} send and "
            f"{len(recv_counts)} receive counts"
        )
    if sum(send_counts) > rows:
        raise ValueError(f"send_counts add up to {sum(send_counts)} rows, send has {rows}")
    if send_counts[rank] != recv_counts[rank]:
        raise BLSCountError(
            f"rank {rank} sends {send_counts[rank]} rows to itself but expects {recv_counts[rank]}"
        )
    return send_counts, recv_counts


def _count(c: Any, what: str) -> int:
    n = int(c)
    if n != c or n < 0:
        raise ValueError(f"{what} must be non-negative integers, got {c!r}")
    return n


def _displacements(counts: Sequence[int]) -> list[int]:
    displ, total = [], 0
    for c in counts:
        displ.append(total)
        total += c
    return displ
