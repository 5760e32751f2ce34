"""The other collectives of "bls", subgroups, bad input and destroy (4 ranks).

See tests/test_torch_backend.py.
"""

import time

import torch
import torch.distributed as dist
from common import engine, piece, raises, report
from mpi4py import MPI

from bls_dlrm.comm import BLSClosedError, BLSOptions

dist.init_process_group("bls")
rank, P = dist.get_rank(), dist.get_world_size()
world = engine()  # the default group's state
assert world.lag_bound == 0  # neither an option nor BLS_LAG_BOUND
gloo = dist.new_group(backend="gloo")


def value(q, dtype, n=5):
    g = torch.Generator().manual_seed(1000 + q)
    if dtype == torch.int64:
        return torch.randint(-1000, 1000, (n,), generator=g)
    return torch.randn(n, generator=g).to(dtype)


# -- all_reduce: rank-order reductions give the same bits everywhere --------------------
for dtype in (torch.int64, torch.float32, torch.bfloat16):
    vals = [value(q, dtype) for q in range(P)]
    total = vals[0].clone()
    for v in vals[1:]:
        total += v
    t = vals[rank].clone()
    dist.all_reduce(t)
    assert torch.equal(t, total), (dtype, t, total)
    exact = torch.stack([v.double() for v in vals]).sum(0)
    assert torch.allclose(t.double(), exact, rtol=2e-2, atol=5e-2)
    t = vals[rank].clone()
    work = dist.all_reduce(t, op=dist.ReduceOp.MAX, async_op=True)
    work.wait()
    assert work.is_completed() and torch.equal(t, torch.stack(vals).amax(0))
    if dtype == torch.int64:
        g = vals[rank].clone()
        dist.all_reduce(g, group=gloo)
        assert torch.equal(g, total)
    else:
        t = vals[rank].clone()
        dist.all_reduce(t, op=dist.ReduceOp.AVG)
        assert t.dtype == dtype and torch.equal(t, total / P), (dtype, t, total / P)
        assert torch.allclose(t.double(), exact / P, rtol=2e-2, atol=2e-2)

# -- all_gather, all_gather_into_tensor, broadcast, reduce_scatter_tensor, barrier ----------
for dtype in (torch.int64, torch.bfloat16, torch.complex64):
    mine = value(rank, torch.float32).to(dtype)
    everyone = [value(q, torch.float32).to(dtype) for q in range(P)]
    outs = [torch.empty_like(mine) for _ in range(P)]
    dist.all_gather(outs, mine)
    assert all(torch.equal(o, e) for o, e in zip(outs, everyone, strict=True)), dtype
    flat = torch.empty(P * mine.numel(), dtype=dtype)
    dist.all_gather_into_tensor(flat, mine)
    assert torch.equal(flat, torch.cat(everyone)), dtype
    t = mine.clone()
    dist.broadcast(t, src=2)
    assert torch.equal(t, everyone[2])
    if dtype != torch.complex64:
        chunks = torch.stack([value(q, torch.float32, 2 * P).to(dtype) for q in range(P)])
        total = chunks[0].clone()
        for c in chunks[1:]:
            total += c
        mine = torch.empty(2, dtype=dtype)
        dist.reduce_scatter_tensor(mine, chunks[rank])
        assert torch.equal(mine, total[2 * rank : 2 * rank + 2]), dtype
# nobody leaves a barrier before everybody has entered it (one clock for the whole host)
time.sleep(0.02 * rank)
entered = time.monotonic()
dist.barrier()
left = time.monotonic()
times = MPI.COMM_WORLD.allgather((entered, left))
assert min(t[1] for t in times) >= max(t[0] for t in times), times
dist.barrier(async_op=True).wait()

# -- send / recv around a ring, big enough for MPI's rendezvous protocol -------------------
n = 50_000
src, dst = (rank - 1) % P, (rank + 1) % P
mine = torch.arange(n, dtype=torch.float32) + 1e6 * rank
got = torch.zeros(n, 2)[:, 0]  # a non-contiguous receive buffer
if rank % 2 == 0:
    dist.send(mine, dst)
    dist.recv(got, src)
else:
    dist.recv(got, src)
    dist.send(mine, dst)
assert torch.equal(got, torch.arange(n, dtype=torch.float32) + 1e6 * src)
# isend / irecv return at once: every rank may isend first
got = torch.zeros(n, 2)[:, 0]
reqs = [dist.isend(mine, dst), dist.irecv(got, src)]
for r in reqs:
    r.wait()
assert torch.equal(got, torch.arange(n, dtype=torch.float32) + 1e6 * src)
got = torch.zeros(n)
ops = [dist.P2POp(dist.isend, mine * 2, dst), dist.P2POp(dist.irecv, got, src)]
for r in dist.batch_isend_irecv(ops):
    r.wait()
assert torch.equal(got, (torch.arange(n, dtype=torch.float32) + 1e6 * src) * 2)

