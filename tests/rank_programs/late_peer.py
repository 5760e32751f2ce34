"""A late peer on "bls" (2 ranks): a blocked rank sleeps, Work.wait(timeout) keeps its
timeout, and the lag bound holds exactly at exchange i - L - 1. See
tests/test_native_errors.py.
"""

import time
from datetime import timedelta

import torch
import torch.distributed as dist
from common import engine, raises, report
from mpi4py import MPI

from bls_dlrm.comm import BLSOptions, BLSTimeoutError
from bls_dlrm.comm.native import module as native_module

dist.init_process_group("bls")
rank, P = dist.get_rank(), dist.get_world_size()
world = MPI.COMM_WORLD
LATE_S = 1.0
result = {}

# -- the back-off itself sleeps: a 1 s wait costs little CPU ---------------------------------
t0, c0 = time.monotonic(), time.thread_time()
native_module().wait_politely(LATE_S)
result["backoff_wall"], result["backoff_cpu"] = time.monotonic() - t0, time.thread_time() - c0
assert result["backoff_cpu"] < 0.25 * LATE_S, result

# -- a rank blocked on a peer that is 1 s late sleeps ----------------------------------------
world.Barrier()
out = torch.empty(2 * P)
if rank == 1:
    time.sleep(LATE_S)
    dist.all_to_all_single(out, torch.ones(2 * P))
else:
    t0, c0 = time.monotonic(), time.thread_time()
    dist.all_to_all_single(out, torch.ones(2 * P))
    wall, cpu = time.monotonic() - t0, time.thread_time() - c0
    result["blocked_wall"], result["blocked_cpu"] = wall, cpu
    assert wall >= 0.8 * LATE_S, wall
    assert cpu < 0.25 * wall, (cpu, wall)

# -- Work.wait(0.3 s) on a peer 2 s late raises within about a second, clearly ---------------
world.Barrier()
if rank == 1:
    time.sleep(2.0)
    dist.all_to_all_single(out, torch.ones(2 * P))
else:
    work = dist.all_to_all_single(out, torch.ones(2 * P), async_op=True)
    t0 = time.monotonic()
    err = raises(dist.DistBackendError, work.wait, timedelta(seconds=0.3))
    took = time.monotonic() - t0
    result["wait_timeout_took"] = took
    assert 0.29 <= took < 1.0, took
    assert isinstance(err, BLSTimeoutError) and isinstance(err, TimeoutError)
    assert err.peers == [1] and err.iteration == work.exchange.iteration, err
    text = str(err)
    assert f"exchange {err.iteration}" in text and "peer(s) [1]" in text and "0.3 s" in text
    assert work.is_completed() and not work.is_success() and work.exception() is err
dist.barrier()  # drains the group first: the exchange rank 0 gave up on still pairs up
assert engine().in_flight == 0

# -- the slow-peer boundary: rank 1 has posted exactly k exchanges -------------------------
L, k = 2, 3
g = dist.new_group(pg_options=BLSOptions(lag_bound=L))
works = []


def post():
    w = dist.all_to_all_single(torch.empty(P), torch.ones(P) * rank, group=g, async_op=True)
    works.append(w)


if rank == 1:
    for _ in range(k):
        post()
    world.Barrier()
    time.sleep(LATE_S)
    for _ in range(L + 2):
        post()
else:
    world.Barrier()
    t0 = time.monotonic()
    for _ in range(k + L + 1):  # exchanges 0 .. k + L: i - L - 1 <= k - 1 is there
        post()
    free = time.monotonic() - t0
    t0 = time.monotonic()
    post()  # exchange k + L + 1 first completes exchange k, which rank 1 has not posted
    blocked = time.monotonic() - t0
    result["boundary_free"], result["boundary_blocked"] = free, blocked
    assert free < 0.5 * LATE_S, (free, blocked)
    assert blocked >= 0.5 * LATE_S, (free, blocked)
    assert engine(g).in_flight <= L + 1
for w in works:
    w.wait()
assert len(works) == k + L + 2
dist.destroy_process_group()
report("late_peer", **result)
