"""The BLS engine under conditions that broke earlier versions.

Each snippet targets a defect that a plain run does not show: a second ``Testall`` that
wipes the statuses, data that arrive out of order, send buffers kept past the bound, a
stopped peer that only the launcher would have ended, calls from two threads, unbounded
history, buffers whose memory does not hold their values, the logged lag.
"""

from __future__ import annotations

import time

import pytest
from conftest import ABORT_ON_ERROR
from test_engine import PIECES

pytestmark = pytest.mark.mpi

HARDENING = (
    PIECES
    + """
import threading

from bls_dlrm.comm import BLSAlltoallv, BLSTimeoutError, SyncMPI
from bls_dlrm.comm.engine import DEFAULT_HISTORY, Backoff

T = 60.0

# -- test() until true, then wait()/poll(): no false BLSCountError (3 ranks) ----------------
counts = [[(s + d) % 3 + 1 for d in range(P)] for s in range(P)]
sc, rc = counts[rank], [counts[s][rank] for s in range(P)]
e = BLSAlltoallv(comm, 2, timeout=T)
for it in range(4):
    h = e.post(send_of(it, counts), sc, rc)
    deadline = time.monotonic() + T
    while not h.test():
        assert time.monotonic() < deadline
        time.sleep(1e-4)
    assert h.test()  # a second look after success must not disturb anything
    if it % 2:
        assert [x.iteration for x in e.poll()] == [it]
    got = h.wait()
    assert np.array_equal(got, expected(it, counts)), (it, got)
assert e.drain() == []

# -- backoff by preset name ------------------------------------------------------------------
y = BLSAlltoallv(comm, 0, timeout=T, backoff="yield")
assert isinstance(y.backoff, Backoff) and y.backoff.spin_s == float("inf")
assert BLSAlltoallv(comm, 0, backoff="sleep").backoff.spin_s == 0.0
raises(ValueError, BLSAlltoallv, comm, 0, backoff="nap", match="unknown wait preset")
raises(ValueError, BLSAlltoallv, comm, 0, backoff=3)
if rank == 1:
    time.sleep(0.05)  # the others block in a yielding wait
eq = [[2] * P for _ in range(P)]
assert np.array_equal(y.post(send_of(5, eq)).wait(), expected(5, eq))
y.close()

# -- history: bounded by default, all with True, none with False -----------------------------
assert DEFAULT_HISTORY == 4096 and e._history.maxlen == DEFAULT_HISTORY
for keep, want in ((3, [9, 10, 11]), (True, list(range(12))), (False, []), (0, [])):
    g = BLSAlltoallv(comm, 1, timeout=T, keep_history=keep)
    for it in range(12):
        g.post(send_of(it, eq))
    g.drain()
    assert [s.iteration for s in g.history] == want, (keep, g.history)
    assert [s.iteration for s in g.history[-2:]] == want[-2:]
    g.close()
raises(ValueError, BLSAlltoallv, comm, 0, keep_history=-1)
m = SyncMPI(comm, keep_history=2)
for it in range(5):
    m.post(send_of(it, eq))
assert [s.iteration for s in m.history] == [3, 4] and SyncMPI(comm).history == []
m.close()

# -- buffers whose memory does not hold their values -----------------------------------------
z = torch.complex(torch.arange(2.0 * P) + rank, torch.full((2 * P,), 1.0 + rank))
got = e.post(z.conj()).wait()  # the lazy conjugate bit is resolved, not dropped
want = torch.cat([torch.complex(torch.arange(2.0 * P) + s, torch.full((2 * P,), -1.0 - s))
                  [2 * rank : 2 * rank + 2] for s in range(P)])
assert torch.equal(got, want), (got, want)
before = e.posted
raises(ValueError, e.post, z, None, None, torch.empty(2 * P, dtype=torch.complex64).conj(),
       match="conjugate")
ro = np.empty(2 * P, np.int64)
ro.flags.writeable = False
raises(ValueError, e.post, np.arange(2 * P), None, None, ro, match="receive buffer is read-only")
assert e.posted == before and e.in_flight == 0

# -- the logged lag: a peer known to be k exchanges behind -----------------------------------
sub = comm.Split(0 if rank != 1 else 1)
for k in (1, 2, 3):
    g = BLSAlltoallv(comm, 3, timeout=T)
    hs = [g.post(send_of(0, eq))]
    comm.Barrier()  # every rank has posted exchange 0
    if rank == 1:
        time.sleep(0.3)  # posted 0, not 1: the others post up to k and wait for 1
        hs += [g.post(send_of(it, eq)) for it in range(1, k + 1)]
    else:
        while not hs[0].done:
            g.poll()
        hs += [g.post(send_of(it, eq)) for it in range(1, k + 1)]
        g.complete_until(1)
        assert hs[1].stats.lag == k and hs[1].stats.wait_s > 0.05, (k, hs[1].stats)
        assert hs[0].stats.lag == 0
    g.drain()
    for it, h in enumerate(hs):
        assert np.array_equal(h.recv, expected(it, eq))
    g.close()

# -- two threads: a blocked wait does not hold the engine, another thread may complete -------
g = BLSAlltoallv(comm, 2, timeout=T)
hs = [g.post(send_of(0, eq))]
if rank == 1:
    time.sleep(1.0)
    hs += [g.post(send_of(1, eq))]
else:
    hs += [g.post(send_of(1, eq))]
    errors = []

    def waiter():
        try:
            hs[1].wait()  # blocks until rank 1 posts exchange 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    g.poll()  # not stuck behind the waiting thread
    exc = raises(BLSTimeoutError, hs[1].wait, timeout=0.2)
    took = time.monotonic() - t0
    assert took < 0.8, took  # its own timeout, although the other thread waits too
    assert exc.timeout == 0.2 and exc.peers == [1] and exc.waiting_for == "data", vars(exc)
    th.join(T)
    assert not th.is_alive() and not errors, errors
    assert hs[1].done and np.array_equal(hs[1].recv, expected(1, eq))
g.drain()

# many threads waiting on Works while the main thread posts
N = 120
order = []
handles = []
import queue

work = queue.Queue()
failures = []


def worker():
    while (h := work.get()) is not None:
        try:
            got = h.wait()
            assert np.array_equal(got, expected(100 + h.iteration, eq)), h.iteration
            order.append(h.iteration)
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)


g = BLSAlltoallv(comm, 2, timeout=T)
threads = [threading.Thread(target=worker) for _ in range(3)]
for th in threads:
    th.start()
for it in range(N):
    h = g.post(send_of(100 + it, eq))
    handles.append(h)
    work.put(h)
    if it % 7 == 0:
        g.poll()
for _ in threads:
    work.put(None)
for th in threads:
    th.join(T)
assert not failures, failures
g.drain()
assert (g.posted, g.completed, g.in_flight) == (N, N, 0)
t_done = [h.stats.t_complete for h in handles]
assert t_done == sorted(t_done), "completed out of order"
assert all(h.done and h.sent for h in handles)
g.close()
e.close()
print(f"HARDENING-OK {rank}", flush=True)
"""
)


