"""Groups of every backend in one process, as the DLRM loop makes them (3 ranks).

See tests/test_torch_mpi.py.
"""

import time

import torch
import torch.distributed as dist
from common import count, engine, piece, raises, report
from mpi4py import MPI

from bls_dlrm.comm import (
    MPI_BACKEND_NAME,
    BLSClosedError,
    BLSOptions,
)
from bls_dlrm.comm.native import module as native_module
from bls_dlrm.comm.torch_common import _PARKED

RequestWork = native_module().RequestWork

dist.init_process_group("gloo")  # no MASTER_ADDR: the MPI rendezvous
rank, P = dist.get_rank(), dist.get_world_size()
assert MPI_BACKEND_NAME == "mpisync"
b1 = dist.new_group(backend="bls", pg_options=BLSOptions(lag_bound=1))
b3 = dist.new_group(backend="bls", pg_options=BLSOptions(lag_bound=3, transport="ialltoallv"))
m = dist.new_group(backend="mpisync")
g = dist.new_group(backend="gloo")
sub = dist.new_group([0, 2], backend="mpisync")
b0 = dist.new_group(backend="bls", pg_options=BLSOptions(timeout_s=0.5))
assert engine(b1).lag_bound == 1 and engine(b3).lag_bound == 3
assert engine(b3).transport == "ialltoallv"
assert type(engine(m)).__name__ == "MPISyncBackend" and engine(m).name() == "mpisync"
assert dist.get_backend(m) == "mpisync" and dist.get_backend(b1) == "bls"


def inputs(k, dtype):
    in_splits = [count(rank, d, k) for d in range(P)]
    out_splits = [count(s, rank, k) for s in range(P)]
    x = torch.cat([piece(rank, d, n, dtype, k) for d, n in enumerate(in_splits)])
    exp = torch.cat([piece(s, rank, n, dtype, k) for s, n in enumerate(out_splits)])
    return x, exp, in_splits, out_splits


# interleaved asynchronous all-to-alls on every group; each result against gloo's
pending = []
for k in range(8):
    for grp in (b1, b3, m, g):
        for dtype in (torch.float32, torch.bfloat16):
            x, exp, ins, outs = inputs(100 * k + 1, dtype)
            out = torch.empty(sum(outs), 3, dtype=dtype)
            w = dist.all_to_all_single(out, x, outs, ins, group=grp, async_op=True)
            pending.append((w, out, exp, x, ins, outs))
    if len(pending) > 16:  # keep several Works of every group in flight
        for w, out, exp, x, ins, outs in pending[:8]:
            w.wait()
            ref = torch.empty_like(out)
            dist.all_to_all_single(ref, x, outs, ins)  # the gloo default group
            assert torch.equal(out, exp) and torch.equal(out, ref)
        del pending[:8]
for w, out, exp, *_ in pending:
    w.wait()
    assert w.is_completed() and w.is_success() and torch.equal(out, exp)

# mpisync: blocking (DoneWork) and nonblocking (completes on wait) forms
x, exp, ins, outs = inputs(7, torch.int64)
out = torch.empty(sum(outs), 3, dtype=torch.int64)
assert dist.all_to_all_single(out, x, outs, ins, group=m) is None and torch.equal(out, exp)
work = dist.all_to_all_single(out.zero_(), x, outs, ins, group=m, async_op=True)
assert isinstance(work, RequestWork)
assert work.wait() and work.is_completed() and torch.equal(out, exp)
t = torch.ones(3) * rank
dist.all_reduce(t, group=m)
assert torch.equal(t, torch.ones(3) * sum(range(P)))
if rank in (0, 2):
    t = torch.ones(2) * rank
    dist.all_reduce(t, group=sub)
    assert torch.equal(t, torch.ones(2) * 2)
    out = torch.empty(4)
    dist.all_to_all_single(out, torch.arange(4.0) + 10 * rank, group=sub)
    assert torch.equal(out, torch.tensor([0.0, 1.0, 20.0, 21.0]) + rank)

# shutdown closes the group even when closing fails: an exchange the last rank never posts
slow = P - 1
if rank != slow:
    out = torch.empty(P, 3)
    w = dist.all_to_all_single(out, torch.ones(P, 3), group=b0, async_op=True)
    t0 = time.monotonic()
    raises(dist.DistBackendError, b0.shutdown, match="did not complete within 0.5 s")
    assert time.monotonic() - t0 < 2.0
else:
    b0.shutdown()
assert engine(b0).closed
b0.shutdown()  # idempotent
raises(BLSClosedError, b0.alltoall_base, torch.empty(P), torch.ones(P), [], [])

# native abort: nothing is waited for, later calls are refused
if rank != slow:
    w = dist.all_to_all_single(torch.empty(P, 3), torch.ones(P, 3), group=b1, async_op=True)
b1.abort()
assert engine(b1).closed
raises(BLSClosedError, b1.alltoall_base, torch.empty(P), torch.ones(P), [], [])

# abort: nothing is waited for; the exchange's buffers stay referenced
slow = P - 1
eng = engine(b3)
if rank != slow:
    out = torch.empty(P, 3)
    w = dist.all_to_all_single(out, torch.ones(P, 3), group=b3, async_op=True)
    assert not w.exchange.done
b3.abort()
assert eng.closed and any(obj is eng for obj in _PARKED)
raises(BLSClosedError, b3.alltoall_base, out, torch.ones(P, 3), [], [], None)
b3.abort()  # idempotent
MPI.COMM_WORLD.Barrier()
dist.destroy_process_group()  # every group; the ones shut down or aborted are skipped
report("multi_backend")
