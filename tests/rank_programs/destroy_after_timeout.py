"""destroy_process_group after an exchange a peer never posts returns within one timeout.

2 ranks on "bls" with a 1.5 s group timeout: rank 0 posts an exchange, rank 1 never does.
See tests/test_native_errors.py.
"""

import time
from datetime import timedelta

import torch
import torch.distributed as dist
from common import raises, report
from mpi4py import MPI

TIMEOUT_S = 1.5
dist.init_process_group("bls", timeout=timedelta(seconds=TIMEOUT_S))
rank = dist.get_rank()
took = 0.0
if rank == 0:
    dist.all_to_all_single(torch.empty(2), torch.ones(2), async_op=True)  # never paired
    t0 = time.monotonic()
    raises(dist.DistBackendError, dist.destroy_process_group, match="did not complete")
    took = time.monotonic() - t0
    assert TIMEOUT_S * 0.9 <= took < TIMEOUT_S * 1.5, took
else:
    dist.destroy_process_group()
MPI.COMM_WORLD.Barrier()
report("destroy_after_timeout", took=took)