# -- new_group: a subgroup of 2 of 4 ranks with its own lag bound ---------------------------
SUB = [1, 3]
sub = dist.new_group(SUB, pg_options=BLSOptions(lag_bound=2))
other = dist.new_group([0, 2], pg_options=BLSOptions(lag_bound=1, transport="ialltoallv"))
mine_group, members, L = (sub, SUB, 2) if rank in SUB else (other, [0, 2], 1)
assert engine(mine_group).lag_bound == L
assert engine(mine_group).transport == ("p2p" if L == 2 else "ialltoallv")
assert dist.get_world_size(mine_group) == 2 and world.lag_bound == 0
x = [torch.cat([piece(rank, d, 2, torch.int64, 50 + k) for d in members]) for k in range(L + 2)]
outs = [torch.empty(4, 3, dtype=torch.int64) for _ in range(L + 2)]
works = [
    dist.all_to_all_single(outs[k], x[k], group=mine_group, async_op=True) for k in range(L + 1)
]
assert engine(mine_group).in_flight <= L + 1  # none waited for: the subgroup's own bound
t = torch.ones(3) * rank
dist.all_reduce(t)  # the world group works while the subgroup has exchanges in flight
assert torch.equal(t, torch.ones(3) * sum(range(P)))
works.append(dist.all_to_all_single(outs[-1], x[-1], group=mine_group, async_op=True))
assert engine(mine_group).in_flight <= L + 1 and works[0].is_completed()
works[-1].wait()
for k in range(L + 2):
    exp = torch.cat([piece(s, rank, 2, torch.int64, 50 + k) for s in members])
    assert torch.equal(outs[k], exp), k
t = torch.ones(2) * rank
dist.broadcast(t, src=members[1], group=mine_group)  # src is a global rank
assert torch.equal(t, torch.ones(2) * members[1])

# -- bad input: an error on the calling rank, before anything is sent ------------------------
eng = world
if rank == 0:
    before = eng.posted
    i8, f8 = torch.zeros(8, dtype=torch.int64), torch.zeros(8)
    raises(ValueError, dist.all_to_all_single, f8, i8, match="dtype")  # torch's own check
    raises(ValueError, dist.all_to_all_single, i8, i8, [2] * P, [3] * P, match="add up")
    raises(ValueError, dist.all_to_all_single, i8, i8, [2] * P, [2] * (P - 1), match="split sizes")
    raises(ValueError, dist.all_to_all_single, i8, i8, [2] * P, [-1, 3, 3, 3], match="negative")
    raises(ValueError, dist.all_to_all_single, torch.zeros(5), torch.zeros(5), match="divisible")
    raises(
        ValueError, dist.all_to_all_single, torch.zeros(8, 2), torch.zeros(8, 3), match="elements"
    )
    raises(ValueError, dist.all_to_all, [i8] * P, [i8] * (P - 1))
    raises((TypeError, ValueError), dist.all_to_all, [i8] * P, [f8] + [i8] * (P - 1))
    assert eng.posted == before and eng.in_flight == 0
MPI.COMM_WORLD.Barrier()
x = torch.cat([piece(rank, d, 1, torch.float32, 77) for d in range(P)])
out = torch.empty(P, 3)
dist.all_to_all_single(out, x)  # still pairs up: nothing of the bad calls went out
assert torch.equal(out, torch.cat([piece(s, rank, 1, torch.float32, 77) for s in range(P)]))

# bad lag bounds for a new group: ValueError on its members
for bad in (-1, 1.5):
    if rank in SUB:
        raises(
            ValueError, dist.new_group, SUB, pg_options=BLSOptions(lag_bound=bad), match="lag bound"
        )
    else:
        dist.new_group(SUB, pg_options=BLSOptions(lag_bound=bad))

# -- destroy: what is in flight completes, later calls raise (never hang) ------------------
x = torch.cat([piece(rank, d, 1, torch.float32, 78) for d in range(P)])
out = torch.empty(P, 3)
last = dist.all_to_all_single(out, x, async_op=True)
eng = world
dist.destroy_process_group()
assert eng.closed and last.is_completed() and last.wait()
assert torch.equal(out, torch.cat([piece(s, rank, 1, torch.float32, 78) for s in range(P)]))
raises(ValueError, dist.all_to_all_single, out, x, match="not been initialized")
raises(ValueError, dist.all_reduce, out, match="not been initialized")
raises(BLSClosedError, world.alltoall_base, out, x, [], [], dist.AllToAllOptions())
raises(BLSClosedError, world.allreduce, [out], dist.AllreduceOptions())
raises(BLSClosedError, world.barrier, dist.BarrierOptions())
raises(BLSClosedError, lambda: world.lag_bound)
raises(dist.DistBackendError, world.alltoall, [out[:1]] * P, [x[:3]] * P, dist.AllToAllOptions())
if rank in SUB:
    raises(BLSClosedError, sub.alltoall_base, out, x, [], [], dist.AllToAllOptions())

# a second init after destroy works again
dist.init_process_group("bls")
out = torch.empty(P, 3)
dist.all_to_all_single(out, x)
assert torch.equal(out, torch.cat([piece(s, rank, 1, torch.float32, 78) for s in range(P)]))
dist.destroy_process_group()
report("collectives")