def test_hardening(mpirun):
    result = mpirun.script(3, HARDENING)
    assert result.stdout.count("HARDENING-OK") == 3, result.stdout


ORDER = (
    PIECES
    + """
from bls_dlrm.comm import BLSAlltoallv

T = 60.0
BIG = 1 << 19  # int64 rows: 4 MiB, far beyond any eager limit

# p2p: MPI keeps a peer's messages in order only within one tag, and exchanges differ in
# tag, so a peer's piece of exchange 1 may overtake its piece of exchange 0. Rank 2 holds
# back its exchange-0 piece for rank 0 (a started-late send) until rank 0 has all of
# exchange 1; rank 0 must still complete 0 before 1.
class HoldBack(MPI.Intracomm):
    held = []

    def Isend(self, buf, dest, tag=0):
        if dest == 0 and tag == 0 and not self.held:
            req = self.Send_init(buf, dest, tag)  # inactive: tests as complete
            self.held.append(req)
            return req
        return super().Isend(buf, dest, tag)


e = BLSAlltoallv(comm, 2, timeout=T, persistent=False)
if rank == 2:
    e.comm = HoldBack(e.comm)
c0 = [[1] * P for _ in range(P)]
c0[2][0] = 5
c1 = [[2] * P for _ in range(P)]
s0 = send_of(0, c0)  # the held-back send reads it: keep it alive
h0 = e.post(s0, c0[rank], [c0[s][rank] for s in range(P)])
h1 = e.post(send_of(1, c1), c1[rank], [c1[s][rank] for s in range(P)])
seen = []
if rank == 0:
    t_end = time.monotonic() + 30
    ahead = 0  # polls that saw all of exchange 1 but not exchange 0
    while ahead < 20 and time.monotonic() < t_end:
        seen += [x.iteration for x in e.poll()]
        assert seen == [], seen  # exchange 0 is not here, so nothing completes
        ahead += not h0.done and h1.test()
        time.sleep(1e-3)
    assert ahead, "exchange 1 never arrived before exchange 0: the test lost its point"
comm.Barrier()
if rank == 2:
    req = HoldBack.held.pop()
    req.Start()
    req.Wait()
    req.Free()
seen += [x.iteration for x in e.drain()]
assert seen == [0, 1], seen
assert np.array_equal(h0.recv, expected(0, c0)) and np.array_equal(h1.recv, expected(1, c1))
if rank == 2:
    e.comm = MPI.Intracomm(e.comm)
e.close()

# ialltoallv: exchange 1 is empty, so it can complete on its own while rank 2 (late)
# holds up exchange 0.
e = BLSAlltoallv(comm, 2, timeout=T, transport="ialltoallv")
eq = [[2] * P for _ in range(P)]
none = [0] * P
seen = []
if rank == 2:
    comm.Barrier()  # posts only once the others have seen exchange 1 complete first
h0 = e.post(send_of(2, eq))
h1 = e.post(np.empty(0, np.int64), none, none)
if rank != 2:
    t_end = time.monotonic() + 30
    ahead = 0
    while ahead < 20 and time.monotonic() < t_end:
        seen += [x.iteration for x in e.poll()]
        assert seen == [], seen
        ahead += not h0.done and h1.test()
        time.sleep(1e-3)
    assert ahead, "the empty exchange did not complete first: the test lost its point"
    comm.Barrier()
seen += [x.iteration for x in e.drain()]
assert seen == [0, 1], seen
assert np.array_equal(h0.recv, expected(2, eq)) and h1.recv.shape == (0,)
e.close()

# -- the send-buffer bound: after posting i + L + 1 the sends of i have left -----------------
# 4 MiB pieces leave only once the slow receiver (rank 1) copies them.
L = 1
e = BLSAlltoallv(comm, L, timeout=T)
big = [[BIG // 4] * P for _ in range(P)]
hs = []
for it in range(6):
    if rank == 1:
        time.sleep(0.15)
    hs.append(e.post(send_of(it, big)))
    late = [h.iteration for h in hs[: max(it - L, 0)] if not h.sent]
    assert not late, (it, late)
e.drain()
for it, h in enumerate(hs):
    assert np.array_equal(h.recv, expected(it, big))
e.close()
print(f"ORDER-OK {rank}", flush=True)
"""
)


