"""What the torch.distributed backends "bls" and "mpisync" share.

Both are Python process groups over an MPI communicator that holds the group's ranks in
torch's rank order. They differ only in their all-to-all (the BLS engine, or MPI's own
``Alltoallv``); everything else lives here:

- :class:`MPIProcessGroup`: the other collectives (``all_reduce``, ``reduce``,
  ``all_gather``, ``broadcast``, ``barrier``, ``gather``, ``scatter``, ``reduce_scatter``),
  point-to-point ``send``/``recv``/``recv_anysource``, polite waiting with a deadline, and
  the progress hook that every call runs first;
- the Work types: :class:`DoneWork` (finished at once) and :class:`RequestWork` (one MPI
  request in flight), both with torch's failure protocol (after an error
  ``is_completed()`` is true, ``is_success()`` false, ``exception()`` returns the error and
  ``wait()`` raises it again);
- :class:`CollectiveTimeoutError` and :func:`as_dist_error`: every timeout a user sees is
  a :class:`torch.distributed.DistBackendError` (and a :class:`TimeoutError`);
- :func:`group_comm`: the MPI communicator of a new group, from torch's options.

Reductions gather every rank's tensor and reduce in rank order, so every rank gets the
same bits and every dtype (bfloat16 included) works. Results are written into
``tensor.detach()``, so tensors that require grad work as they do with gloo.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from mpi4py import MPI
from torch.futures import Future

from .engine import Backoff

_world_comm: MPI.Comm | None = None  # COMM_WORLD reordered by torch's global rank


# -- errors ------------------------------------------------------------------------------


class CollectiveTimeoutError(TimeoutError, dist.DistBackendError):
    """An MPI operation of a process group did not complete within its timeout."""


_DIST_TYPES: dict[type, type] = {}


def dist_type(base: type) -> type:
    """``base`` made a :class:`torch.distributed.DistBackendError` as well (one subclass
    per type, named like it, shared by :func:`as_dist_error` and the native backends)."""
    if issubclass(base, dist.DistBackendError):
        return base
    cls = _DIST_TYPES.get(base)
    if cls is None:
        cls = type(base.__name__, (base, dist.DistBackendError), {"__module__": base.__module__})
        cls.__qualname__ = base.__qualname__
        _DIST_TYPES[base] = cls
    return cls


def as_dist_error(exc: BaseException) -> BaseException:
    """``exc`` made a :class:`torch.distributed.DistBackendError` as well (in place).

    The engine's errors know nothing of torch; torch users catch ``DistBackendError``.
    The exception keeps its type (a subclass is made once per type) and its attributes
    (``iteration``, ``peers``, ``lag`` of a ``BLSTimeoutError``).
    """
    if isinstance(exc, dist.DistBackendError):
        return exc
    cls = dist_type(type(exc))
    try:
        exc.__class__ = cls
    except TypeError:  # pragma: no cover - an exception type with an incompatible layout
        wrapped = CollectiveTimeoutError(str(exc))
        wrapped.__cause__ = exc
        return wrapped
    return exc


def timeout_seconds(timeout: timedelta | float | None) -> float | None:
    """torch's ``Work.wait(timeout)``: a zero (or missing) timeout means the group's own."""
    if timeout is None:
        return None
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    return seconds if seconds > 0 else None


# -- Work --------------------------------------------------------------------------------


class DoneWork(dist.Work):
    """An operation that finished (or failed) before its call returned."""

    def __init__(self, result: list[torch.Tensor] | None = None, pg: MPIProcessGroup | None = None):
        super().__init__()
        self._result = result or []
        self._error: BaseException | None = None
        self._pg = pg  # its wait and is_completed drive the group's progress

    def _fail(self, exc: BaseException) -> BaseException:
        self._error = exc
        return exc

    def wait(self, timeout: timedelta = timedelta(0)) -> bool:
        if self._pg is not None:
            self._pg._progress_if_open()
        if self._error is not None:
            raise self._error
        return True

    def is_completed(self) -> bool:
        if self._pg is not None:
            self._pg._progress_if_open()
        return True

    def is_success(self) -> bool:
        return self._error is None and self.is_completed()

    def exception(self):
        return self._error

    def result(self) -> list[torch.Tensor]:
        return self._result

    def get_future(self) -> Future:
        fut: Future = Future()
        try:
            self.wait()
        except Exception as exc:  # a failed Work hands its error to the future
            fut.set_exception(exc)
        else:
            fut.set_result(self._result)
        return fut


class RequestWork(DoneWork):
    """One MPI request in flight; ``wait`` completes it politely, within a deadline.

    The buffers MPI reads or writes (``keep``) stay referenced until the request is done.
    ``copy_to``/``copy_from``: a result that went to a temporary is copied out when done.
    """

    def __init__(
        self,
        pg: MPIProcessGroup,
        req: MPI.Request,
        what: str,
        result: list[torch.Tensor],
        keep: tuple = (),
        copy_to: torch.Tensor | None = None,
        copy_from: torch.Tensor | None = None,
        is_recv: bool = False,
        collective: bool = False,
    ):
        super().__init__(result, pg)
        self.collective = collective  # barrier and destroy complete it first
        self._req, self._what = req, what
        self._keep = keep
        self._copy_to, self._copy_from = copy_to, copy_from
        self._is_recv = is_recv
        self._status = MPI.Status()
        self._done = False

    def _test(self) -> bool:
        """Nonblocking; finishes the operation once its request is complete."""
        if not self._done and self._req.Test(self._status):
            self._finish()
        return self._done

    def _finish(self) -> None:
        self._done = True
        if self._copy_to is not None:
            self._copy_to.detach().copy_(self._copy_from)
        self._keep = ()
        self._copy_to = self._copy_from = None

    def is_completed(self) -> bool:
        self._pg._progress_if_open()
        if not self._done and self._error is None:
            self._test()
        return self._done or self._error is not None

    def wait(self, timeout: timedelta = timedelta(0)) -> bool:
        if self._error is not None:
            raise self._error
        if not self._done:
            self._pg._progress_if_open()
            try:
                self._pg._wait_until(self._test, self._what, timeout_seconds(timeout))
            except CollectiveTimeoutError as exc:
                self._abandon()
                raise self._fail(exc) from None
        return True

    def _abandon(self) -> None:
        """After a timeout: cancel a receive; keep every buffer MPI may still touch alive."""
        if self._is_recv:
            with contextlib.suppress(MPI.Exception):  # already matched: it completes
                self._req.Cancel()
        _PARKED.append((self._req, self._keep))

    def _source_rank(self) -> int:
        """The group rank a receive got its data from (``dist.recv`` without ``src``)."""
        self.wait()
        return self._status.Get_source()

    def source_rank(self) -> int:
        return self._source_rank()


# Requests that can no longer be waited for (timed out, or their group aborted), with the
# buffers they point at: kept referenced until the process ends, so MPI never writes into
# or reads from freed memory.
_PARKED: list[Any] = []


# -- the process group -------------------------------------------------------------------


class MPIProcessGroup(dist.ProcessGroup):
    """A torch ProcessGroup over an MPI communicator: every collective but the all-to-all.

    Subclasses give ``getBackendName``, ``alltoall_base``, ``alltoall``, and may extend
    :meth:`_progress` (run at the start of every call and of every Work's ``wait`` and
    ``is_completed``) and :meth:`_quiesce` (what ``barrier`` completes first).
    """

    def __init__(self, comm: MPI.Comm, timeout_s: float | None):
        super().__init__(comm.Get_rank(), comm.Get_size())
        # rank() and size() cross into C++ on every call; the hot paths use these.
        self._rank, self._size = comm.Get_rank(), comm.Get_size()
        self._comm = comm
        self.timeout_s = timeout_s
        self._backoff = Backoff()
        self._closed = False
        self._pending: deque[RequestWork] = deque()  # nonblocking operations in flight

    # -- lifetime --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def _closed_error(self) -> Exception:
        return RuntimeError(f"the {self.getBackendName()!r} process group was destroyed")

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _enter(self) -> None:
        """Every call starts here: refuse a closed group, then drive progress."""
        if self._closed:
            raise self._closed_error()
        self._progress()

    def _progress(self) -> None:
        """Nonblocking: complete the nonblocking operations of this group that are done."""
        pending = self._pending
        if pending:
            for work in list(pending):
                if work._test() or work._error is not None:
                    pending.remove(work)

    def _progress_if_open(self) -> None:
        if not self._closed:
            self._progress()

    def _track(self, work: RequestWork) -> RequestWork:
        self._pending.append(work)
        return work

    def _free_comm(self) -> None:
        comm, self._comm = self._comm, MPI.COMM_NULL
        if comm not in (MPI.COMM_NULL, MPI.COMM_WORLD):
            comm.Free()

    def shutdown(self) -> None:
        """``destroy_process_group``: finish what is in flight, then free the communicator."""
        if self._closed:
            return
        try:
            self._close_resources()
        finally:
            self._closed = True
            self._pending.clear()
            self._free_comm()

    def _close_resources(self) -> None:
        """Complete the group's collectives in flight; park unfinished sends and receives.

        A send or receive whose peer never posts its side cannot be completed; like gloo,
        destroying the group does not wait for it.
        """
        self._quiesce()
        for work in self._pending:
            if not work._test():
                work._abandon()

    def abort(self) -> None:
        """Give up at once: nothing is waited for, nothing MPI may still touch is freed.

        Receives in flight are cancelled; every request and buffer of the group (and the
        communicator) stays referenced until the process ends.
        """
        if self._closed:
            return
        self._closed = True
        for work in self._pending:
            if not work._done:
                work._abandon()
        self._pending.clear()
        _PARKED.append(self._comm)

    # -- waiting ---------------------------------------------------------------------------

    def _wait_until(self, done, what: str, timeout_s: float | None = None) -> None:
        """Call ``done()`` politely until true; CollectiveTimeoutError after the timeout."""
        if done():
            return
        seconds = timeout_s if timeout_s is not None else self.timeout_s
        deadline = None if seconds is None else time.monotonic() + seconds
        if not self._backoff.wait(done, deadline):
            raise CollectiveTimeoutError(
                f"{self.getBackendName()!r} {what} did not complete within {seconds:g} s "
                f"(rank {self.rank()} of {self.size()})"
            )

    def _wait(self, req: MPI.Request, what: str) -> None:
        self._wait_until(req.Test, what)

    def _allgather_bytes(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's copy of ``tensor`` stacked in rank order (shape (P, *shape))."""
        src = tensor.detach().contiguous()
        out = torch.empty((self.size(), *src.shape), dtype=src.dtype)
        req = self._comm.Iallgather([_bytes(src), MPI.BYTE], [_bytes(out), MPI.BYTE])
        self._wait(req, "allgather")
        return out

    def _quiesce(self) -> None:
        """Complete this group's earlier asynchronous collectives (``barrier`` first)."""
        for work in list(self._pending):
            if work.collective and work._error is None:  # a failed one was given up
                work.wait()

    # -- reductions and the rest (synchronous) -----------------------------------------------

    def allreduce(self, tensors, opts):
        self._enter()
        for t in tensors:
            t.detach().copy_(_reduce(self._allgather_bytes(t), opts.reduceOp, self))
        return DoneWork(list(tensors), self)

    def allreduce_coalesced(self, tensors, opts):
        return self.allreduce(tensors, opts)

    def reduce(self, tensors, opts):
        self._enter()
        for t in tensors:
            result = _reduce(self._allgather_bytes(t), opts.reduceOp, self)
            if self.rank() == opts.rootRank:
                t.detach().copy_(result)
        return DoneWork(list(tensors), self)

    def allgather(self, output_tensors, input_tensors, opts):
        self._enter()
        for outs, t in zip(output_tensors, input_tensors, strict=True):
            if len(outs) != self.size():
                raise ValueError(f"all_gather needs {self.size()} output tensors")
            stacked = self._allgather_bytes(t)
            for out, piece in zip(outs, stacked, strict=True):
                out.detach().copy_(piece)
        return DoneWork([o for outs in output_tensors for o in outs], self)

    def _allgather_base(self, output, input, opts):
        self._enter()
        if output.numel() != input.numel() * self.size():
            raise ValueError(
                f"all_gather_into_tensor: output has {output.numel()} elements, needs "
                f"{input.numel() * self.size()}"
            )
        output.detach().copy_(self._allgather_bytes(input).view(output.shape))
        return DoneWork([output], self)

    # ``dist.all_gather_into_tensor`` and ``dist.reduce_scatter_tensor`` call these names;
    # torch's C++ methods behind them look for a per-device backend, which a Python
    # process group does not have ("No backend type associated with device type cpu").
    def all_gather_single(self, output, input, opts):
        return self._allgather_base(output, input, opts)

    def reduce_scatter_single(self, output, input, opts):
        return self._reduce_scatter_base(output, input, opts)

    def gather(self, output_tensors, input_tensors, opts):
        self._enter()
        stacked = self._allgather_bytes(input_tensors[0])
        if self.rank() == opts.rootRank:
            for out, piece in zip(output_tensors[0], stacked, strict=True):
                out.detach().copy_(piece)
        return DoneWork(list(input_tensors), self)

    def scatter(self, output_tensors, input_tensors, opts):
        self._enter()
        out = output_tensors[0]
        root = opts.rootRank
        if self.rank() == root:
            send = torch.stack([t.detach().contiguous() for t in input_tensors[0]])
        else:
            send = torch.empty((self.size(), *out.shape), dtype=out.dtype)
        self._broadcast_in_place(send, root)
        out.detach().copy_(send[self.rank()])
        return DoneWork([out], self)

    def reduce_scatter(self, output_tensors, input_tensors, opts):
        self._enter()
        for out, ins in zip(output_tensors, input_tensors, strict=True):
            mine = torch.stack([t.detach().contiguous() for t in ins])
            reduced = _reduce(self._allgather_bytes(mine), opts.reduceOp, self)
            out.detach().copy_(reduced[self.rank()])
        return DoneWork(list(output_tensors), self)

    def _reduce_scatter_base(self, output, input, opts):
        self._enter()
        reduced = _reduce(self._allgather_bytes(input), opts.reduceOp, self)
        output.detach().copy_(reduced.view(self.size(), *output.shape)[self.rank()])
        return DoneWork([output], self)

    def broadcast(self, tensors, opts):
        self._enter()
        for t in tensors:
            self._broadcast_in_place(t, opts.rootRank)
        return DoneWork(list(tensors), self)

    def _broadcast_in_place(self, t: torch.Tensor, root: int) -> None:
        t = t.detach()
        buf = t if t.is_contiguous() else t.contiguous()
        self._wait(self._comm.Ibcast([_bytes(buf), MPI.BYTE], root=root), "broadcast")
        if buf is not t:
            t.copy_(buf)

    def barrier(self, opts):
        """Like gloo's: the group's earlier asynchronous collectives complete first."""
        self._enter()
        self._quiesce()
        self._wait(self._comm.Ibarrier(), "barrier")
        return DoneWork(pg=self)

    # send and recv return at once (``dist.isend``/``dist.irecv`` must not block: ranks that
    # all isend first would deadlock on large messages); ``dist.send``/``recv`` wait.

    def send(self, tensors, dst, tag):
        self._enter()
        buf = tensors[0].detach().contiguous()
        req = self._comm.Isend([_bytes(buf), MPI.BYTE], dst, tag)
        return self._track(RequestWork(self, req, "send", list(tensors), keep=(buf,)))

    def recv(self, tensors, src, tag):
        self._enter()
        t = tensors[0]
        buf = t.detach()
        if not buf.is_contiguous():
            buf = torch.empty_like(buf, memory_format=torch.contiguous_format)
        req = self._comm.Irecv([_bytes(buf), MPI.BYTE], src, tag)
        copy = not t.is_contiguous()
        work = RequestWork(
            self,
            req,
            "recv",
            list(tensors),
            keep=(buf,),
            copy_to=t if copy else None,
            copy_from=buf if copy else None,
            is_recv=True,
        )
        return self._track(work)

    def recv_anysource(self, tensors, tag):
        """``dist.recv(t)`` without ``src``: the Work's ``_source_rank()`` names the sender."""
        return self.recv(tensors, MPI.ANY_SOURCE, tag)


