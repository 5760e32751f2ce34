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

Progress: the engine has no thread. Every engine call (``post``, ``poll``, ``trim``,
``complete_*``, ``flush_sends``, ``Exchange.test``/``wait``) tests the oldest exchange in
flight and reaps finished sends; MPICH progresses *all* pending messages inside any test,
so any call moves every exchange in flight forward. ``poll`` costs two ``Testall`` calls
when nothing is ready, so a caller may make it on every step.

Transport, chosen by measurement (``bls-dlrm bench-a2a --collectives
bls:0,bls:0:ialltoallv``, README "Progress strategy"): point-to-point receives and sends
on a private duplicate of the communicator, one message per peer and exchange, tagged by
the exchange's slot ``i mod (L + 1)``. At most ``L + 1`` exchanges are in flight and MPI
does not let a peer's messages with one tag overtake each other, so the slot keeps
exchanges apart. The alternative, one ``Ialltoallv`` per exchange, is available as
``transport="ialltoallv"``; MPI may skip empty pieces there, so a zero-count piece does
not hold a rank to the lag bound.

Fast path for repeated counts (p2p): counts are checked, and displacements and byte
ranges built, once per distinct ``(rows, row bytes, send_counts, recv_counts)`` (a cache
of 64 patterns); statuses are kept per slot. When an exchange also repeats the *buffers*
(addresses) that its slot saw last time, as a loop does that reuses its buffers or a ring
of ``L + 1`` of them, the slot gets persistent requests (``Recv_init``/``Send_init``,
tag = slot) and every later exchange there is one ``Startall``. New counts or buffers take
the ordinary ``Irecv``/``Isend`` path. Each rank chooses alone: both paths use the same
tags. Measured on 2 ranks (2 cores shared with other jobs), blocking exchanges at L = 0
(``post(send, None, None, recv); trim()``), 31 interleaved blocks of 30 exchanges, median
block time per exchange (max over ranks) against mpi4py's blocking ``Alltoallv`` on the
same bytes, range over three runs; the engine before the fast path in brackets:

==========  ==========  ==============  =========================
per peer    persistent  plain (cached)  counts new on every call
==========  ==========  ==============  =========================
16 KiB      1.19-1.21x  1.29-1.34x      1.65-1.99x (1.53-1.72x)
64 KiB      0.82-0.91x  0.83-0.96x      1.07-1.19x (0.93-1.14x)
1 MiB       0.52-0.54x  0.54-0.56x      0.58-0.59x (0.57x)
==========  ==========  ==============  =========================

So the persistent requests are on by default (``persistent=False`` turns them off).
Engine-owned slot buffers (copy in, persistent exchange, copy out) lost to the plain path
at 1, 16 and 64 KiB per peer (1.07x, 1.4x, 1.55x its time): the copies cost more than
persistent requests save, so the engine uses the caller's buffers. On 4
ranks over 2 busy cores the same loop measured milliseconds of scheduling noise per
exchange, no usable ratio; the quiet-machine numbers of ``bls-dlrm bench-a2a --api
engine,torch`` (2 bound ranks and 4 ranks, both APIs) are in the README, "Benchmarks".

Waiting never busy-spins: ranks are often oversubscribed (4 ranks on 2 cores), and a
spinning rank steals the core from the very peer it waits for. A blocked rank tests its
requests (which also drives MPI progress), then yields the core, then sleeps with a
short exponential back-off; see :class:`Backoff`.

Threads: every public call holds the engine's ``threading.RLock`` (uncontended: post +
trim with and without it differed by less than the noise, under 1 us of 12 us on one
rank). A blocked call yields and sleeps *without* the lock, so another
thread may complete the same exchange meanwhile (the blocked call then returns) or post.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, ClassVar

from mpi4py import MPI

from .buffers import new_like, row_buffer, send_buffer

_TAG_SPACE = 1 << 15  # MPI guarantees tags up to 32767
DEFAULT_HISTORY = 4096  # ExchangeStats kept by default (``keep_history``)
_PLAN_CACHE = 64  # distinct count patterns remembered
_QUERY, _ANSWER = 1, 2  # tags of the ialltoallv transport's "how far are you?" messages
# Exchanges an aborted (or failed) engine could not finish: their buffers stay referenced
# here until the process exits, so MPI never writes into or reads from freed memory.
_ABANDONED: list[Exchange] = []
_ABANDONED_REQUESTS: list[tuple[MPI.Request, Any]] = []  # (request, the buffer it uses)

