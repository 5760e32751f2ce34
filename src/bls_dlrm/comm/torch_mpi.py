"""The torch.distributed backend "mpisync": MPI's own synchronous ``Alltoallv`` for torch.

New groups get the native backend (:mod:`bls_dlrm.comm.native`) with the same behaviour;
the Python process group below serves ``BLS_NATIVE=0``.

Pip torch ships no MPI backend, so this one gives the synchronous MPI baseline the same
torch API as "gloo" and "bls". ``import bls_dlrm.comm`` registers it; then
``dist.init_process_group("mpisync")`` (or ``dist.new_group(backend="mpisync")``) under
``mpiexec`` needs no other argument, as for "bls".

``all_to_all_single`` is mpi4py's ``Alltoallv`` on the group's communicator:

- ``async_op=False``: the blocking ``Alltoallv`` (MPI's own wait, as torch's MPI backend);
- ``async_op=True``: a nonblocking ``Ialltoallv``; the returned Work completes on ``wait``
  (which tests the request, yields the core, then sleeps with a short back-off, never a
  spinning ``Waitall``, and honours ``wait(timeout)``) or once ``is_completed`` finds it
  done.

Every rank must pass the same ``async_op`` to the same call: MPI never matches a
nonblocking collective with a blocking one (the blocking one on a rank would wait forever
for its peers' nonblocking one).

Every call into the group (posting any collective, ``wait``/``is_completed`` of any of its
Works) first tests the group's nonblocking operations in flight, which drives MPI's
progress for them. ``barrier`` completes the group's asynchronous all-to-alls first.
Input and output may have different shapes, as with gloo (split sizes count rows of each
tensor). The other collectives are those of "bls"
(:class:`~bls_dlrm.comm.torch_common.MPIProcessGroup`). A blocking ``Alltoallv`` cannot
time out (MPI has no deadline); only the nonblocking form honours timeouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from itertools import accumulate

import torch
from mpi4py import MPI

from . import native
from .torch_common import (
    DoneWork,
    MPIProcessGroup,
    RequestWork,
    a2a_element_counts,
    check_alltoall_lists,
    group_comm,
    group_timeout,
    overlaps,
    register_backend,
)

MPI_BACKEND_NAME = "mpisync"


@dataclass
class MPISyncOptions:
    """Options of an "mpisync" process group (``pg_options=``).

    timeout_s: seconds before a nonblocking operation's wait raises (None: the group's).
    """

    timeout_s: float | None = None


def _view(t: torch.Tensor, nbytes: int):
    if nbytes == 0:
        return bytearray()
    return MPI.buffer.fromaddress(t.data_ptr(), nbytes)


def _displacements(counts: list[int]) -> list[int]:
    return [0, *accumulate(counts[:-1])]


class ProcessGroupMPISync(MPIProcessGroup):
    """A torch ProcessGroup whose all-to-all is MPI's ``Alltoallv``/``Ialltoallv``."""

    def __init__(self, comm: MPI.Comm, options: MPISyncOptions, timeout: timedelta):
        seconds = options.timeout_s if options.timeout_s is not None else group_timeout(timeout)
        super().__init__(comm, seconds)
        self.options = options
        self._plans: dict[tuple[int, ...], tuple] = {}  # count pattern -> byte layout

    def getBackendName(self) -> str:
        return MPI_BACKEND_NAME

    def alltoall_base(self, output, input, output_split_sizes, input_split_sizes, opts):
        self._enter()
        scounts, rcounts = a2a_element_counts(
            output, input, output_split_sizes, input_split_sizes, self._size
        )
        me = self._rank
        if scounts[me] != rcounts[me]:
            raise ValueError(
                f"all_to_all_single: rank {me} sends {scounts[me]} elements to itself but "
                f"expects {rcounts[me]}"
            )
        send = input.detach() if input.requires_grad else input
        if overlaps(output, input) or not send.is_contiguous():
            send = send.contiguous().clone()
        recv = output.detach() if output.requires_grad else output
        copy = not recv.is_contiguous()
        if copy:
            recv = torch.empty_like(recv, memory_format=torch.contiguous_format)
        return self._alltoallv(
            send,
            scounts,
            recv,
            rcounts,
            [output],
            output if copy else None,
            bool(getattr(opts, "asyncOp", False)),
        )

    def _alltoallv(self, send, scounts, recv, rcounts, result, copy_to, async_op):
        item = send.element_size()
        key = (item, *scounts, *rcounts)
        plan = self._plans.get(key)
        if plan is None:  # byte counts and displacements, once per count pattern
            sb = [c * item for c in scounts]
            rb = [c * item for c in rcounts]
            sdispl, rdispl = _displacements(sb), _displacements(rb)
            plan = (sb, sdispl, sdispl[-1] + sb[-1], rb, rdispl, rdispl[-1] + rb[-1])
            if len(self._plans) >= 64:
                self._plans.clear()
            self._plans[key] = plan
        sb, sdispl, stotal, rb, rdispl, rtotal = plan
        smsg = [_view(send, stotal), (sb, sdispl), MPI.BYTE]
        rmsg = [_view(recv, rtotal), (rb, rdispl), MPI.BYTE]
        if not async_op:
            self._comm.Alltoallv(smsg, rmsg)
            if copy_to is not None:
                copy_to.detach().copy_(recv.view(copy_to.shape))
            return DoneWork(result, self)
        req = self._comm.Ialltoallv(smsg, rmsg)
        work = RequestWork(
            self,
            req,
            "all_to_all",
            result,
            keep=(send, recv),
            copy_to=copy_to,
            copy_from=None if copy_to is None else recv.view(copy_to.shape),
            collective=True,
        )
        return self._track(work)

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts):
        # ``dist.all_to_all_single`` calls this name: the caller gets our Work itself.
        return self.alltoall_base(output, input, output_split_sizes, input_split_sizes, opts)

    def alltoall(self, output_tensors, input_tensors, opts):
        self._enter()
        p = self.size()
        check_alltoall_lists(output_tensors, input_tensors, p)
        send = torch.cat([t.detach().reshape(-1) for t in input_tensors])
        scounts = [t.numel() for t in input_tensors]
        rcounts = [t.numel() for t in output_tensors]
        recv = torch.empty(sum(rcounts), dtype=send.dtype)
        self._alltoallv(send, scounts, recv, rcounts, list(output_tensors), None, False)
        for out, piece in zip(output_tensors, recv.split(rcounts), strict=True):
            out.detach().copy_(piece.view(out.shape))
        return DoneWork(list(output_tensors), self)


def _create(dist_opts, backend_options) -> ProcessGroupMPISync:
    if backend_options is not None and not isinstance(backend_options, MPISyncOptions):
        raise TypeError(
            f"pg_options for 'mpisync' must be MPISyncOptions, got {type(backend_options)}"
        )
    options = backend_options if backend_options is not None else MPISyncOptions()
    comm = group_comm(dist_opts, MPI_BACKEND_NAME)
    if native.enabled():
        seconds = options.timeout_s if options.timeout_s is not None else None
        if seconds is None:
            seconds = group_timeout(dist_opts.timeout)
        try:
            return native.mpisync_backend(comm, seconds)  # works on a duplicate
        finally:
            comm.Free()
    return ProcessGroupMPISync(comm, options, dist_opts.timeout)


def register() -> None:
    """Register the backend "mpisync" (idempotent; done by ``import bls_dlrm.comm``)."""
    register_backend(MPI_BACKEND_NAME, _create)


__all__ = ["MPI_BACKEND_NAME", "MPISyncOptions", "ProcessGroupMPISync", "register"]