def test_in_order_completion_and_send_buffer_bound(mpirun):
    result = mpirun.script(3, ORDER)
    assert result.stdout.count("ORDER-OK") == 3, result.stdout


STOPPED = (
    PIECES
    + """
import torch.distributed as dist

from bls_dlrm.comm import BLSAlltoallv, BLSClosedError, BLSTimeoutError

BIG = 1 << 19
pair = comm.Split(0 if rank != 1 else MPI.UNDEFINED)
e = BLSAlltoallv(comm, 1, timeout=2.0)
a = BLSAlltoallv(comm, 1, timeout=2.0, transport="ialltoallv")
eq = [[1] * P for _ in range(P)]
e.post(send_of(0, eq)).wait()
a.post(send_of(0, eq)).wait()
# Exchange 1: big pieces to rank 1, small ones from it. Rank 1 posts it, then stops (alive,
# not calling MPI): its own small pieces are out, the big ones for it never leave.
c = [[1] * P for _ in range(P)]
for s in range(P):
    if s != 1:
        c[s][1] = BIG
h1 = e.post(send_of(1, c), c[rank], [c[s][rank] for s in range(P)])
if rank == 1:
    print("rank 1 stops", flush=True)
    time.sleep(30)
    raise SystemExit("rank 1 was not aborted")
e.complete_until(1)
assert not h1.sent
t0 = time.monotonic()
exc = raises(BLSTimeoutError, e.flush_sends, 1, timeout=1.0)
took = time.monotonic() - t0
assert 0.9 < took < 5, took
assert (exc.iteration, exc.peers, exc.waiting_for, exc.timeout) == (1, [1], "send", 1.0), vars(exc)
assert "to receive" in str(exc) and "no data" not in str(exc), str(exc)

# Exchange 2: no data from rank 1; the engine's own timeout (2 s) ends the wait.
h2 = e.post(send_of(2, eq))
t0 = time.monotonic()
exc = raises(BLSTimeoutError, e.complete_until, 2, timeout=0.3)  # this call's own timeout
took = time.monotonic() - t0
assert 0.25 < took < 2 and exc.timeout == 0.3 and exc.lag == 1, (took, vars(exc))
t0 = time.monotonic()
exc = raises(BLSTimeoutError, h2.wait)
took = time.monotonic() - t0
assert took < 10, took
assert isinstance(exc, TimeoutError) and isinstance(exc, dist.DistBackendError)
assert (exc.iteration, exc.peers, exc.waiting_for) == (2, [1], "data"), vars(exc)
assert "exchange 2" in str(exc) and "peer(s) [1]" in str(exc), str(exc)

# ialltoallv shows no per-peer arrival: the engine asks the peers and names the one that
# had not posted (not every peer).
pair.Barrier()
t0 = time.monotonic()
exc = raises(BLSTimeoutError, a.post(send_of(1, eq)).wait)
took = time.monotonic() - t0
assert took < 10, took
assert (exc.iteration, exc.peers, exc.waiting_for) == (1, [1], "data"), vars(exc)
print(f"STOPPED-OK {rank} {took:.1f}", flush=True)
e.abort()
a.abort()
assert e.closed and a.closed
# What MPI may still touch stays referenced after the abort, and the engine is closed.
from bls_dlrm.comm.engine import _ABANDONED

assert any(x is h2 for x in _ABANDONED) and h2.recv is not None and not h2.done
raises(BLSClosedError, e.post, send_of(3, eq))
raises(BLSClosedError, h2.wait)
pair.Barrier()
if rank == 0:
    comm.Abort(3)
time.sleep(30)
"""
)


