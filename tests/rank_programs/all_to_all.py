"""all_to_all on "bls" or "mpisync" (argv[1]) like torch's own suite, and against gloo.

4 ranks, launched with BLS_LAG_BOUND=3; see tests/test_torch_backend.py.
"""

import sys
import time

import torch
import torch.distributed as dist
from common import DTYPES, count, engine, piece, raises, report
from mpi4py import MPI

BACKEND = sys.argv[1]  # "bls" or "mpisync": the same cases for both
dist.init_process_group(BACKEND)  # nothing else: mpiexec is the rendezvous
rank, P = dist.get_rank(), dist.get_world_size()
world = engine()  # the default group's state
assert dist.get_backend() == BACKEND and MPI.COMM_WORLD.Get_size() == P
assert rank == MPI.COMM_WORLD.Get_rank()
# BLS_LAG_BOUND=3 was given in the launcher's environment
if BACKEND == "bls":
    assert world.lag_bound == 3

gloo = dist.new_group(backend="gloo")
SUB = [1, 3]
sub = dist.new_group(SUB)  # a bls subgroup: lag bound from the environment too
sub_gloo = dist.new_group(SUB, backend="gloo")
GROUPS = [(None, gloo, list(range(P)))]
if rank in SUB:
    assert sub.size() == 2 and (BACKEND != "bls" or engine(sub).lag_bound == 3)
    GROUPS.append((sub, sub_gloo, SUB))


def torch_suite(group, granks, dtype):
    # the cases of torch's distributed tests (_test_all_to_all*_helper)
    size = len(granks)
    in_t = torch.ones([size, size], dtype=dtype) * rank
    out = torch.ones([size, size], dtype=dtype) * -1
    exp = torch.cat([torch.ones([1, size], dtype=dtype) * i for i in granks])
    dist.all_to_all_single(out, in_t, group=group)
    assert torch.equal(out, exp), ("equal split", dtype, out)

    in_splits = [i + 1 for i in granks]
    out_splits = [rank + 1 for _ in granks]
    in_t = torch.ones([sum(in_splits), size], dtype=dtype) * rank
    out = torch.ones([(rank + 1) * size, size], dtype=dtype)
    exp = torch.cat([torch.ones([rank + 1, size], dtype=dtype) * i for i in granks])
    dist.all_to_all_single(out, in_t, out_splits, in_splits, group=group)
    assert torch.equal(out, exp), ("unequal split", dtype, out)

    in_ts = [torch.ones([i + 1, size], dtype=dtype) * rank for i in granks]
    outs = [torch.ones([rank + 1, size], dtype=dtype) * -1 for _ in granks]
    exp = [torch.ones([rank + 1, size], dtype=dtype) * i for i in granks]
    dist.all_to_all(outs, in_ts, group=group)
    for o, x in zip(outs, exp, strict=True):
        assert torch.equal(o, x), ("list form", dtype, outs)


def as_result(t):
    # torch hands complex tensors to backends as real views
    return torch.view_as_real(t) if t.is_complex() else t


def random_pieces(group, ref_group, granks, dtype, salt, mode):
    in_splits = [count(rank, d, salt) for d in granks]
    out_splits = [count(s, rank, salt) for s in granks]
    inp = torch.cat(
        [piece(rank, d, n, dtype, salt) for d, n in zip(granks, in_splits, strict=True)]
    )
    exp = torch.cat(
        [piece(s, rank, n, dtype, salt) for s, n in zip(granks, out_splits, strict=True)]
    )
    if mode == "noncontiguous":
        out = torch.zeros(sum(out_splits), 6, dtype=dtype)[:, ::2]
        assert not out.is_contiguous() or out.numel() == 0
    else:
        out = torch.full((sum(out_splits), 3), -1).to(dtype)
    if mode == "sync" or mode == "noncontiguous":
        assert dist.all_to_all_single(out, inp, out_splits, in_splits, group=group) is None
    else:
        work = dist.all_to_all_single(out, inp, out_splits, in_splits, group=group, async_op=True)
        if mode == "wait":
            assert work.wait() is True and work.is_completed()
        elif mode == "future":
            res = work.get_future().wait()
            assert work.is_completed() and torch.equal(res[0], as_result(exp)), res
        elif mode == "poll":
            deadline = time.monotonic() + 60
            while not work.is_completed():  # completes without wait once the data is here
                assert time.monotonic() < deadline, "is_completed never became true"
                time.sleep(1e-4)
            work.wait()
    assert torch.equal(out, exp), (mode, dtype, out, exp)
    ref = torch.empty_like(out)
    dist.all_to_all_single(ref, inp, out_splits, in_splits, group=ref_group)
    assert torch.equal(out, ref), ("differs from gloo", mode, dtype)


