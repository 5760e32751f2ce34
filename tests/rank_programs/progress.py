"""Every call into a "bls" group drives progress on its exchanges (3 ranks).

See tests/test_torch_backend.py.
"""

import torch
import torch.distributed as dist
from common import piece, report
from mpi4py import MPI

from bls_dlrm.comm import BLSOptions

# Every call into a "bls" group drives progress on its exchanges in flight: code that only
# posts and waits gets the masking without ever polling.
dist.init_process_group("bls", pg_options=BLSOptions(lag_bound=2))
rank, P = dist.get_rank(), dist.get_world_size()


def post(k):
    x = torch.cat([piece(rank, d, 1, torch.float32, 300 + k) for d in range(P)])
    out = torch.empty(P, 3)
    return dist.all_to_all_single(out, x, async_op=True), out


def arrived():
    # everybody has posted (small messages leave at once); this rank has not polled since
    MPI.COMM_WORLD.Barrier()
    MPI.COMM_WORLD.Barrier()


w0, out0 = post(0)
arrived()
assert not w0.exchange.done  # nothing has looked at it yet
w1, out1 = post(1)  # within the lag bound: nothing has to complete exchange 0 ...
assert w0.exchange.done, "posting did not drive progress"  # ... but the post polled
arrived()
assert not w1.exchange.done
assert w0.is_completed()  # a call on another (finished) Work ...
assert w1.exchange.done, "is_completed did not drive progress"  # ... completes this one
w2, out2 = post(2)
arrived()
t = torch.ones(2)
dist.all_reduce(t)  # any collective of the group
assert w2.exchange.done, "all_reduce did not drive progress"
w3, out3 = post(3)
arrived()
w2.wait()  # a wait on an older Work completes the newer ones that have arrived too
assert w3.exchange.done, "wait did not drive progress"
for k, out in enumerate((out0, out1, out2, out3)):
    exp = torch.cat([piece(s, rank, 1, torch.float32, 300 + k) for s in range(P)])
    assert torch.equal(out, exp), k
for w in (w0, w1, w2, w3):
    assert w.wait() and w.is_completed() and w.is_success() and w.exception() is None
dist.destroy_process_group()
report("progress")