try:  # torch users catch DistBackendError; it has no instance layout of its own
    from torch.distributed import DistBackendError as _DistBackendError
except ImportError:  # pragma: no cover - torch without distributed support
    _DistBackendError = RuntimeError  # type: ignore[misc, assignment]


class BLSError(RuntimeError):
    """Base class of the engine's errors."""


class BLSTimeoutError(BLSError, _DistBackendError, TimeoutError):
    """An exchange did not complete within the timeout.

    Also a ``torch.distributed.DistBackendError`` and a ``TimeoutError``. ``waiting_for``
    is ``"data"`` (peers had not delivered their pieces) or ``"send"`` (this rank's pieces
    had not been taken by their receivers).
    """

    def __init__(
        self,
        iteration: int,
        peers: Sequence[int],
        lag: int,
        timeout: float | None,
        waiting_for: str = "data",
    ):
        self.iteration, self.peers, self.lag, self.timeout = iteration, list(peers), lag, timeout
        self.waiting_for = waiting_for
        within = "" if timeout is None else f" within {timeout:g} s"
        if waiting_for == "send":
            text = (
                f"BLS alltoallv exchange {iteration}: this rank's pieces did not leave{within}: "
                f"waiting for peer(s) {self.peers} to receive them; this rank has posted "
                f"{lag} exchange(s) from this one on (has a peer died or stopped calling?)"
            )
        else:
            text = (
                f"BLS alltoallv exchange {iteration} did not complete{within}: "
                f"no data from peer(s) {self.peers}; this rank is {lag} exchange(s) ahead of "
                "the slowest of them (has a peer died or stopped posting?)"
            )
        super().__init__(text)

    def __reduce__(self):
        args = (self.iteration, self.peers, self.lag, self.timeout, self.waiting_for)
        return (type(self), args)


class BLSCountError(BLSError, ValueError):
    """Send and receive counts of two ranks disagree."""


class BLSClosedError(BLSError):
    """The engine was used after ``close`` or ``abort``."""


@dataclass(slots=True)
class ExchangeStats:
    """What one exchange cost this rank (times from ``time.monotonic``, seconds)."""

    iteration: int
    t_post: float  # when ``post`` started (after any lag-bound wait)
    t_posted: float  # when all sends and receives were started
    t_complete: float = float("nan")  # when the exchange was completed on this rank
    wait_s: float = 0.0  # time blocked waiting for this exchange's data
    # When the rank blocked for this exchange: how many exchanges, this one included, it
    # had posted that the slowest missing peer had not delivered (newest posted - i + 1;
    # a missing peer has delivered i - 1, since completion is in order). 1 for a blocked
    # synchronous exchange, at most L + 1 at the lag bound; 0: it did not block.
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
        "default": {},
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
        except (KeyError, TypeError):
            raise ValueError(f"unknown wait preset {name!r}: {sorted(cls.PRESETS)}") from None

    @classmethod
    def of(cls, backoff: Backoff | str | None) -> Backoff | None:
        """A Backoff from an instance, a preset name, or None (MPI's own Waitall)."""
        if backoff is None or isinstance(backoff, Backoff):
            return backoff
        if isinstance(backoff, str):
            return cls.preset(backoff)
        raise ValueError(f"backoff must be a Backoff, a preset name or None, got {backoff!r}")

    def wait(
        self,
        done: Callable[[], bool],
        deadline: float | None,
        sleep: Callable[[float], Any] = time.sleep,
        yield_: Callable[[], Any] = os.sched_yield,
    ) -> bool:
        """Call ``done()`` until it returns true; False if ``deadline`` passed first.

        ``sleep`` and ``yield_`` give the core away (the engine passes versions that also
        release its lock).
        """
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
                yield_()
        else:
            return True
        pause = self.first_sleep
        while not done():
            t = now()
            if deadline is not None and t > deadline:
                return done()
            if deadline is not None:
                pause = min(pause, max(deadline - t, 0.0) + 1e-6)
            sleep(pause)
            pause = min(2 * pause, self.max_sleep)
        return True


