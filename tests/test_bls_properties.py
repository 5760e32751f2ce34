"""Properties of the BLS alltoallv under random delays, for every lag bound.

One launch per rank count runs every L in {0, 1, 2, 4, 8} under two seeded delay
schedules (random short sleeps on every rank; one straggler) with random per-exchange
counts (zeros included), 1-D and 2-D rows, numpy arrays and torch tensors, and a random,
per-rank mix of the ways to complete exchanges. It checks:

* no deadlock: the engine's timeout turns a stuck exchange into an error, the launcher's
  a stuck launch;
* every received piece is bit for bit what mpi4py's synchronous ``Alltoallv`` delivers
  for the same data;
* the lag bound holds: no rank posts exchange ``i`` before every peer has posted
  ``i - L - 1`` (from the post times the engine records);
* with L > 0 and a straggler the fast ranks really run ahead of it (more than the one
  exchange a synchronous collective allows), so a secretly synchronous engine fails.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.mpi

SNIPPET = """
import sys
import time

import numpy as np
import torch
from mpi4py import MPI

from bls_dlrm.comm import BLSAlltoallv

comm = MPI.COMM_WORLD
rank, P = comm.Get_rank(), comm.Get_size()

SEED = int(sys.argv[1])
N = 24  # exchanges per case: enough for L = 8 to show a lag
LAGS = (0, 1, 2, 4, 8)
# (library, dtype, row width or None for 1-D)
KINDS = [
    ("numpy", np.int64, None),
    ("numpy", np.float32, 3),
    ("torch", torch.float32, 2),
    ("torch", torch.bfloat16, None),
    ("torch", torch.int64, 4),
    ("numpy", np.float64, 1),
]


def raw(buf):
    # the bytes of a numpy array or torch tensor, flat
    if isinstance(buf, torch.Tensor):
        if buf.numel() == 0:  # may have stride 0, which torch will not view as bytes
            return np.empty(0, np.uint8)
        return buf.contiguous().reshape(-1).view(torch.uint8).numpy()
    return np.ascontiguousarray(buf).reshape(-1).view(np.uint8)


def make_send(lib, dtype, width, rows, rng):
    shape = (rows,) if width is None else (rows, width)
    if lib == "numpy":
        if np.issubdtype(dtype, np.integer):
            return rng.integers(-(2**40), 2**40, size=shape).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)
    # from_numpy, as user code may: a rank with nothing to send then holds a tensor of
    # stride 0, which the engine has to accept
    values = torch.from_numpy(rng.standard_normal(shape))
    if dtype == torch.int64:
        values = torch.from_numpy(rng.integers(-(2**40), 2**40, size=shape))
    return values.to(dtype)


def reference(sends, counts):
    # mpi4py's synchronous Alltoallv on the same bytes
    out = []
    for i, send in enumerate(sends):
        sc = counts[i][rank]
        rc = counts[i][:, rank]
        rb = row_bytes_of(send)
        rbytes = np.empty(int(rc.sum()) * rb, dtype=np.uint8)
        comm.Alltoallv(
            [raw(send), (sc * rb).tolist(), MPI.BYTE], [rbytes, (rc * rb).tolist(), MPI.BYTE]
        )
        out.append(rbytes)
    return out


def row_bytes_of(buf):
    itemsize = buf.element_size() if isinstance(buf, torch.Tensor) else buf.itemsize
    return itemsize * (1 if buf.ndim == 1 else int(np.prod(buf.shape[1:])))


def delays_of(schedule, rng):
    if schedule == "random":  # every rank, half the time, 0-3 ms
        return rng.uniform(0, 3e-3, size=(N, P)) * (rng.random((N, P)) < 0.5)
    d = np.zeros((N, P))  # one straggler, 3 ms before every post
    d[:, P - 1] = 3e-3
    return d