def test_a_stopped_peer_times_out_in_the_engine(mpirun):
    t0 = time.monotonic()
    result = mpirun.argv(3, ["python", _write(mpirun, STOPPED)], timeout=60, expect_ok=False)
    took = time.monotonic() - t0
    assert result.returncode != 0
    assert "rank 1 stops" in result.stdout
    assert result.stdout.count("STOPPED-OK") == 2, result.stdout + result.stderr
    assert "rank 1 was not aborted" not in result.stdout + result.stderr
    assert took < 30, took  # rank 1 sleeps 30 s: the Abort ended it


def _write(mpirun, code: str) -> str:
    path = mpirun.tmp_path / "stopped.py"
    path.write_text(ABORT_ON_ERROR + code)  # a failed assertion ends the run at once
    return str(path)


FAST_PATH = (
    PIECES
    + """
from bls_dlrm.comm import BLSAlltoallv

# Repeated counts and buffers take persistent requests; other ranks may not (rank 1 uses
# fresh buffers), counts change and change back, the ring size differs from L + 1 on rank 2.
A = [[(s + 2 * d) % 4 + 1 for d in range(P)] for s in range(P)]
B = [[(3 * s + d) % 3 for d in range(P)] for s in range(P)]
for lag in (0, 2):
    for width in (None, 3):
        e = BLSAlltoallv(comm, lag, timeout=60.0)
        ring = lag + 1 if rank != 2 else lag + 2
        sends, recvs = [None] * ring, [None] * ring
        handles = []
        for it in range(36):
            counts = B if 12 <= it < 20 else A
            sc, rc = counts[rank], [counts[s][rank] for s in range(P)]
            k = it % ring
            if it >= ring:
                handles[it - ring].wait()  # its buffers are the caller's again
            data = send_of(it, counts, width)
            if rank == 1 or sends[k] is None or sends[k].shape != data.shape:
                sends[k] = np.empty_like(data)
                recvs[k] = np.empty((sum(rc),) + data.shape[1:], data.dtype)
            sends[k][...] = data
            if recvs[k].shape[0] != sum(rc):
                recvs[k] = np.empty((sum(rc),) + data.shape[1:], data.dtype)
            handles.append(e.post(sends[k], sc, rc, recvs[k]))
            for x in e.trim():
                want = expected(x.iteration, A if not 12 <= x.iteration < 20 else B, width)
                assert np.array_equal(x.recv, want), (lag, x.iteration)
        e.drain()
        for x in handles[-(lag + 1):]:
            it = x.iteration
            want = expected(it, A if not 12 <= it < 20 else B, width)
            assert np.array_equal(x.recv, want), (lag, it)
        used = [s is not None for s in e._slot_reqs]
        if rank == 1:
            assert not any(used), used  # never the same buffers twice
        elif rank == 0:
            assert all(used), used  # the fast path was taken
        e.close()
print(f"FAST-PATH-OK {rank}", flush=True)
"""
)


def test_fast_path_for_repeated_counts_and_buffers(mpirun):
    result = mpirun.script(3, FAST_PATH)
    assert result.stdout.count("FAST-PATH-OK") == 3, result.stdout