class _Plan:
    """Checked counts of one count pattern and everything derived from them."""

    __slots__ = (
        "a2a_recv",
        "a2a_send",
        "bytes_received",
        "bytes_sent",
        "recv_bytes",
        "recv_counts",
        "recv_rows",
        "recvs",
        "self_copy",
        "send_counts",
        "sends",
    )

    def __init__(self, rank, peers, row_bytes, send_counts, recv_counts, collective):
        rb = row_bytes
        self.send_counts, self.recv_counts = send_counts, recv_counts
        sbytes = [c * rb for c in send_counts]
        rbytes = [c * rb for c in recv_counts]
        soff = [0, *accumulate(sbytes)]  # soff[p]: first byte for peer p; soff[P]: total
        roff = [0, *accumulate(rbytes)]
        # (peer, first byte, end byte) in the order this rank talks to its peers
        self.recvs = [(p, roff[p], roff[p + 1]) for p in peers]
        self.sends = [(p, soff[p], soff[p + 1]) for p in peers]
        self.recv_bytes = [rbytes[p] for p in peers]
        self.recv_rows = sum(recv_counts)
        n = sbytes[rank]
        self.self_copy = (soff[rank], roff[rank], n) if n else None
        self.bytes_sent = soff[-1] - n
        self.bytes_received = roff[-1] - rbytes[rank]
        if collective:
            self.a2a_send = (sbytes, soff[:-1])
            self.a2a_recv = (rbytes, roff[:-1])


class _Persistent:
    """Persistent requests of one slot for one (plan, send address, receive address)."""

    __slots__ = ("key", "recv_reqs", "reqs", "send_reqs", "statuses")

    def __init__(self, key, comm, tag, plan: _Plan, sview, rview):
        byte = MPI.BYTE
        self.key = key
        self.recv_reqs = [comm.Recv_init([rview[a:b], byte], p, tag) for p, a, b in plan.recvs]
        self.send_reqs = [comm.Send_init([sview[a:b], byte], p, tag) for p, a, b in plan.sends]
        self.reqs = self.recv_reqs + self.send_reqs  # receives first, as the plain path
        self.statuses = [MPI.Status() for _ in self.recv_reqs]

    def free(self) -> None:
        for r in self.reqs:
            if r:
                r.Free()
        self.reqs = self.recv_reqs = self.send_reqs = []