# -- helpers -----------------------------------------------------------------------------


def _bytes(t: torch.Tensor):
    return t.reshape(-1).view(torch.uint8).numpy()


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors share memory (torch storages never partly overlap).

    Contiguous tensors (the common case, on every call) are compared by their byte ranges,
    which costs a fraction of looking up both storages.
    """
    na, nb = a.numel(), b.numel()
    if na == 0 or nb == 0:
        return False
    if a.is_contiguous() and b.is_contiguous():
        pa, pb = a.data_ptr(), b.data_ptr()
        return pa < pb + nb * b.element_size() and pb < pa + na * a.element_size()
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _row_splits(t: torch.Tensor, split_sizes, p: int, what: str) -> list[int]:
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


def a2a_element_counts(
    output: torch.Tensor, input: torch.Tensor, output_split_sizes, input_split_sizes, p: int
) -> tuple[list[int], list[int]]:
    """Per-peer element counts of ``all_to_all_single``, as gloo computes them.

    Split sizes count rows of the first dimension of each tensor; a row has as many
    elements as that tensor's trailing dimensions hold, so input and output may have
    different shapes (an input of shape (2P, 2) into an output of shape (4P,)). Without
    split sizes both tensors must hold the same number of elements (gloo's rule).
    """
    if output.dtype != input.dtype:
        raise TypeError(f"all_to_all_single: output is {output.dtype}, input is {input.dtype}")
    if not output.shape or not input.shape:
        raise ValueError("all_to_all_single needs tensors with at least one dimension")
    if not output_split_sizes and not input_split_sizes and output.numel() != input.numel():
        raise ValueError(
            f"all_to_all_single: output has {output.numel()} elements, input has "
            f"{input.numel()} (an equal split needs the same number of elements)"
        )
    in_shape, out_shape = input.shape, output.shape
    if not output_split_sizes and not input_split_sizes and len(in_shape) == len(out_shape) == 1:
        rows = in_shape[0]  # the common call: 1-D, equal split (numel checked above)
        if rows % p == 0:
            even = [rows // p] * p
            return even, list(even)
    send_rows = _row_splits(input, input_split_sizes, p, "input")
    recv_rows = _row_splits(output, output_split_sizes, p, "output")
    in_row, out_row = _trailing(input), _trailing(output)
    if in_row == 1 and out_row == 1:
        return send_rows, recv_rows
    return [r * in_row for r in send_rows], [r * out_row for r in recv_rows]


def _trailing(t: torch.Tensor) -> int:
    n = 1
    for s in t.shape[1:]:
        n *= s
    return n


def _reduce(stacked: torch.Tensor, op, pg: MPIProcessGroup) -> torch.Tensor:
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
    raise ValueError(f"the {pg.getBackendName()!r} backend does not support reduce op {op}")


def group_timeout(timeout: timedelta | None) -> float | None:
    if timeout is None:
        return None
    seconds = timeout.total_seconds()
    return seconds if seconds > 0 else None


def group_comm(dist_opts, backend: str) -> MPI.Comm:
    """The MPI communicator of a new group: its ranks, in torch's group-rank order.

    The first group made in a process (any backend of this package) fixes a copy of
    ``COMM_WORLD`` ordered by torch's global rank; every group is a new communicator over
    that one (collective over the group's members only).
    """
    global _world_comm
    rank, size = dist_opts.group_rank, dist_opts.group_size
    ranks = list(dist_opts.global_ranks_in_group)
    world = MPI.COMM_WORLD
    global_rank = ranks[rank] if ranks else rank
    if _world_comm is None or _world_comm == MPI.COMM_NULL:
        if not ranks and size != world.Get_size():
            raise RuntimeError(
                f"the {backend!r} backend runs over MPI: the group has {size} ranks but MPI "
                f"has {world.Get_size()}; start the program with `mpiexec -n {size} ...`"
            )
        _world_comm = world.Split(0, global_rank)
    if ranks and ranks != list(range(_world_comm.Get_size())):
        group = _world_comm.Get_group().Incl(ranks)
        comm = _world_comm.Create_group(group, tag=7)
        group.Free()
    else:
        comm = _world_comm.Dup()
    if comm.Get_rank() != rank or comm.Get_size() != size:
        raise RuntimeError(
            f"torch rank {rank}/{size} does not match MPI rank {comm.Get_rank()}/"
            f"{comm.Get_size()} for the {backend!r} group"
        )
    return comm


def register_backend(name: str, create) -> None:
    """Register a Python backend for CPU tensors (idempotent).

    The MPI rendezvous goes in first, so that ``init_process_group(name)`` under mpiexec
    needs no MASTER_ADDR; a name torch already knows is left alone.
    """
    from . import rendezvous

    rendezvous.install()
    if name not in dist.Backend.backend_list:
        dist.Backend.register_backend(name, create, extended_api=True, devices=["cpu"])


def check_alltoall_lists(output_tensors, input_tensors, p: int) -> None:
    """``all_to_all``'s argument rules, as gloo applies them: P tensors each, one dtype."""
    if len(output_tensors) != p or len(input_tensors) != p:
        raise ValueError(f"all_to_all needs {p} input and {p} output tensors")
    dtype = input_tensors[0].dtype
    for t in (*input_tensors, *output_tensors):
        if t.dtype != dtype:
            raise TypeError(f"all_to_all: mixed dtypes {dtype} and {t.dtype}")
