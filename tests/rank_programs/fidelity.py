"""Side by side with gloo: what gloo accepts, "bls"/"mpisync" (argv[1]) accept (3 ranks).

See tests/test_torch_backend.py.
"""

import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from common import raises, report
from mpi4py import MPI

from bls_dlrm.comm import BLSOptions

# Side by side with gloo: what gloo accepts, the backend accepts, with the same bits.
BACKEND = sys.argv[1]
dist.init_process_group("gloo")
rank, P = dist.get_rank(), dist.get_world_size()
opts = BLSOptions(lag_bound=2) if BACKEND == "bls" else None
pg = dist.new_group(backend=BACKEND, pg_options=opts)
GROUPS = (pg, dist.group.WORLD)  # ours, gloo


def same(fn):
    ours, ref = fn(pg), fn(dist.group.WORLD)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b), (fn, a, b)


# -- results in place into tensors that require grad (gloo writes into them) --------------
def allreduce(g):
    t = (torch.arange(4.0) + rank).requires_grad_()
    dist.all_reduce(t, group=g)
    return [t.detach()]


def reduce(g):
    t = (torch.arange(4.0) + rank).requires_grad_()
    dist.reduce(t, dst=1, group=g)
    return [t.detach()] if rank == 1 else []  # gloo leaves scratch values elsewhere


def a2a_noncontiguous():
    # gloo accepts it too but writes the view's elements as if it were contiguous (measured:
    # the pieces land in out.view(-1)[:2P]); the result is checked against its definition
    out = torch.zeros(2 * P, 2, requires_grad=True)
    inp = torch.arange(2.0 * P) + 10 * rank
    dist.all_to_all_single(out[:, 0], inp, group=pg)  # a non-contiguous view of a leaf
    exp = torch.tensor([2.0 * rank + k + 10 * s for s in range(P) for k in range(2)])
    assert torch.equal(out.detach()[:, 0], exp) and not out.detach()[:, 1].any(), out


a2a_noncontiguous()


def a2a_leaf(g):
    out = torch.zeros(2 * P, requires_grad=True)
    work = dist.all_to_all_single(out, torch.arange(2.0 * P) + 10 * rank, group=g, async_op=True)
    work.wait()
    return [out.detach()]


def gather_bcast(g):
    outs = [torch.zeros(3) for _ in range(P)]  # (gloo refuses outputs that require grad)
    dist.all_gather(outs, torch.ones(3) * rank, group=g)
    b = torch.zeros(4, requires_grad=True)  # (gloo mishandles non-contiguous views)
    if rank == 0:
        b.detach().add_(7)
    dist.broadcast(b, src=0, group=g)
    return [o.detach() for o in outs] + [b.detach()]


def recv_grad(g):
    t = torch.zeros(5, requires_grad=True)
    if rank == 0:
        for s in range(1, P):
            dist.recv(t, src=s, group=g)
    else:
        dist.send(torch.arange(5.0) * rank, dst=0, group=g)
    return [t.detach()]


for fn in (allreduce, reduce, a2a_leaf, gather_bcast, recv_grad):
    same(fn)


# -- recv without src: the source rank comes back, as with gloo -------------------------
def anysource(g):
    got = []
    if rank == 0:
        for _ in range(P - 1):
            t = torch.zeros(3)
            src = dist.recv(t, group=g)
            assert torch.equal(t, torch.full((3,), float(src))), (src, t)
            got.append(src)
        assert sorted(got) == list(range(1, P)), got
    else:
        dist.send(torch.full((3,), float(rank)), dst=0, group=g)
    return []


same(anysource)


# -- barrier waits for the group's earlier asynchronous all-to-alls (gloo's does) -----------
if rank == 0:
    time.sleep(0.3)  # the others enter the barrier before rank 0's data exists
# (1 MiB pieces: MPI's rendezvous protocol needs several rounds of progress on both sides,
# more than the one poll that any call makes)
n = 2**18
out = torch.empty(P, n)
work = dist.all_to_all_single(out, torch.ones(P, n) * rank, group=pg, async_op=True)
bw = pg.barrier(dist.BarrierOptions())  # what dist.barrier calls, before its wait polls
done = work.exchange.done and work.exchange.sent if BACKEND == "bls" else work.done
assert done, "barrier did not complete the earlier all_to_all"
bw.wait()
assert torch.equal(out, torch.arange(float(P)).repeat_interleave(n).view(P, n))

# -- Work.wait(timeout): raises DistBackendError after it; then the Work has failed ----------
# (gloo, measured: raises after the timeout; is_completed() true, is_success() false,
# exception() the error)
MPI.COMM_WORLD.Barrier()
if rank == 0:
    t = torch.zeros(3)
    work = dist.irecv(t, src=1, tag=99, group=pg)  # nobody sends it
    t0 = time.monotonic()
    err = raises(dist.DistBackendError, work.wait, timedelta(seconds=0.3))
    took = time.monotonic() - t0
    assert 0.29 <= took < 5, took
    assert isinstance(err, TimeoutError) and "recv" in str(err), err
    assert work.is_completed() and not work.is_success() and work.exception() is err
    assert raises(dist.DistBackendError, work.wait) is err
    fut = work.get_future()
    assert raises(dist.DistBackendError, fut.wait) is err
MPI.COMM_WORLD.Barrier()

# an all_to_all_single that a peer has not posted: the same through the Work
slow = P - 1
out = torch.empty(P, 2)
if rank != slow:
    work = dist.all_to_all_single(out, torch.ones(P, 2) * rank, group=pg, async_op=True)
    t0 = time.monotonic()
    err = raises(dist.DistBackendError, work.wait, timedelta(seconds=0.3))
    took = time.monotonic() - t0
    assert 0.29 <= took < 5, took
    assert isinstance(err, TimeoutError), type(err).__mro__
    if BACKEND == "bls":
        assert err.peers == [slow] and err.iteration == work.exchange.iteration, err
        assert str(slow) in str(err)
    assert work.is_completed() and not work.is_success() and work.exception() is err
MPI.COMM_WORLD.Barrier()
if rank == slow:  # posts late: the others' exchange (still posted) pairs up with it
    # (async_op as on the other ranks: MPI never matches Ialltoallv with Alltoallv)
    dist.all_to_all_single(out, torch.ones(P, 2) * rank, group=pg, async_op=True).wait()
    assert torch.equal(out, torch.arange(float(P)).repeat_interleave(2).view(P, 2))
elif BACKEND == "mpisync":
    work._wait_abandoned()  # the given-up Ialltoallv still needs this rank's progress
MPI.COMM_WORLD.Barrier()
dist.destroy_process_group()
report("fidelity")