def run_case(case, lag, schedule, transport):
    shared = np.random.default_rng([SEED, case])  # identical on every rank
    mine = np.random.default_rng([SEED, case, 1 + rank])  # this rank's own choices
    lib, dtype, width = KINDS[case % len(KINDS)]
    counts = shared.integers(0, 6, size=(N, P, P)) * (shared.random((N, P, P)) < 0.7)
    counts[N // 2] = 0  # an exchange of nothing at all
    delays = delays_of(schedule, shared)
    sends = [make_send(lib, dtype, width, int(counts[i][rank].sum()), mine) for i in range(N)]
    want = reference(sends, counts)
    comm.Barrier()

    e = BLSAlltoallv(comm, lag, timeout=60.0, transport=transport)
    handles = []
    for i in range(N):
        time.sleep(delays[i, rank])
        sc, rc = counts[i][rank].tolist(), counts[i][:, rank].tolist()
        recv = None
        if mine.random() < 0.25:  # a caller-provided buffer with spare rows
            recv = make_send(lib, dtype, width, sum(rc) + 1, mine)
        handles.append(e.post(sends[i], sc, rc, recv))
        how = mine.integers(0, 5)
        if how == 1:
            e.trim()
        elif how == 2:
            e.poll()
        elif how == 3 and e.in_flight:
            handles[int(mine.integers(e.completed, e.posted))].wait()
        elif how == 4 and e.in_flight:
            e.complete_oldest()
        assert e.in_flight <= lag + 1
    e.drain()
    assert (e.posted, e.completed, e.in_flight) == (N, N, 0)
    for i, h in enumerate(handles):
        assert h.done and h.iteration == i
        got = raw(h.recv)[: want[i].nbytes]
        assert np.array_equal(got, want[i]), (case, lag, schedule, i)
    history = e.history
    e.close()
    return history


def check_lag_bound(history, lag, schedule):
    # t_post[r][i] is taken after rank r's lag-bound wait in post (or, when it did not
    # wait, at entry to post, and then i - L - 1 had been completed before); completing
    # an exchange needs every peer's message for it. A peer q reads t_post[q][i] *before*
    # it starts sending exchange i, so: t_post[r][i] >= t_post[q][i - L - 1] for all r, q.
    # (t_posted[q] would not do: q takes it after its last send, and r may receive q's
    # message and move on before that.) time.monotonic is one clock for every process of
    # a host.
    t_post = np.array(comm.allgather([s.t_post for s in history]))  # (P, N)
    lags = comm.allgather(max(s.lag for s in history))
    for i in range(lag + 1, N):
        for r in range(P):
            bad = [q for q in range(P) if t_post[r, i] < t_post[q, i - lag - 1]]
            assert not bad, f"L={lag}: rank {r} posted {i} before {bad} posted {i - lag - 1}"
    assert max(lags) <= lag + 1, (lag, lags)
    # How far ahead of the straggler (rank P - 1) a fast rank was when it posted: the
    # number of exchanges up to i the straggler had not posted yet.
    ahead = max(
        i - int(np.sum(t_post[P - 1] <= t_post[r, i])) + 1
        for r in range(P - 1)
        for i in range(N)
    )
    if lag == 0:
        assert ahead <= 1, ahead
    elif schedule == "straggler":
        # synchronous would allow 1; the engine's own count agrees
        assert ahead > 1 and max(lags) > 1, (lag, ahead, lags)
    return ahead


case = 0
report = []
for lag in LAGS:
    for schedule in ("random", "straggler"):
        history = run_case(case, lag, schedule, "p2p")
        report.append((lag, schedule, check_lag_bound(history, lag, schedule)))
        case += 1
# The other transport moves the same bits (its lag is not checked: a nonblocking
# collective may complete a rank's part without waiting for a peer that sends nothing).
for lag in (0, 2):
    run_case(case, lag, "random", "ialltoallv")
    case += 1
if rank == 0:
    print("ahead of the straggler:", report, flush=True)
print(f"BLS-PROPERTIES-OK {rank}", flush=True)
"""


@pytest.mark.parametrize(("nprocs", "seed"), [(2, 11), (3, 23), (4, 37)])
def test_random_delays_every_lag_bound(mpirun, nprocs, seed):
    result = mpirun.script(nprocs, SNIPPET, str(seed), timeout=240)
    assert result.stdout.count("BLS-PROPERTIES-OK") == nprocs, result.stdout
