"""The BLS alltoallv engine on real ranks: API, bad input, timeouts, a peer that dies.

Every launch costs a second or two, so each test packs many cases into one snippet that
asserts on every rank and prints a marker; the test checks that every rank got there.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.mpi

# Shared by the snippets: what rank ``src`` sends to rank ``dst`` in exchange ``it`` is a
# pure function of the three, so every rank knows what to expect from every peer.
PIECES = """
import sys
import time

import numpy as np
import torch
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, P = comm.Get_rank(), comm.Get_size()


def piece(it, src, dst, n, width=None, dtype=np.int64):
    base = it * 1_000_000 + src * 10_000 + dst * 100
    rows = base + np.arange(n, dtype=np.int64)
    if width is None:
        return rows.astype(dtype)
    return (rows[:, None] * 10 + np.arange(width)).astype(dtype)


def send_of(it, counts, width=None, dtype=np.int64):
    # counts[src][dst]: rows that src sends to dst in this exchange
    return np.concatenate([piece(it, rank, d, counts[rank][d], width, dtype) for d in range(P)])


def expected(it, counts, width=None, dtype=np.int64):
    return np.concatenate([piece(it, s, rank, counts[s][rank], width, dtype) for s in range(P)])


def raises(exc_type, fn, *args, match=None, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        assert match is None or match in str(exc), (match, str(exc))
        return exc
    raise AssertionError(f"{fn} did not raise {exc_type.__name__}")
"""


API = (
    PIECES
    + """
from bls_dlrm.comm import (
    BLSAlltoallv, BLSClosedError, BLSCountError, BLSError, SyncMPI, make_collective,
)

T = 60.0  # engine timeout: a bug shows up as BLSTimeoutError, not as a hang

# -- lag bound and other constructor arguments: ValueError before any communication ------
for bad in (-1, -8, 1.5, True, "2", None):
    raises(ValueError, BLSAlltoallv, comm, bad, match="lag bound")
raises(ValueError, BLSAlltoallv, comm, 0, timeout=0)
raises(ValueError, BLSAlltoallv, comm, 0, transport="carrier-pigeon")
raises(ValueError, make_collective, "bls", -1)
raises(ValueError, make_collective, "mpi", 1, match="synchronous")
raises(ValueError, make_collective, "nccl")

# -- equal split, L = 2: L + 1 exchanges in flight, in-order completion ----------------------
e = BLSAlltoallv(comm, 2, timeout=T)
assert (e.lag_bound, e.posted, e.completed, e.in_flight) == (2, 0, 0, 0)
eq = [[3] * P for _ in range(P)]
handles = [e.post(send_of(it, eq)) for it in range(3)]
assert [h.iteration for h in handles] == [0, 1, 2]
assert (e.posted, e.completed, e.in_flight) == (3, 0, 3)  # nothing completed yet
handles.append(e.post(send_of(3, eq)))  # keeps the bound: completes exchange 0 first
assert (e.posted, e.completed, e.in_flight) == (4, 1, 3)
assert handles[0].done and handles[0].test() and not handles[1].done
assert [x.iteration for x in e.trim()] == [1]  # down to L in flight
assert e.in_flight == 2
assert np.array_equal(handles[3].wait(), expected(3, eq))  # completes 2 and 3, in order
assert (e.completed, e.in_flight) == (4, 0)
for it, h in enumerate(handles):
    assert h.done and h.recv.dtype == np.int64
    assert np.array_equal(h.recv, expected(it, eq)), (it, h.recv)
    assert h.stats.iteration == it and h.stats.t_post <= h.stats.t_posted <= h.stats.t_complete
raises(BLSError, e.complete_oldest, match="no exchange in flight")
raises(BLSError, e.complete_until, 4, match="not been posted")
assert e.drain() == [] and e.poll() == []

# poll never blocks and completes in order once the data is there
hs = [e.post(send_of(10 + k, eq)) for k in range(3)]
comm.Barrier()  # every rank has posted all three
deadline = time.monotonic() + T
done = []
while len(done) < 3:
    done += e.poll()
    assert time.monotonic() < deadline, "poll never saw data that had been sent"
    time.sleep(1e-4)
assert [x.iteration for x in done] == [4, 5, 6] and e.in_flight == 0
for k, h in enumerate(hs):
    assert np.array_equal(h.recv, expected(10 + k, eq))
assert [s.iteration for s in e.history] == list(range(7))

# -- alltoallv: zero-length pieces, 2-D torch rows, a caller-provided larger recv -----------
rng = np.random.default_rng(5)
for it in range(20, 26):
    counts = rng.integers(0, 4, size=(P, P)) * (rng.random((P, P)) > 0.3)
    if it == 21:
        counts[:, 0] = 0  # rank 0 receives nothing at all
    counts = counts.tolist()
    sc = counts[rank]
    rc = [counts[s][rank] for s in range(P)]
    for kind in ("numpy", "torch", "torch-recv"):
        s = send_of(it, counts, width=3, dtype=np.float32)
        want = expected(it, counts, width=3, dtype=np.float32)
        if kind == "numpy":
            got = e.post(s, sc, rc).wait()
        else:
            recv = None
            if kind == "torch-recv":
                recv = torch.full((sum(rc) + 2, 3), -7.0)
            got = e.post(torch.from_numpy(s), sc, rc, recv).wait()
            assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
            if recv is not None:
                assert got is recv and torch.all(got[sum(rc):] == -7.0)
            got = got[: sum(rc)].numpy()
        assert got.shape == want.shape and np.array_equal(got, want), (it, kind, got, want)

# bfloat16 moves as bytes
x = torch.arange(4 * P, dtype=torch.float32).to(torch.bfloat16) + rank
got = e.post(x).wait()
want = torch.cat([(torch.arange(4 * P).to(torch.bfloat16) + s)[4 * rank : 4 * rank + 4]
                  for s in range(P)])
assert got.dtype == torch.bfloat16 and torch.equal(got, want)

# -- bad input: raised on the calling rank alone, before anything is sent --------------------
if rank == 0:
    before = e.posted
    s64 = np.arange(2 * P, dtype=np.int64)
    twos = [2] * P
    raises(ValueError, e.post, s64, twos, twos, np.empty(2 * P, np.float32), match="float32")
    raises(ValueError, e.post, s64.reshape(P, 2), [1] * P, [1] * P, np.empty((P, 3), np.int64))
    raises(ValueError, e.post, s64, twos, twos, np.empty(2 * P - 1, np.int64), match="rows")
    raises(ValueError, e.post, np.arange(P + 1), match="divisible")
    raises(ValueError, e.post, s64, twos, match="both")
    raises(ValueError, e.post, s64, [3] * P, twos, match="add up")
    raises(ValueError, e.post, s64, twos[:-1], twos, match="one count per rank")
    raises(ValueError, e.post, s64, [-1, *twos[1:]], twos, match="non-negative")
    raises(ValueError, e.post, s64, [1.5, *twos[1:]], twos, match="non-negative")
    raises(BLSCountError, e.post, s64, twos, [1, *twos[1:]], match="itself")
    raises(ValueError, e.post, np.arange(4 * P).reshape(2 * P, 2)[:, 0], match="contiguous")
    raises(ValueError, e.post, torch.arange(4 * P).reshape(2 * P, 2)[:, 0], match="contiguous")
    raises(ValueError, e.post, np.array(3), match="dimension")
    raises(TypeError, e.post, list(range(P)))
    assert e.posted == before and e.in_flight == 0
comm.Barrier()
# the next exchange still pairs up on every rank: nothing of the bad calls went out
assert np.array_equal(e.post(send_of(30, eq)).wait(), expected(30, eq))

# -- the sync baseline behind the same interface gives the same bits --------------------------
m = make_collective("mpi")
assert isinstance(m, SyncMPI)
counts = [[(s + 2 * d) % 3 for d in range(P)] for s in range(P)]
sc, rc = counts[rank], [counts[s][rank] for s in range(P)]
a = m.post(send_of(31, counts), sc, rc).wait()
b = e.post(send_of(31, counts), sc, rc).wait()
assert np.array_equal(a, b) and np.array_equal(a, expected(31, counts))
m.close()

# -- counts that disagree between ranks: BLSCountError on the receiving rank -----------------
# rank 0 expects one row more (a short message) or one row fewer (a truncation) from rank 1
for extra in (1, -1):
    f = BLSAlltoallv(comm, 1, timeout=T)
    rc = [2] * P
    if rank == 0:
        rc[1] += extra
    sc = [2] * P
    s = np.concatenate([piece(40, rank, d, 2) for d in range(P)])
    h = f.post(s, sc, rc)
    if rank == 0:
        exc = raises(BLSCountError, h.wait, match="counts disagree")
        assert "exchange 0" in str(exc)
    else:
        h.wait()
    comm.Barrier()

# A truncated piece of exchange 1 that is already here while rank 0 still waits for
# exchange 0 (rank 2 is late): looking at later receives must not trip over it.
f = BLSAlltoallv(comm, 1, timeout=T)
duo = comm.Split(0 if rank < 2 else MPI.UNDEFINED)
if rank == 2:
    time.sleep(0.5)
h0 = f.post(send_of(41, eq), [3] * P, [3] * P)
h1 = f.post(send_of(42, eq), [3] * P, [3, 2, *[3] * (P - 2)] if rank == 0 else [3] * P)
if rank < 2:
    duo.Barrier()  # rank 1 has sent both
if rank == 0:
    raises(BLSCountError, f.complete_until, 1, match="exchange 1")
    assert h0.done and np.array_equal(h0.recv, expected(41, eq))
else:
    h1.wait()
comm.Barrier()

# -- after close: BLSClosedError, never a hang -----------------------------------------------
h = e.post(send_of(50, eq))
e.close()  # drains what is in flight
assert e.closed and h.done and np.array_equal(h.recv, expected(50, eq))
e.close()  # idempotent
for call in (lambda: e.post(send_of(51, eq)), e.poll, e.trim, e.drain, e.complete_oldest,
             lambda: e.complete_until(0)):
    raises(BLSClosedError, call, match="closed")
with BLSAlltoallv(comm, 1, timeout=T) as g:
    g.post(send_of(0, eq))
assert g.closed

print(f"ENGINE-API-OK {rank}", flush=True)
"""
)


TIMEOUT = """
from bls_dlrm.comm import BLSTimeoutError

# Rank 2 posts exchange 0 and then stops; ranks 0 and 1 (L = 1) may post 0, 1, 2 but must
# complete 1 before posting 3: that times out after 1 s, naming exchange 1, peer 2 and how
# far ahead they are (posted up to 2, peer 2 only up to 0: 2 exchanges).
e = BLSAlltoallv(comm, 1, timeout=1.0)
pair = comm.Split(0 if rank != 2 else MPI.UNDEFINED)
eq = [[2] * P for _ in range(P)]
hs = [e.post(send_of(0, eq))]
if rank != 2:
    hs += [e.post(send_of(it, eq)) for it in (1, 2)]
    pair.Barrier()  # so rank 2 is the only one missing, however slow the machine
    exc = raises(BLSTimeoutError, e.post, send_of(3, eq))
    assert isinstance(exc, TimeoutError)
    assert (exc.iteration, exc.peers, exc.lag, exc.timeout) == (1, [2], 2, 1.0), vars(exc)
    msg = str(exc)
    assert "exchange 1" in msg and "peer(s) [2]" in msg and "2 exchange(s) ahead" in msg, msg
    assert e.posted == 3 and e.in_flight == 2  # nothing was lost
comm.Barrier()  # rank 2 comes back only once both others have timed out
# The timed-out exchange stays in flight: once rank 2 catches up, everything completes.
if rank == 2:
    hs += [e.post(send_of(it, eq)) for it in (1, 2)]
hs.append(e.post(send_of(3, eq)))
e.drain()
for it, h in enumerate(hs):
    assert h.iteration == it and np.array_equal(h.recv, expected(it, eq)), it
e.close()
print(f"ENGINE-TIMEOUT-OK {rank}", flush=True)
"""


def test_engine_api_bad_input_close_and_timeout(mpirun):
    # one launch for both parts: each launch costs seconds of imports
    result = mpirun.script(3, API + TIMEOUT)
    assert result.stdout.count("ENGINE-API-OK") == 3
    assert result.stdout.count("ENGINE-TIMEOUT-OK") == 3


KILLED = (
    PIECES
    + """
import os
from bls_dlrm.comm import BLSAlltoallv

e = BLSAlltoallv(comm, 2, timeout=30.0)
eq = [[64] * P for _ in range(P)]
for it in range(400):
    if rank == 1 and it == 25:
        print("rank 1 kills itself", flush=True)
        os.kill(os.getpid(), 9)
    e.post(send_of(it, eq))
    e.trim()
    time.sleep(1e-3)
e.drain()
print(f"SURVIVED {rank}", flush=True)
"""
)


def test_a_killed_rank_ends_the_run_with_an_error(mpirun, tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    t0 = time.monotonic()
    result = mpirun.argv(3, ["python", str(script)], timeout=60, expect_ok=False)
    assert isinstance(result, subprocess.CompletedProcess)  # not a timeout (that fails)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "rank 1 kills itself" in result.stdout
    assert "SURVIVED" not in result.stdout
    print(f"killed run ended after {time.monotonic() - t0:.1f} s", file=sys.stderr)
