"""The torch.distributed backend "bls": existing torch code gets the BLS alltoallv.

New groups get the native backend (:mod:`bls_dlrm.comm.native`, C++ on the C++ BLS core)
with the same behaviour; the Python process group below serves ``transport="ialltoallv"``
and ``BLS_NATIVE=0``. What follows describes both, except where it names Python objects.

``import bls_dlrm.comm`` registers it; then ``dist.init_process_group("bls")`` under
``mpiexec`` needs no other argument (see :mod:`bls_dlrm.comm.rendezvous`).

``all_to_all_single`` is the BLS exchange. With ``async_op=True`` the returned Work's wait
is deferred: code that keeps up to ``L + 1`` Works alive lets a slow peer fall ``L``
exchanges behind; posting one more first completes the oldest. The lag bound of a group is
``BLSOptions.lag_bound`` (``pg_options=`` of ``init_process_group``/``new_group``), else the
environment variable ``BLS_LAG_BOUND``, else 0. Input and output may have different shapes
as with gloo: split sizes count rows of each tensor's first dimension.

How progress is driven. The engine has no background thread, by design (a progress
thread costs every exchange on a small machine). Instead every call into a "bls" group
drives progress on all of that group's in-flight exchanges before it does anything
else: posting any collective (``all_to_all_single``, ``all_reduce``, ``send``, ...),
``Work.wait()`` and ``Work.is_completed()`` of any Work of the group each first run the
engine's nonblocking ``poll()``, which completes in order the exchanges whose data has
arrived and releases the send buffers whose pieces have left. So unmodified torch code
that only posts and waits (for example keeping ``L + 1`` Works and waiting the oldest)
gets the full masking; it never has to poll. While a call blocks (a wait, or a post
held at the lag bound) the engine tests its requests, yields the core, then sleeps with
a short back-off (no spinning). Progress is per group: a call into one group does not
poll another group's exchanges.

Failures follow torch's protocol. ``Work.wait(timeout)`` waits at most ``timeout``
(a zero timeout, the default, means the group's: ``BLSOptions.timeout_s``, else the
``timeout=`` of ``init_process_group``/``new_group``). A timeout raises a
``BLSTimeoutError`` that is also a :class:`torch.distributed.DistBackendError` and names
the exchange, the missing peers and the lag; afterwards the Work is completed,
``is_success()`` is false and ``exception()`` returns that error. A timed-out exchange
stays posted in the engine: the group is not usable for a consistent exchange sequence
afterwards, and a multi-rank run should end (the DLRM loop aborts the MPI job).

The other collectives (``all_to_all``, ``all_reduce``, ``all_gather``, ``broadcast``,
``barrier``, ``send``/``recv``/``recv`` from any source, ``reduce``, ``gather``,
``scatter``, ``reduce_scatter``) are synchronous, wait politely, and are shared with the
"mpisync" backend (:mod:`bls_dlrm.comm.torch_common`). ``barrier`` first completes every
exchange of the group in flight, sends included, as gloo's barrier waits for earlier
asynchronous work.

Futures are returned complete: ``get_future`` first completes the exchange (and the older
ones). The engine keeps no per-exchange history (``keep_history=False``); the statistics
of an exchange are on its Work (``work.exchange.stats``).

Lifetime: ``destroy_process_group`` completes what is in flight and frees the group's MPI
communicators (also when completing fails). ``abort`` waits for nothing and keeps
every buffer an in-flight request may still touch referenced until the process ends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
from mpi4py import MPI
from torch.futures import Future

from . import native
from .engine import BLSAlltoallv, BLSClosedError, BLSError, BLSTimeoutError, Exchange
from .torch_common import (
    _PARKED,
    DoneWork,
    MPIProcessGroup,
    a2a_element_counts,
    as_dist_error,
    check_alltoall_lists,
    group_comm,
    group_timeout,
    overlaps,
    register_backend,
    timeout_seconds,
)

BACKEND_NAME = "bls"
LAG_BOUND_ENV = "BLS_LAG_BOUND"


@dataclass
class BLSOptions:
    """Options of a "bls" process group (``pg_options=``).

    lag_bound: exchanges a peer may fall behind (None: ``$BLS_LAG_BOUND`` or 0).
    timeout_s: seconds before a blocked exchange raises (None: the group's timeout).
    transport: "p2p" or "ialltoallv" (see :class:`~bls_dlrm.comm.engine.BLSAlltoallv`).
    """

    lag_bound: int | None = None
    timeout_s: float | None = None
    transport: str = "p2p"


def default_lag_bound() -> int:
    raw = os.environ.get(LAG_BOUND_ENV, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{LAG_BOUND_ENV} must be an integer >= 0, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{LAG_BOUND_ENV} must be an integer >= 0, got {value}")
    return value


# -- Work --------------------------------------------------------------------------------


class BLSWork(DoneWork):
    """A posted BLS exchange; ``wait`` completes it (and older ones) in order."""

    def __init__(self, pg: ProcessGroupBLS, exchange: Exchange, output: torch.Tensor):
        super().__init__([output], pg)
        self.exchange = exchange
        self._copy_out: torch.Tensor | None = None  # set when recv went to a temporary

    def wait(self, timeout: timedelta = timedelta(0)) -> bool:
        """Complete the exchange (and older ones); afterwards input and output are free."""
        if self._error is not None:
            raise self._error
        ex = self.exchange
        pg = self._pg
        if not (pg.closed and ex.done and ex.sent):
            engine = pg._engine_or_raise()
            try:
                engine.poll()
                if not (ex.done and ex.sent):
                    ex.wait(timeout=timeout_seconds(timeout))
            except BLSTimeoutError as exc:
                raise self._fail(as_dist_error(exc)) from None
            except BLSError as exc:
                raise self._fail(exc) from None
        self._finish()
        return True

    def _finish(self) -> None:
        if self._copy_out is not None:
            out = self._copy_out.detach()
            out.copy_(self.exchange.recv.view(out.shape))
            self._copy_out = None

    def is_completed(self) -> bool:
        """Non-blocking: drives progress, true once both buffers are free again (or failed)."""
        if self._error is not None:
            return True
        ex = self.exchange
        if not self._pg.closed:
            self._pg._engine_or_raise().poll()
        if ex.done:
            self._finish()
        return ex.done and ex.sent

    def get_future(self) -> Future:
        fut: Future = Future()
        try:
            self.wait()
        except Exception as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(self._result)
        return fut


# -- the process group -------------------------------------------------------------------


class ProcessGroupBLS(MPIProcessGroup):
    """A torch ProcessGroup whose all-to-all is the BLS alltoallv over MPI."""

    def __init__(self, comm: MPI.Comm, options: BLSOptions, timeout: timedelta):
        lag = options.lag_bound if options.lag_bound is not None else default_lag_bound()
        seconds = options.timeout_s
        if seconds is None:
            seconds = group_timeout(timeout)
        super().__init__(comm, seconds)
        self.options = options
        self._engine: BLSAlltoallv | None = BLSAlltoallv(
            comm, lag, timeout=seconds, transport=options.transport, keep_history=False
        )

    # torch asks for these
    def getBackendName(self) -> str:
        return BACKEND_NAME

    @property
    def lag_bound(self) -> int:
        return self._engine_or_raise().lag_bound

    @property
    def engine(self) -> BLSAlltoallv:
        return self._engine_or_raise()

    def _closed_error(self) -> Exception:
        return BLSClosedError("the 'bls' process group was destroyed")

    def _engine_or_raise(self) -> BLSAlltoallv:
        if self._engine is None:
            raise BLSClosedError("the 'bls' process group was destroyed")
        return self._engine

    # -- progress and lifetime ---------------------------------------------------------------

    def _progress(self) -> None:
        self._engine.poll()
        if self._pending:
            super()._progress()

    def _quiesce(self) -> None:
        try:
            self._engine.drain()
        except BLSTimeoutError as exc:
            raise as_dist_error(exc) from None

    def _close_resources(self) -> None:
        try:
            super()._close_resources()  # drains the engine (barrier's _quiesce)
        finally:
            engine, self._engine = self._engine, None
            engine.close()

    def abort(self) -> None:
        """Give up at once: in-flight exchanges are not completed.

        Their buffers and requests (and the engine's communicator) stay referenced until
        the process ends, so MPI never touches freed memory.
        """
        if self._closed:
            return
        engine, self._engine = self._engine, None
        try:
            if engine is not None:
                _PARKED.append(engine)
                if hasattr(engine, "abort"):
                    engine.abort()  # cancels the receives that have not matched
        finally:
            super().abort()

    # -- all-to-all --------------------------------------------------------------------------

    def alltoall_base(self, output, input, output_split_sizes, input_split_sizes, opts):
        engine = self._engine_or_raise()
        send_counts, recv_counts = a2a_element_counts(
            output, input, output_split_sizes, input_split_sizes, self._size
        )
        engine.poll()
        send = input.detach() if input.requires_grad else input
        if overlaps(output, input) or not send.is_contiguous():
            send = send.contiguous().clone()  # receives would overwrite what is still sent
        recv, copy_out = (output.detach() if output.requires_grad else output), None
        if not recv.is_contiguous():
            recv, copy_out = torch.empty_like(recv, memory_format=torch.contiguous_format), output
        exchange = engine.post(send.reshape(-1), send_counts, recv_counts, recv.reshape(-1))
        work = BLSWork(self, exchange, output)
        work._copy_out = copy_out
        return work

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts):
        # ``dist.all_to_all_single`` calls this name. torch's C++ method would reach
        # ``alltoall_base`` through a wrapper Work that forwards only ``wait`` and
        # ``get_future`` (its ``is_completed`` stays False forever); calling it here hands
        # the caller the BLSWork itself.
        return self.alltoall_base(output, input, output_split_sizes, input_split_sizes, opts)

    def alltoall(self, output_tensors, input_tensors, opts):
        engine = self._engine_or_raise()
        p = self.size()
        check_alltoall_lists(output_tensors, input_tensors, p)
        engine.poll()
        send = torch.cat([t.detach().reshape(-1) for t in input_tensors])
        send_counts = [t.numel() for t in input_tensors]
        recv_counts = [t.numel() for t in output_tensors]
        exchange = engine.post(send, send_counts, recv_counts)
        try:
            exchange.wait()
        except BLSTimeoutError as exc:
            raise as_dist_error(exc) from None
        for out, piece in zip(output_tensors, exchange.recv.split(recv_counts), strict=True):
            out.detach().copy_(piece.view(out.shape))
        return DoneWork(list(output_tensors), self)


# -- registration ------------------------------------------------------------------------


def _check_options(backend_options) -> BLSOptions:
    if backend_options is not None and not isinstance(backend_options, BLSOptions):
        raise TypeError(f"pg_options for 'bls' must be BLSOptions, got {type(backend_options)}")
    options = backend_options if backend_options is not None else BLSOptions()
    lag = options.lag_bound if options.lag_bound is not None else default_lag_bound()
    if isinstance(lag, bool) or not isinstance(lag, int) or lag < 0:
        raise ValueError(
            f"BLSOptions.lag_bound: the lag bound must be an integer >= 0, got {lag!r}"
        )
    if options.transport not in ("p2p", "ialltoallv"):
        raise ValueError(f"BLSOptions.transport must be p2p or ialltoallv: {options.transport!r}")
    return options


def _create(dist_opts, backend_options):
    # Check the options before any communicator exists, so a bad one leaks nothing.
    options = _check_options(backend_options)
    comm = group_comm(dist_opts, BACKEND_NAME)
    if native.enabled() and options.transport == "p2p":
        lag = options.lag_bound if options.lag_bound is not None else default_lag_bound()
        seconds = options.timeout_s
        if seconds is None:
            seconds = group_timeout(dist_opts.timeout)
        try:
            return native.bls_backend(comm, lag, seconds)  # works on a duplicate
        finally:
            comm.Free()
    try:
        return ProcessGroupBLS(comm, options, dist_opts.timeout)
    except BaseException:
        if comm != MPI.COMM_WORLD:
            comm.Free()
        raise


def register() -> None:
    """Register the backend "bls" (idempotent; done by ``import bls_dlrm.comm``)."""
    register_backend(BACKEND_NAME, _create)


__all__ = [
    "BACKEND_NAME",
    "LAG_BOUND_ENV",
    "BLSOptions",
    "BLSTimeoutError",
    "BLSWork",
    "ProcessGroupBLS",
    "register",
]
