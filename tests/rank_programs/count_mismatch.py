"""Counts of two ranks disagree: the Work fails, its sends are accounted, the group goes on.

2 ranks on "bls". Rank 1 sends rank 0 two rows where rank 0 expects three (a short
message), then four where it expects three (MPI truncates). Rank 0's Work fails with a
BLSCountError that is a DistBackendError; the list form fails the same way; afterwards
nothing is left in flight or sending and the next exchange pairs up. See
tests/test_native_errors.py.
"""

import torch
import torch.distributed as dist
from common import engine, raises, report

from bls_dlrm.comm import BLSClosedError, BLSCountError

dist.init_process_group("bls")
rank, P = dist.get_rank(), dist.get_world_size()
assert P == 2
state = engine()


def exchange(to_peer: int, from_peer: int, async_op: bool):
    """One all_to_all_single: 1 row to itself, ``to_peer`` rows out, ``from_peer`` expected."""
    peer = 1 - rank
    in_splits = [0, 0]
    in_splits[rank], in_splits[peer] = 1, to_peer
    out_splits = [0, 0]
    out_splits[rank], out_splits[peer] = 1, from_peer
    inp = torch.full((1 + to_peer, 3), float(rank))
    out = torch.full((1 + from_peer, 3), -1.0)
    work = dist.all_to_all_single(out, inp, out_splits, in_splits, async_op=async_op)
    return work, out


for sent_by_1 in (2, 4):  # short, then truncated
    if rank == 0:
        work, out = exchange(1, 3, async_op=True)
        err = raises(dist.DistBackendError, work.wait, match="counts disagree")
        assert isinstance(err, BLSCountError), type(err).__mro__
        assert work.is_completed() and not work.is_success() and work.exception() is err
        assert raises(dist.DistBackendError, work.wait) is err
        fut = work.get_future()
        assert raises(dist.DistBackendError, fut.wait) is err
    else:
        work, out = exchange(sent_by_1, 1, async_op=True)
        assert work.wait() and work.is_success()
        assert torch.equal(out, torch.tensor([[0.0] * 3, [1.0] * 3]))
    # blocking form: the same error from the call itself
    if rank == 0:
        raises(dist.DistBackendError, exchange, 1, 3, False, match="counts disagree")
    else:
        exchange(sent_by_1, 1, False)

    # the list form: a DistBackendError too
    if rank == 0:
        outs, ins = [torch.empty(1, 3), torch.empty(3, 3)], [torch.zeros(1, 3), torch.zeros(1, 3)]
        err = raises(dist.DistBackendError, dist.all_to_all, outs, ins, match="counts disagree")
        assert isinstance(err, BLSCountError)
    else:
        outs = [torch.empty(1, 3), torch.empty(1, 3)]
        dist.all_to_all(outs, [torch.ones(sent_by_1, 3), torch.ones(1, 3)])

    # the failed exchanges are complete, their sends accounted; the group goes on
    work, out = exchange(2, 2, async_op=True)
    work.wait()
    exp = torch.full((3, 3), float(1 - rank))
    exp[rank if rank == 0 else 2] = float(rank)
    assert torch.equal(out[0 if rank == 0 else 2], torch.full((3,), float(rank))), out
    assert state.in_flight == 0 and state.sending == 0 and state.posted == state.completed

posted = state.posted
dist.destroy_process_group()
# a destroyed group refuses calls with a DistBackendError (list form included)
err = raises(
    dist.DistBackendError,
    state.alltoall,
    [torch.empty(1)] * 2,
    [torch.ones(1)] * 2,
    dist.AllToAllOptions(),
)
assert isinstance(err, BLSClosedError)
report("count_mismatch", posted=posted)
