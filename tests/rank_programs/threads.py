"""MPI's thread level: calls from a second thread are refused below MPI_THREAD_SERIALIZED and
work (the backend locks) at MPI_THREAD_MULTIPLE.

argv[1]: mpi4py's thread level ("funneled" or "multiple"); 2 ranks. See
tests/test_native_errors.py.
"""

import sys
import threading

import mpi4py

mpi4py.rc.thread_level = sys.argv[1]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from common import engine, report  # noqa: E402
from mpi4py import MPI  # noqa: E402

from bls_dlrm.comm.native import ThreadLevelError  # noqa: E402

LEVEL = sys.argv[1]
dist.init_process_group("bls")
rank, P = dist.get_rank(), dist.get_world_size()
other = dist.new_group(backend="mpisync")
errors: list[BaseException] = []


def exchanges(n: int) -> None:
    try:
        for k in range(n):
            out = torch.empty(2 * P)
            dist.all_to_all_single(out, torch.arange(2.0 * P) + 100 * rank + k)
            exp = torch.tensor([100.0 * s + 2 * rank + j + k for s in range(P) for j in range(2)])
            assert torch.equal(out, exp), (k, out)
    except BaseException as exc:
        errors.append(exc)


if LEVEL == "funneled":
    assert MPI.Query_thread() == MPI.THREAD_FUNNELED
    t = threading.Thread(target=exchanges, args=(1,))
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], ThreadLevelError), errors
    assert isinstance(errors[0], dist.DistBackendError)
    assert "second thread" in str(errors[0]) and "MPI_THREAD_FUNNELED" in str(errors[0])
    assert engine().posted == 0  # refused before anything was sent
    exchanges(3)  # the main thread still may
    assert not errors[1:], errors
else:
    assert MPI.Query_thread() == MPI.THREAD_MULTIPLE
    # one thread exchanges on the default group while the main thread reduces on another
    t = threading.Thread(target=exchanges, args=(50,))
    t.start()
    for k in range(50):
        x = torch.ones(4) * (rank + k)
        dist.all_reduce(x, group=other)
        assert torch.equal(x, torch.ones(4) * (sum(range(P)) + P * k))
    t.join()
    assert not errors, errors
    assert engine().posted == 50
dist.destroy_process_group()
report("threads")
