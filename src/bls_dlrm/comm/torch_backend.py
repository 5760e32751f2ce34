"""The torch.distributed backend "bls": existing torch code gets the BLS alltoallv.

``import bls_dlrm.comm`` registers it; then ``dist.init_process_group("bls")`` under
``mpiexec`` needs no other argument (see :mod:`bls_dlrm.comm.rendezvous`).

``all_to_all_single`` is the BLS exchange. With ``async_op=True`` the returned Work's wait
is deferred: code that keeps up to ``L + 1`` Works alive lets a slow peer fall ``L``
exchanges behind; posting one more first completes the oldest. The lag bound of a group is
``BLSOptions.lag_bound`` (``pg_options=`` of ``init_process_group``/``new_group``), else the
environment variable ``BLS_LAG_BOUND``, else 0.

The other collectives that DDP and user code need (``all_to_all``, ``all_reduce``,
``all_gather``, ``broadcast``, ``barrier``, ``send``/``recv``, ``reduce``, ``gather``,
``scatter``, ``reduce_scatter``) are synchronous and wait politely (no spinning). Reductions
gather every rank's tensor and reduce in rank order, so every rank gets the same bits and
every dtype (bfloat16 included) works.

Futures are returned complete: the engine has no background thread, by design, so
``get_future`` first completes the exchange (and the older ones).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from mpi4py import MPI
from torch.futures import Future

from .engine import Backoff, BLSAlltoallv, BLSClosedError, BLSTimeoutError, Exchange

BACKEND_NAME = "bls"
LAG_BOUND_ENV = "BLS_LAG_BOUND"

_world_comm: MPI.Comm | None = None  # COMM_WORLD reordered by torch rank


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


class _DoneWork(dist.Work):
    """A finished operation (the synchronous collectives)."""

    def __init__(self, result: list[torch.Tensor] | None = None):
        super().__init__()
        self._result = result or []

    def wait(self, timeout: timedelta = timedelta(0)) -> bool:
        return True

    def is_completed(self) -> bool:
        return True

    def is_success(self) -> bool:
        return True

    def exception(self):
        return None

    def result(self) -> list[torch.Tensor]:
        return self._result

    def get_future(self) -> Future:
        fut: Future = Future()
        fut.set_result(self._result)
        return fut


class BLSWork(_DoneWork):
    """A posted BLS exchange; ``wait`` completes it (and older ones) in order."""

    def __init__(self, pg: ProcessGroupBLS, exchange: Exchange, output: torch.Tensor):
        super().__init__([output])
        self._pg = pg
        self.exchange = exchange
        self._copy_out: torch.Tensor | None = None  # set when recv went to a temporary

    def wait(self, timeout: timedelta = timedelta(0)) -> bool:
        """Complete the exchange (and older ones); afterwards input and output are free."""
        if not (self.exchange.done and self.exchange.sent):
            self.exchange.wait()
        self._finish()
        return True

    def _finish(self) -> None:
        if self._copy_out is not None:
            self._copy_out.copy_(self.exchange.recv)
            self._copy_out = None

    def is_completed(self) -> bool:
        """Non-blocking: drives progress, true once both buffers are free again."""
        ex = self.exchange
        if not (ex.done and ex.sent) and not self._pg.closed:
            self._pg._engine_or_raise().poll()
        if ex.done:
            self._finish()
        return ex.done and ex.sent

    def get_future(self) -> Future:
        self.wait()
        return super().get_future()


class _RequestWork(_DoneWork):
    """A point-to-point operation in flight; ``wait`` completes it (politely)."""

    def __init__(
        self,
        pg: ProcessGroupBLS,
        req: MPI.Request,
        what: str,
        result: list[torch.Tensor],
        buf: torch.Tensor,
        copy_to: torch.Tensor | None = None,
    ):
        super().__init__(result)
        self._pg, self._req, self._what = pg, req, what
        self._buf, self._copy_to = buf, copy_to  # MPI's buffer stays alive until done
        self._done = False

    def wait(self, timeout: timedelta = timedelta(0)) -> bool:
        if not self._done:
            self._pg._wait(self._req, self._what)
            self._finish()
        return True

    def is_completed(self) -> bool:
        if not self._done and self._req.Test():
            self._finish()
        return self._done

    def _finish(self) -> None:
        self._done = True
        if self._copy_to is not None:
            self._copy_to.copy_(self._buf)
        self._buf = self._copy_to = None

    def get_future(self) -> Future:
        self.wait()
        return super().get_future()


# -- the process group -------------------------------------------------------------------


class ProcessGroupBLS(dist.ProcessGroup):
    """A torch ProcessGroup whose all-to-all is the BLS alltoallv over MPI."""

    def __init__(self, comm: MPI.Comm, options: BLSOptions, timeout: timedelta):
        super().__init__(comm.Get_rank(), comm.Get_size())
        self._comm = comm
        lag = options.lag_bound if options.lag_bound is not None else default_lag_bound()
        seconds = options.timeout_s
        if seconds is None:
            seconds = timeout.total_seconds() if timeout.total_seconds() > 0 else None
        self.timeout_s = seconds
        self.options = options
        self._backoff = Backoff()
        self._engine: BLSAlltoallv | None = BLSAlltoallv(
            comm, lag, timeout=seconds, transport=options.transport
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

    @property
    def closed(self) -> bool:
        return self._engine is None

    def _engine_or_raise(self) -> BLSAlltoallv:
        if self._engine is None:
            raise BLSClosedError("the 'bls' process group was destroyed")
        return self._engine

    def shutdown(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.close()
            if self._comm not in (MPI.COMM_NULL, MPI.COMM_WORLD):
                self._comm.Free()

    def abort(self) -> None:
        self._engine = None

    # -- waiting ---------------------------------------------------------------------------

    def _wait(self, req: MPI.Request, what: str) -> None:
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        if not self._backoff.wait(req.Test, deadline):
            raise TimeoutError(f"'bls' {what} did not complete within {self.timeout_s:g} s")

    def _allgather_bytes(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's copy of ``tensor`` stacked in rank order (shape (P, *shape))."""
        self._engine_or_raise()
        src = tensor.detach().contiguous()
        out = torch.empty((self.size(), *src.shape), dtype=src.dtype)
        req = self._comm.Iallgather([_bytes(src), MPI.BYTE], [_bytes(out), MPI.BYTE])
        self._wait(req, "allgather")
        return out

    # -- all-to-all --------------------------------------------------------------------------

    def alltoall_base(self, output, input, output_split_sizes, input_split_sizes, opts):
        engine = self._engine_or_raise()
        if output.dtype != input.dtype:
            raise TypeError(f"all_to_all_single: output is {output.dtype}, input is {input.dtype}")
        if output.dim() == 0 or input.dim() == 0:
            raise ValueError("all_to_all_single needs tensors with at least one dimension")
        if tuple(output.shape[1:]) != tuple(input.shape[1:]):
            raise ValueError(
                f"all_to_all_single: output rows {tuple(output.shape[1:])} differ from "
                f"input rows {tuple(input.shape[1:])}"
            )
        p = self.size()
        send_counts = _splits(input, input_split_sizes, p, "input")
        recv_counts = _splits(output, output_split_sizes, p, "output")
        send = input
        if _overlaps(output, input) or not input.is_contiguous():
            send = input.contiguous().clone()  # receives would overwrite what is still sent
        recv, copy_out = output, None
        if not output.is_contiguous():
            recv, copy_out = torch.empty_like(output, memory_format=torch.contiguous_format), output
        exchange = engine.post(send, send_counts, recv_counts, recv)
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
        if len(output_tensors) != p or len(input_tensors) != p:
            raise ValueError(f"all_to_all needs {p} input and {p} output tensors")
        dtype = input_tensors[0].dtype
        for t in (*input_tensors, *output_tensors):
            if t.dtype != dtype:
                raise TypeError(f"all_to_all: mixed dtypes {dtype} and {t.dtype}")
        send = torch.cat([t.detach().reshape(-1) for t in input_tensors])
        send_counts = [t.numel() for t in input_tensors]
        recv_counts = [t.numel() for t in output_tensors]
        exchange = engine.post(send, send_counts, recv_counts)
        engine.complete_until(exchange.iteration)
        for out, piece in zip(output_tensors, exchange.recv.split(recv_counts), strict=True):
            out.copy_(piece.view(out.shape))
        return _DoneWork(list(output_tensors))

    # -- reductions and the rest (synchronous) -----------------------------------------------

    def allreduce(self, tensors, opts):
        for t in tensors:
            t.copy_(_reduce(self._allgather_bytes(t), opts.reduceOp))
        return _DoneWork(list(tensors))

    def allreduce_coalesced(self, tensors, opts):
        return self.allreduce(tensors, opts)

    def reduce(self, tensors, opts):
        for t in tensors:
            result = _reduce(self._allgather_bytes(t), opts.reduceOp)
            if self.rank() == opts.rootRank:
                t.copy_(result)
        return _DoneWork(list(tensors))

    def allgather(self, output_tensors, input_tensors, opts):
        for outs, t in zip(output_tensors, input_tensors, strict=True):
            if len(outs) != self.size():
                raise ValueError(f"all_gather needs {self.size()} output tensors")
            stacked = self._allgather_bytes(t)
            for out, piece in zip(outs, stacked, strict=True):
                out.copy_(piece)
        return _DoneWork([o for outs in output_tensors for o in outs])

    def _allgather_base(self, output, input, opts):
        if output.numel() != input.numel() * self.size():
            raise ValueError(
                f"all_gather_into_tensor: output has {output.numel()} elements, needs "
                f"{input.numel() * self.size()}"
            )
        output.copy_(self._allgather_bytes(input).view(output.shape))
        return _DoneWork([output])

    # ``dist.all_gather_into_tensor`` and ``dist.reduce_scatter_tensor`` call these names;
    # torch's C++ methods behind them look for a per-device backend, which a Python
    # process group does not have ("No backend type associated with device type cpu").
    def all_gather_single(self, output, input, opts):
        return self._allgather_base(output, input, opts)

    def reduce_scatter_single(self, output, input, opts):
        return self._reduce_scatter_base(output, input, opts)

    def gather(self, output_tensors, input_tensors, opts):
        stacked = self._allgather_bytes(input_tensors[0])
        if self.rank() == opts.rootRank:
            for out, piece in zip(output_tensors[0], stacked, strict=True):
                out.copy_(piece)
        return _DoneWork(list(input_tensors))

    def scatter(self, output_tensors, input_tensors, opts):
        out = output_tensors[0]
        root = opts.rootRank
        if self.rank() == root:
            send = torch.stack([t.detach().contiguous() for t in input_tensors[0]])
        else:
            send = torch.empty((self.size(), *out.shape), dtype=out.dtype)
        self._broadcast_in_place(send, root)
        out.copy_(send[self.rank()])
        return _DoneWork([out])

    def reduce_scatter(self, output_tensors, input_tensors, opts):
        for out, ins in zip(output_tensors, input_tensors, strict=True):
            mine = torch.stack([t.detach().contiguous() for t in ins])
            reduced = _reduce(self._allgather_bytes(mine), opts.reduceOp)
            out.copy_(reduced[self.rank()])
        return _DoneWork(list(output_tensors))

    def _reduce_scatter_base(self, output, input, opts):
        reduced = _reduce(self._allgather_bytes(input), opts.reduceOp)
        output.copy_(reduced.view(self.size(), *output.shape)[self.rank()])
        return _DoneWork([output])

    def broadcast(self, tensors, opts):
        for t in tensors:
            self._broadcast_in_place(t, opts.rootRank)
        return _DoneWork(list(tensors))

    def _broadcast_in_place(self, t: torch.Tensor, root: int) -> None:
        self._engine_or_raise()
        buf = t if t.is_contiguous() else t.contiguous()
        self._wait(self._comm.Ibcast([_bytes(buf), MPI.BYTE], root=root), "broadcast")
        if buf is not t:
            t.copy_(buf)

    def barrier(self, opts):
        self._engine_or_raise()
        self._wait(self._comm.Ibarrier(), "barrier")
        return _DoneWork()

    # send and recv return at once (``dist.isend``/``dist.irecv`` must not block: ranks that
    # all isend first would deadlock on large messages); ``dist.send``/``recv`` wait.

    def send(self, tensors, dst, tag):
        self._engine_or_raise()
        buf = tensors[0].detach().contiguous()
        req = self._comm.Isend([_bytes(buf), MPI.BYTE], dst, tag)
        return _RequestWork(self, req, "send", list(tensors), buf)

    def recv(self, tensors, src, tag):
        self._engine_or_raise()
        t = tensors[0]
        buf = t if t.is_contiguous() else torch.empty_like(t, memory_format=torch.contiguous_format)
        req = self._comm.Irecv([_bytes(buf), MPI.BYTE], src, tag)
        return _RequestWork(self, req, "recv", list(tensors), buf, None if buf is t else t)