class Exchange:
    """Handle of one posted alltoallv; ``wait`` returns the receive buffer."""

    __slots__ = (
        "_engine",
        "_here",
        "_peers",
        "_plan",
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
        self._here = False  # the receives completed (their statuses are in ``_statuses``)
        self._reqs: list[MPI.Request] = []  # receives (p2p) or the one Ialltoallv
        self._peers: list[int] = []  # the peer of each receive in ``_reqs`` (p2p)
        self._send_reqs: list[MPI.Request] = []
        self._statuses: list[MPI.Status] = []
        self._plan: _Plan | None = None
        self.recv_bytes: list[int] = []

    @property
    def iteration(self) -> int:
        return self.stats.iteration

    def test(self) -> bool:
        """True once this exchange's data is here (does not complete it); drives progress."""
        if self.done:
            return True
        with self._engine._lock:
            return self.done or self._ready()

    def _ready(self) -> bool:
        # A successful Testall frees (or deactivates) the requests and fills the
        # statuses; a second one would see empty requests and overwrite the statuses.
        if self._here:
            return True
        try:
            self._here = MPI.Request.Testall(self._reqs, self._statuses)
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
        return self._here

    def wait(self, timeout: float | None = None) -> Any:
        """Complete every exchange up to this one, in order, and its sends; return ``recv``.

        Afterwards both buffers belong to the caller again. ``timeout`` (seconds) bounds
        this call instead of the engine's timeout.
        """
        engine = self._engine
        if not (self.done and self.sent):
            with engine._lock:
                engine._check_open()
                deadline = engine._call_deadline(timeout)
                if not self.done:
                    engine._complete_until(self.stats.iteration, deadline, timeout)
                if not self.sent:
                    engine._flush_sends(self.stats.iteration, deadline, timeout)
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
        forever. Waiting calls take a ``timeout`` of their own that overrides it.
    transport:
        ``"p2p"`` (default, per-peer messages) or ``"ialltoallv"`` (one nonblocking
        collective per exchange).
    backoff:
        How a blocked rank waits: a :class:`Backoff`, a preset name (``"polite"`` =
        ``"default"``, ``"yield"``, ``"sleep"``), or ``None`` for MPI's ``Waitall``, which
        spins and ignores ``timeout``: it exists only to measure the difference.
    keep_history:
        How many exchanges' :class:`ExchangeStats` ``history`` keeps, newest last:
        ``DEFAULT_HISTORY`` (4096) by default, ``True`` for all (benchmarks), ``False``
        or 0 for none, or a count.
    persistent:
        Use persistent requests for exchanges that repeat a slot's counts and buffers
        (p2p only; on by default, ``False`` for comparisons).
    """

    def __init__(
        self,
        comm: MPI.Comm,
        lag_bound: int = 0,
        *,
        timeout: float | None = 300.0,
        transport: str = "p2p",
        backoff: Backoff | str | None = "default",
        keep_history: bool | int = DEFAULT_HISTORY,
        persistent: bool = True,
    ):
        if isinstance(lag_bound, bool) or not isinstance(lag_bound, int) or lag_bound < 0:
            raise ValueError(f"lag bound must be an integer >= 0, got {lag_bound!r}")
        if lag_bound + 1 >= _TAG_SPACE:
            raise ValueError(f"lag bound must be below {_TAG_SPACE - 1}, got {lag_bound}")
        if transport not in ("p2p", "ialltoallv"):
            raise ValueError(f"transport must be 'p2p' or 'ialltoallv', got {transport!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive or None, got {timeout!r}")
        self.backoff = Backoff.of(backoff)
        if keep_history is True:
            history: deque[ExchangeStats] | None = deque()
        elif keep_history is False or keep_history == 0:
            history = None
        elif isinstance(keep_history, int) and keep_history > 0:
            history = deque(maxlen=keep_history)
        else:
            raise ValueError(f"keep_history must be a bool or a count >= 0, got {keep_history!r}")
        self._history = history
        self.comm = comm.Dup()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.lag_bound = lag_bound
        self.timeout = timeout
        self.transport = transport
        self._lock = threading.RLock()
        self._closed = False
        self._in_flight: deque[Exchange] = deque()  # posted, data not all here yet
        self._sending: deque[Exchange] = deque()  # completed, some sends still leaving
        self._posted = 0  # exchanges posted so far == number of the next one
        self._completed = 0
        # Peers in the order this rank talks to them: start after itself, so that no
        # rank is everybody's first target.
        self._peers = [(self.rank + k) % self.size for k in range(1, self.size)]
        self._plans: dict[tuple, _Plan] = {}
        # ialltoallv: one collective request shows no per-peer arrival. To name the slow
        # peer, a rank about to time out asks its peers how far they have posted; every
        # engine answers while it polls or waits (see ``_serve_queries``).
        self._ctl: MPI.Comm | None = None
        if transport == "ialltoallv" and self.size > 1:
            self._ctl = self.comm.Dup()
            self._query_in = bytearray(8)
            self._query_status = MPI.Status()
            self._query_req = self._ctl.Irecv([self._query_in, MPI.BYTE], MPI.ANY_SOURCE, _QUERY)
            self._replies: list[tuple[MPI.Request, bytes]] = []
        self._persistent_on = persistent and transport == "p2p"
        slots = lag_bound + 1
        self._slot_reqs: list[_Persistent | None] = [None] * slots
        self._slot_seen: list[tuple | None] = [None] * slots
        self._slot_statuses: list[list[MPI.Status] | None] = [None] * slots
        release = getattr(self._lock, "_release_save", None)
        restore = getattr(self._lock, "_acquire_restore", None)
        if release is not None and restore is not None:

            def unlocked_sleep(seconds: float) -> None:
                state = release()
                try:
                    time.sleep(seconds)
                finally:
                    restore(state)

            def unlocked_yield() -> None:
                state = release()
                try:
                    os.sched_yield()
                finally:
                    restore(state)

            self._sleep, self._yield = unlocked_sleep, unlocked_yield
        else:  # pragma: no cover - an RLock without Condition's helpers
            self._sleep, self._yield = time.sleep, os.sched_yield

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

    @property
    def history(self) -> list[ExchangeStats]:
        """The kept :class:`ExchangeStats`, oldest first (a copy; see ``keep_history``)."""
        with self._lock:
            return [] if self._history is None else list(self._history)

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
        with self._lock:
            self._check_open()
            t_post = time.monotonic()
            send, sbuf = send_buffer(send)
            plan = self._plan(sbuf.rows, sbuf.row_bytes, send_counts, recv_counts)
            if recv is None:
                recv = new_like(send, plan.recv_rows)
            rbuf = row_buffer(recv, "receive buffer", writable=True)
            if rbuf.row_bytes != sbuf.row_bytes or rbuf.dtype != sbuf.dtype:
                raise ValueError(
                    f"receive buffer rows ({rbuf.dtype}, {rbuf.row_shape}) do not match "
                    f"send buffer rows ({sbuf.dtype}, {sbuf.row_shape})"
                )
            if rbuf.rows < plan.recv_rows:
                raise ValueError(
                    f"receive buffer has {rbuf.rows} rows, recv_counts need {plan.recv_rows}"
                )
            # Keep the lag bound and the send-buffer bound before anything of this exchange
            # is started. A wait releases the lock, so both are checked again after it.
            send_wait = 0.0
            while True:
                if len(self._in_flight) > self.lag_bound:
                    self._complete_next(None, None)
                    t_post = time.monotonic()
                    continue
                # At most L + 1 send buffer sets: the sends of exchange i - L - 1 are out.
                oldest_allowed = self._posted - self.lag_bound
                if self._sending and self._sending[0].iteration < oldest_allowed:
                    t0 = time.monotonic()
                    self._flush_sends(oldest_allowed - 1, None, None)
                    t_post = time.monotonic()
                    send_wait += t_post - t0
                    continue
                break

            iteration = self._posted
            stats = ExchangeStats(iteration, t_post, t_post, send_wait_s=send_wait)
            ex = Exchange(self, stats, send, recv)
            ex._plan = plan
            if self.transport == "p2p":
                self._start_p2p(ex, plan, sbuf, rbuf)
            else:
                self._start_ialltoallv(ex, plan, sbuf.view, rbuf.view)
            stats.bytes_sent = plan.bytes_sent
            stats.bytes_received = plan.bytes_received
            stats.t_posted = time.monotonic()
            self._posted += 1
            self._in_flight.append(ex)
            if self._history is not None:
                self._history.append(stats)
            return ex

    def _plan(self, rows: int, row_bytes: int, send_counts, recv_counts) -> _Plan:
        try:
            key = (
                rows,
                row_bytes,
                None if send_counts is None else tuple(send_counts),
                None if recv_counts is None else tuple(recv_counts),
            )
            plan = self._plans.get(key)
        except TypeError:  # counts that do not hash: check them every time
            key, plan = None, None
        if plan is None:
            sc, rc = split_counts(self.rank, self.size, rows, send_counts, recv_counts)
            plan = _Plan(
                self.rank,
                self._peers,
                row_bytes,
                sc,
                rc,
                self.transport != "p2p",
            )
            if key is not None:
                if len(self._plans) >= _PLAN_CACHE:
                    self._plans.clear()
                self._plans[key] = plan
        return plan

    def _start_p2p(self, ex: Exchange, plan: _Plan, sbuf, rbuf) -> None:
        iteration = ex.stats.iteration
        slots = self.lag_bound + 1
        slot = iteration % slots
        sview, rview = sbuf.view, rbuf.view
        ex._peers = self._peers
        ex.recv_bytes = plan.recv_bytes
        if self._persistent_on:
            # The slot's previous exchange (i - L - 1 or older) is complete and its sends
            # have left (``post`` made sure), so its persistent requests are inactive.
            key = (plan, sbuf.address, rbuf.address)
            entry = self._slot_reqs[slot]
            if entry is None or entry.key != key:
                if self._slot_seen[slot] == key:  # the buffers repeat: build once
                    if entry is not None:
                        entry.free()
                    entry = _Persistent(key, self.comm, slot, plan, sview, rview)
                    self._slot_reqs[slot] = entry
                else:
                    self._slot_seen[slot] = key
                    entry = None
            if entry is not None:
                MPI.Prequest.Startall(entry.reqs)
                ex._reqs, ex._send_reqs, ex._statuses = (
                    entry.recv_reqs,
                    entry.send_reqs,
                    entry.statuses,
                )
                self._self_copy(plan, sview, rview)
                return
        comm, tag, byte = self.comm, slot, MPI.BYTE
        irecv, isend = comm.Irecv, comm.Isend
        ex._reqs = [irecv([rview[a:b], byte], p, tag) for p, a, b in plan.recvs]
        ex._send_reqs = [isend([sview[a:b], byte], p, tag) for p, a, b in plan.sends]
        # Exchange i - L - 1 of this slot is finished: its statuses may be reused.
        statuses = self._slot_statuses[slot]
        if statuses is None:
            statuses = self._slot_statuses[slot] = [MPI.Status() for _ in plan.recvs]
        ex._statuses = statuses
        self._self_copy(plan, sview, rview)

    @staticmethod
    def _self_copy(plan: _Plan, sview, rview) -> None:
        if plan.self_copy is not None:
            a, b, n = plan.self_copy
            rview[b : b + n] = sview[a : a + n]

    def _start_ialltoallv(self, ex: Exchange, plan: _Plan, sview, rview) -> None:
        byte = MPI.BYTE
        ex._reqs = [
            self.comm.Ialltoallv([sview, plan.a2a_send, byte], [rview, plan.a2a_recv, byte])
        ]
        ex._statuses = [MPI.Status()]

    # -- completing ----------------------------------------------------------------------

    def poll(self) -> list[Exchange]:
        """Complete, in order, the oldest exchanges whose data is already here; never blocks.

        Also releases the send buffers whose pieces have left. Cheap when nothing is ready
        (a test of the oldest exchange and of the oldest pending sends).
        """
        with self._lock:
            self._check_open()
            done = []
            in_flight = self._in_flight
            while in_flight and in_flight[0]._ready():
                done.append(self._finish(in_flight.popleft(), waited=0.0, lag=0))
            self._reap_sends()
            if self._ctl is not None:
                self._serve_queries()
            return done

    def complete_oldest(self, timeout: float | None = None) -> Exchange:
        """Complete the oldest exchange in flight, waiting for it if needed."""
        with self._lock:
            self._check_open()
            if not self._in_flight:
                raise BLSError("no exchange in flight")
            ex = self._in_flight[0]
            self._complete_until(ex.iteration, self._call_deadline(timeout), timeout)
            return ex

    def complete_until(self, iteration: int, timeout: float | None = None) -> list[Exchange]:
        """Complete every exchange up to and including ``iteration``, in order.

        ``timeout`` (seconds) bounds this call instead of the engine's timeout.
        """
        with self._lock:
            self._check_open()
            if iteration >= self._posted:
                raise BLSError(f"exchange {iteration} has not been posted (posted {self._posted})")
            return self._complete_until(iteration, self._call_deadline(timeout), timeout)

    def trim(self, keep: int | None = None) -> list[Exchange]:
        """Complete the oldest exchanges until at most ``keep`` (default ``L``) are in flight.

        The usual loop is ``post`` -> local work -> ``trim()`` -> use the completed data:
        it keeps a peer up to ``L`` exchanges behind without blocking.
        """
        with self._lock:
            self._check_open()
            keep = self.lag_bound if keep is None else keep
            done = []
            while len(self._in_flight) > keep:
                ex = self._complete_next(None, None)
                if ex is not None:
                    done.append(ex)
            return done

    def drain(self) -> list[Exchange]:
        """Complete everything in flight, sends included (end of a run)."""
        with self._lock:
            done = self.trim(0)
            self.flush_sends()
            return done

    def flush_sends(self, iteration: int | None = None, timeout: float | None = None) -> None:
        """Wait until the sends of every exchange up to ``iteration`` (default: all) left.

        ``timeout`` (seconds) bounds this call instead of the engine's timeout.
        """
        with self._lock:
            self._check_open()
            self._flush_sends(iteration, self._call_deadline(timeout), timeout)

    # -- internals (the lock is held) ----------------------------------------------------

    def _call_deadline(self, timeout: float | None) -> float | None:
        if timeout is None:
            return None
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
        return time.monotonic() + timeout

    def _deadline(self, deadline: float | None) -> float | None:
        """The call's own deadline, else one engine timeout from now."""
        if deadline is not None:
            return deadline
        return None if self.timeout is None else time.monotonic() + self.timeout

    def _complete_until(self, iteration: int, deadline, timeout) -> list[Exchange]:
        done = []
        while self._completed <= iteration:
            ex = self._complete_next(deadline, timeout)
            if ex is not None:
                done.append(ex)
        return done

    def _complete_next(self, deadline: float | None, timeout: float | None) -> Exchange | None:
        """Complete the oldest exchange; None if another thread completed it meanwhile."""
        ex = self._in_flight[0]
        if ex._ready():
            self._in_flight.popleft()
            return self._finish(ex, 0.0, 0)
        lag = self._lag(ex)
        t0 = time.monotonic()
        if self.backoff is None:  # MPI's own (spinning) wait, for measurements only
            MPI.Request.Waitall(ex._reqs, ex._statuses)
            ex._here = True
        elif self._ctl is None:
            ok = self.backoff.wait(
                lambda: ex.done or self._closed or ex._ready(),
                self._deadline(deadline),
                self._sleep,
                self._yield,
            )
            self._check_open()
            if ex.done:  # another thread completed it while this one slept
                return None
            if not ok:
                raise BLSTimeoutError(
                    ex.stats.iteration,
                    self._missing(ex),
                    lag,
                    self.timeout if timeout is None else timeout,
                )
        else:
            if self._wait_asking(ex, self._deadline(deadline), lag, timeout) is None:
                return None
        waited = time.monotonic() - t0
        # Only in-order completion pops, so an exchange not done is still the oldest.
        self._in_flight.popleft()
        return self._finish(ex, waited, lag)

    def _flush_sends(self, iteration: int | None, deadline, timeout) -> None:
        sending = self._sending
        while sending and (iteration is None or sending[0].iteration <= iteration):
            ex = sending[0]
            if not MPI.Request.Testall(ex._send_reqs):
                if self.backoff is None:
                    MPI.Request.Waitall(ex._send_reqs)
                else:
                    ok = self.backoff.wait(
                        lambda ex=ex: ex.sent or self._closed or MPI.Request.Testall(ex._send_reqs),
                        self._deadline(deadline),
                        self._sleep,
                        self._yield,
                    )
                    self._check_open()
                    if ex.sent:
                        continue
                    if not ok:
                        stuck = [
                            p
                            for p, r in zip(ex._peers, ex._send_reqs, strict=True)
                            if not _arrived(r)
                        ]
                        raise BLSTimeoutError(
                            ex.iteration,
                            stuck,
                            self._posted - ex.iteration,
                            self.timeout if timeout is None else timeout,
                            waiting_for="send",
                        )
            sending.popleft()
            self._sent(ex)

    def _reap_sends(self) -> None:
        """Release, in order, the send buffers whose pieces have all left; never blocks."""
        sending = self._sending
        while sending and MPI.Request.Testall(sending[0]._send_reqs):
            self._sent(sending.popleft())

    @staticmethod
    def _sent(ex: Exchange) -> None:
        ex.sent = True
        ex.send = None
        ex._send_reqs = []

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
        if ex._send_reqs and (self._sending or not MPI.Request.Testall(ex._send_reqs)):
            self._sending.append(ex)
        else:
            self._sent(ex)
        return ex

    def _check_received(self, ex: Exchange) -> None:
        # Receives are the first requests of an exchange; a short message is legal MPI,
        # so it is caught here (a long one fails as a truncation in ``_ready``).
        statuses = ex._statuses
        for k, expected in enumerate(ex.recv_bytes):
            got = statuses[k].Get_count(MPI.BYTE)
            if got != expected:
                raise BLSCountError(
                    f"exchange {ex.stats.iteration}: peer {ex._peers[k]} sent {got} bytes but "
                    f"this rank expected {expected} (send and receive counts disagree)"
                )

    def _lag(self, ex: Exchange) -> int:
        """How far the slowest peer that has not delivered ``ex`` (the oldest) is behind.

        Completion is in order, so every peer has delivered ``ex.iteration - 1``; a missing
        one has not delivered ``ex``. This rank has posted up to ``newest``, so it is
        ``newest - ex.iteration + 1`` exchanges ahead of that peer's last delivered one.
        (A peer may have posted ``ex`` with its data still on the way: then it is a lower
        bound plus one; MPI does not show a peer's progress beyond its messages.)
        """
        return self._posted - ex.stats.iteration

    def _wait_asking(self, ex: Exchange, deadline, lag, timeout) -> Exchange | None:
        """ialltoallv: wait for ``ex``; before the deadline, ask the peers how far they are.

        Half the timeout (at most 1 s) before the deadline this rank asks every peer with
        a piece for it; a peer answers with its number of posted exchanges the next time
        it polls or waits in its engine. At the deadline the slow peers are those that
        had not posted ``ex`` or did not answer. None: another thread completed ``ex``.
        """

        def here() -> bool:
            return ex.done or self._closed or ex._ready() or self._serve_queries()

        grace = None if deadline is None else min(1.0, (deadline - time.monotonic()) / 2)
        first = None if deadline is None else deadline - grace
        ok = self.backoff.wait(here, first, self._sleep, self._yield)
        self._check_open()
        if ex.done:
            return None
        if ok:
            return ex
        asked = self._missing(ex)
        ctl, i = self._ctl, ex.stats.iteration
        question = i.to_bytes(8, "little", signed=True)
        answers = {p: bytearray(8) for p in asked}
        reqs = [ctl.Irecv([answers[p], MPI.BYTE], p, _ANSWER) for p in asked]
        sends = [ctl.Isend([question, MPI.BYTE], p, _QUERY) for p in asked]
        ok = self.backoff.wait(here, deadline, self._sleep, self._yield)
        self._check_open()
        if ex.done:
            return None
        if ok:
            # Answers still on their way are left to arrive; their buffers are kept.
            _ABANDONED_REQUESTS.extend((r, answers) for r in reqs + sends)
            return ex
        slow = []
        for p, r in zip(asked, reqs, strict=True):
            if not r.Test() or int.from_bytes(answers[p], "little", signed=True) <= i:
                slow.append(p)
        _ABANDONED_REQUESTS.extend((r, answers) for r in reqs + sends)
        raise BLSTimeoutError(i, slow or asked, lag, self.timeout if timeout is None else timeout)

    def _serve_queries(self) -> bool:
        """Answer peers that asked how far this rank has posted (ialltoallv); False."""
        status = self._query_status
        while self._query_req.Test(status):
            reply = self._posted.to_bytes(8, "little", signed=True)
            peer = status.Get_source()
            self._replies.append((self._ctl.Isend([reply, MPI.BYTE], peer, _ANSWER), reply))
            self._query_req = self._ctl.Irecv([self._query_in, MPI.BYTE], MPI.ANY_SOURCE, _QUERY)
        if self._replies and self._replies[0][0].Test():
            self._replies = [(r, b) for r, b in self._replies if not r.Test()]
        return False

    def _missing(self, ex: Exchange) -> list[int]:
        if not ex._peers:
            plan = ex._plan
            # ialltoallv: per-peer arrival is not visible; peers with nothing for this
            # rank cannot hold it up.
            counts = plan.recv_counts if plan is not None else [1] * self.size
            return [p for p in range(self.size) if p != self.rank and counts[p]]
        return [peer for peer, req in zip(ex._peers, ex._reqs, strict=True) if not _arrived(req)]

    # -- lifetime ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BLSClosedError("this BLS alltoallv engine was closed")

    def close(self) -> None:
        """Drain and free the private communicator. Idempotent.

        If draining fails (a timeout), what is still in flight is abandoned as in
        :meth:`abort` and the error propagates.
        """
        with self._lock:
            if self._closed:
                return
            try:
                self.drain()
            finally:
                self._abandon()
                self._closed = True
                self._free_persistent()
                self._free_ctl()
                self.comm.Free()

    def abort(self) -> None:
        """Give up on everything in flight, without waiting; the engine is closed.

        Receives that have not matched are cancelled; the buffers of every exchange that
        was not finished stay referenced (until the process exits), so MPI never touches
        freed memory. Meant for a job that is about to end (an error on some rank).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._abandon()
            self._free_ctl()
            # Freeing a communicator with pending operations is legal MPI: it goes once
            # they finish. Persistent requests still active are left to the process exit.

    def _abandon(self) -> None:
        pending = [*self._in_flight, *self._sending]
        self._in_flight.clear()
        self._sending.clear()
        active = False
        for ex in pending:
            if not ex.done and not ex._here:
                for r in ex._reqs:
                    try:
                        if r and not _arrived(r):
                            r.Cancel()
                    except MPI.Exception:
                        pass
                active = True
            if ex._send_reqs:
                active = True
            _ABANDONED.append(ex)
        if active:
            # Persistent requests of the abandoned exchanges stay allocated.
            self._slot_reqs = [None] * len(self._slot_reqs)

    def _free_ctl(self) -> None:
        if self._ctl is None:
            return
        req = self._query_req
        try:
            req.Cancel()
            if not req.Test():  # a cancelled receive completes at once; else keep it
                _ABANDONED_REQUESTS.append((req, self._query_in))
        except MPI.Exception:
            _ABANDONED_REQUESTS.append((req, self._query_in))
        _ABANDONED_REQUESTS.extend(self._replies)
        self._replies = []
        self._ctl.Free()
        self._ctl = None

    def _free_persistent(self) -> None:
        for entry in self._slot_reqs:
            if entry is not None:
                entry.free()
        self._slot_reqs = [None] * len(self._slot_reqs)

    def __enter__(self) -> BLSAlltoallv:
        return self

    def __exit__(self, exc_type, *_) -> None:
        # On an error the exchanges in flight cannot be completed safely: leave them
        # (abandoned, so their buffers stay alive).
        if exc_type is None:
            self.close()
        else:
            self.abort()


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