def aliased(group, granks, dtype, salt):
    # all_to_all_single(x, x): the input is read before the output overwrites it
    n = 2
    x = torch.cat([piece(rank, d, n, dtype, salt) for d in granks])
    exp = torch.cat([piece(s, rank, n, dtype, salt) for s in granks])
    work = dist.all_to_all_single(x, x, group=group, async_op=True)
    work.wait()
    assert torch.equal(x, exp), ("aliased", dtype)


salt = 0
for group, ref_group, granks in GROUPS:
    for dtype in DTYPES:
        torch_suite(group, granks, dtype)
        for mode in ("sync", "wait", "future", "poll", "noncontiguous"):
            salt += 1
            random_pieces(group, ref_group, granks, dtype, salt, mode)
        salt += 1
        aliased(group, granks, dtype, salt)
    # a rank that sends and receives nothing at all
    empty = torch.empty(0, 3)
    dist.all_to_all_single(empty, empty, [0] * len(granks), [0] * len(granks), group=group)

# -- different shapes, equal elements per piece: gloo's rule (split sizes count rows) -------
for dtype in DTYPES:
    inp = torch.cat([piece(rank, d, 2, dtype, 700) for d in range(P)])  # (2P, 3)
    exp = torch.cat([piece(s, rank, 2, dtype, 700) for s in range(P)])
    out = torch.empty(6 * P, dtype=dtype)
    dist.all_to_all_single(out, inp)  # (2P, 3) into (6P,)
    ref = torch.empty(6 * P, dtype=dtype)
    dist.all_to_all_single(ref, inp, group=gloo)
    assert torch.equal(out, exp.reshape(-1)) and torch.equal(out, ref), dtype
    out = torch.empty(P, 6, dtype=dtype)  # rows of 6 elements: 1 row per peer
    work = dist.all_to_all_single(out, inp, [1] * P, [2] * P, async_op=True)
    work.wait()
    assert torch.equal(out.reshape(-1), exp.reshape(-1)), dtype
    raises(
        ValueError, dist.all_to_all_single, torch.empty(5 * P, dtype=dtype), inp, match="elements"
    )

if BACKEND != "bls":
    dist.destroy_process_group()
    report("all_to_all")
    sys.exit(0)

# -- deferred waits: L + 1 = 4 exchanges in flight while the last rank has posted none ------
eng = world
slow = P - 1
x = [torch.cat([piece(rank, d, 1, torch.float32, 900 + k) for d in range(P)]) for k in range(5)]
outs = [torch.empty(P, 3) for _ in range(5)]
works = []
if rank != slow:
    works = [dist.all_to_all_single(outs[k], x[k], async_op=True) for k in range(4)]
    assert eng.in_flight == 4 and not any(w.is_completed() for w in works)
MPI.COMM_WORLD.Barrier()  # only now does the slow rank post anything, and late: the
if rank == slow:  # others block on their oldest exchange meanwhile (their lag is >= 1)
    time.sleep(0.3)
    works = [dist.all_to_all_single(outs[k], x[k], async_op=True) for k in range(4)]
# completes the oldest (and, driving progress, whatever else has arrived)
works.append(dist.all_to_all_single(outs[4], x[4], async_op=True))
assert eng.in_flight <= 4 and works[0].is_completed()
for k in reversed(range(5)):  # a wait also completes the older ones, in order
    works[k].wait()
    exp = torch.cat([piece(s, rank, 1, torch.float32, 900 + k) for s in range(P)])
    assert torch.equal(outs[k], exp), k
assert eng.in_flight == 0 and all(w.is_completed() for w in works)
assert not getattr(eng, "history", [])  # none kept: a serving process posts millions of exchanges
lags = [w.exchange.stats.lag for w in works]
if rank != slow:
    assert max(lags) >= 1, lags

dist.destroy_process_group()
report("all_to_all", lags=lags)