# -- helpers -----------------------------------------------------------------------------


def _bytes(t: torch.Tensor):
    return t.reshape(-1).view(torch.uint8).numpy()


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors share memory (torch storages never partly overlap)."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _splits(t: torch.Tensor, split_sizes, p: int, what: str) -> list[int]:
    rows = t.shape[0]
    if not split_sizes:
        if rows % p:
            raise ValueError(
                f"all_to_all_single: {what} has {rows} rows, not divisible by {p} ranks "
                "(give split sizes for an uneven split)"
            )
        return [rows // p] * p
    sizes = [int(s) for s in split_sizes]
    if len(sizes) != p:
        raise ValueError(f"all_to_all_single: {len(sizes)} {what} split sizes for {p} ranks")
    if any(s < 0 for s in sizes):
        raise ValueError(f"all_to_all_single: negative {what} split size in {sizes}")
    if sum(sizes) != rows:
        raise ValueError(
            f"all_to_all_single: {what} split sizes add up to {sum(sizes)}, {what} has {rows} rows"
        )
    return sizes


def _reduce(stacked: torch.Tensor, op) -> torch.Tensor:
    """Reduce along dim 0 in rank order (identical bits on every rank)."""
    R = dist.ReduceOp
    if op == R.SUM or op == R.AVG:
        out = stacked[0].clone()
        for piece in stacked[1:]:
            out += piece
        if op == R.AVG:
            if not (out.is_floating_point() or out.is_complex()):
                raise TypeError(f"ReduceOp.AVG needs a floating point tensor, got {out.dtype}")
            out /= stacked.shape[0]
        return out
    if op == R.PRODUCT:
        out = stacked[0].clone()
        for piece in stacked[1:]:
            out *= piece
        return out
    if op == R.MIN:
        return stacked.amin(dim=0) if stacked.dtype != torch.bool else stacked.all(dim=0)
    if op == R.MAX:
        return stacked.amax(dim=0) if stacked.dtype != torch.bool else stacked.any(dim=0)
    bitwise = {R.BAND: torch.bitwise_and, R.BOR: torch.bitwise_or, R.BXOR: torch.bitwise_xor}
    for key, fn in bitwise.items():
        if op == key:
            out = stacked[0].clone()
            for piece in stacked[1:]:
                out = fn(out, piece)
            return out
    raise ValueError(f"the 'bls' backend does not support reduce op {op}")


# -- registration ------------------------------------------------------------------------


def _create(dist_opts, backend_options) -> ProcessGroupBLS:
    global _world_comm
    options = backend_options if isinstance(backend_options, BLSOptions) else BLSOptions()
    if backend_options is not None and not isinstance(backend_options, BLSOptions):
        raise TypeError(f"pg_options for 'bls' must be BLSOptions, got {type(backend_options)}")
    # Check the options before any communicator exists, so a bad one leaks nothing.
    lag = options.lag_bound if options.lag_bound is not None else default_lag_bound()
    if isinstance(lag, bool) or not isinstance(lag, int) or lag < 0:
        raise ValueError(
            f"BLSOptions.lag_bound: the lag bound must be an integer >= 0, got {lag!r}"
        )
    if options.transport not in ("p2p", "ialltoallv"):
        raise ValueError(f"BLSOptions.transport must be p2p or ialltoallv: {options.transport!r}")
    rank, size = dist_opts.group_rank, dist_opts.group_size
    ranks = list(dist_opts.global_ranks_in_group)
    world = MPI.COMM_WORLD
    if not ranks or _world_comm is None:
        if size != world.Get_size() and not ranks:
            raise RuntimeError(
                f"the 'bls' backend runs over MPI: the group has {size} ranks but MPI has "
                f"{world.Get_size()}; start the program with `mpiexec -n {size} ...`"
            )
        if _world_comm is None or _world_comm == MPI.COMM_NULL:
            _world_comm = world.Split(0, rank if not ranks else world.Get_rank())
    if ranks and ranks != list(range(_world_comm.Get_size())):
        group = _world_comm.Get_group().Incl(ranks)
        comm = _world_comm.Create_group(group, tag=7)
        group.Free()
    else:
        comm = _world_comm.Dup()
    if comm.Get_rank() != rank or comm.Get_size() != size:
        raise RuntimeError(
            f"torch rank {rank}/{size} does not match MPI rank {comm.Get_rank()}/"
            f"{comm.Get_size()} for the 'bls' group"
        )
    return ProcessGroupBLS(comm, options, dist_opts.timeout)


_registered = False


def register() -> None:
    """Register the backend "bls" (idempotent; done by ``import bls_dlrm.comm``)."""
    global _registered
    if _registered:
        return
    from . import rendezvous

    rendezvous.install()
    if BACKEND_NAME not in dist.Backend.backend_list:
        dist.Backend.register_backend(BACKEND_NAME, _create, extended_api=True, devices=["cpu"])
    _registered = True


__all__ = [
    "BACKEND_NAME",
    "LAG_BOUND_ENV",
    "BLSOptions",
    "BLSTimeoutError",
    "BLSWork",
    "ProcessGroupBLS",
    "register",
]
