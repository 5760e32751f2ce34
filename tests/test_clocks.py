"""Clocks aligned through MPI: the offset estimator, its log fields, and the tables' alignment.

A run measures every rank's monotonic clock against rank 0's by ping-pong before and after
it (:mod:`bls_dlrm.logs.clocks`) and :mod:`bls_dlrm.analysis.tables` puts every host's times
on rank 0's clock with these offsets. Checked here:

- the estimator with a fake transport (known offset, asymmetric delays): the estimate is
  within its bound, the bound is half the smallest round trip;
- the measurement under MPI on one host, one rank's clock moved by 1000 s in-process;
- tables of logs whose second host's clock is 1000 s off come out as with no offset
  (within the logged bounds), also with a drift between the clocks during the run; they
  fail without alignment;
- the wall clock plays no part: a time namespace moves the monotonic clock but not the wall
  clock, so the two-host run below could not tell an alignment by ``started_utc`` from the
  real one (both would be right there). The tables are shown to ignore ``started_utc``
  instead: perturbing it leaves them equal;
- two namespace hosts, host 2's monotonic clock 1000 s ahead: the measured offset is
  1000 s within its bound, and the aligned timelines obey what one clock would show.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest
from conftest import BLS_DLRM, infer_argv

from bls_dlrm.analysis import tables
from bls_dlrm.logs import clocks
from bls_dlrm.logs.reading import read_rank, read_run
from bls_dlrm.logs.records import ClockSync, Header, Iteration, LogFormatError
from bls_dlrm.logs.writer import RunLogWriter

RUNS = Path(__file__).parent / "data" / "runs"
BLS = RUNS / "bls-4r-rotating-L2"  # 4 ranks, BLS L = 2, rotating delays
OFFSET = 1000.0
TIMES = (*tables.TIME_COLUMNS, "t_close")
# the stored run's first and last times: where its clock syncs would have been taken
FIRST = min(it.t_start for log in read_run(BLS) for it in log.iterations) - 0.01
LAST = max(it.t_done for log in read_run(BLS) for it in log.iterations) + 0.01


# -- the estimator ----------------------------------------------------------------------------


class FakeLink:
    """Two clocks ``offset`` apart and a link whose two directions take different times.

    Rank 0's clock is the true time; the peer's reads ``true + offset``. Each round trip:
    out (``out_s()``), the peer reads its clock after ``hold_s`` of its own, back
    (``back_s()``).
    """

    def __init__(self, offset: float, out_s, back_s, hold_s: float = 0.0) -> None:
        self.offset, self.out_s, self.back_s, self.hold_s = offset, out_s, back_s, hold_s
        self.now = 5000.0
        self.trips: list[float] = []

    def round_trip(self) -> tuple[float, float, float]:
        t_send = self.now
        self.now += self.out_s() + self.hold_s
        t_peer = self.now + self.offset
        self.now += self.hold_s + self.back_s()
        self.trips.append(self.now - t_send)
        return t_send, t_peer, self.now


@pytest.mark.parametrize("seed", range(20))
def test_estimate_is_within_its_bound_under_asymmetric_delays(seed):
    rng = np.random.default_rng(seed)
    link = FakeLink(
        OFFSET + rng.uniform(-5, 5),
        out_s=lambda: rng.exponential(2e-4),
        back_s=lambda: 3e-3 + rng.exponential(5e-3),  # the way back is much slower
        hold_s=rng.uniform(0, 1e-5),
    )
    offset, error = clocks.estimate_offset(link.round_trip, 8)
    assert len(link.trips) == 8
    assert error == pytest.approx(min(link.trips) / 2, abs=1e-12)
    assert abs(offset - link.offset) <= error + 1e-9
    # Asymmetry shows: the estimate is off, and by more than a one-way-delay formula's
    # lucky guess would hide.
    assert abs(offset - link.offset) > 1e-4


def test_estimate_keeps_the_shortest_round_trip():
    durations = iter([(5e-3, 1e-3), (1e-5, 1e-5), (4e-3, 4e-3), (1e-4, 9e-3)])
    pending: list[tuple[float, float]] = []

    def out():
        pending.append(next(durations))
        return pending[-1][0]

    link = FakeLink(-42.0, out_s=out, back_s=lambda: pending[-1][1])
    offset, error = clocks.estimate_offset(link.round_trip, 4)
    assert error == pytest.approx(1e-5)
    assert offset == pytest.approx(-42.0, abs=1e-12)  # symmetric trip: exact


def test_estimate_refuses_nonsense():
    with pytest.raises(ValueError, match="at least one"):
        clocks.estimate_offset(lambda: (0.0, 0.0, 1.0), 0)
    with pytest.raises(ValueError, match="ended before it started"):
        clocks.estimate_offset(lambda: (2.0, 0.0, 1.0), 3)


def test_measure_under_mpi_finds_a_moved_clock(mpirun, tmp_path):
    """Three ranks on one host; rank 2 reads a clock 1000 s ahead (monkeypatched)."""
    code = """
    import json, time
    from mpi4py import MPI
    from bls_dlrm.logs import clocks

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if rank == 2:
        real = time.monotonic
        time.monotonic = lambda: real() + 1000.0
    out = []
    for _ in range(3):
        t = time.perf_counter()
        sync = clocks.measure(comm)
        out.append([*sync, time.perf_counter() - t, time.monotonic()])
    with open(f"sync{rank}.json", "w") as f:  # one file per rank: stdout lines interleave
        json.dump(out, f)
    """
    mpirun.script(3, code)
    syncs = {r: json.loads((tmp_path / f"sync{r}.json").read_text()) for r in range(3)}
    for rank, truth in ((0, 0.0), (1, 0.0), (2, OFFSET)):
        for offset, error, t, _cost, now in syncs[rank]:
            if rank == 0:
                assert (offset, error) == (0.0, 0.0)
            assert abs(offset - truth) <= error < 1.0
            assert t <= now < t + 60  # the sync time is on the rank's own clock
    print("measure cost (s):", [c for s in syncs.values() for *_, c, _ in s])


# -- the log fields ---------------------------------------------------------------------------


def _header(**kw) -> Header:
    fields = dict(
        run_id="r",
        rank=0,
        world_size=1,
        collective="bls",
        lag_bound=1,
        config={},
        versions={},
        host="a",
        git_rev=None,
        clock="time.monotonic",
        t0=10.0,
        started_utc="2026-01-01T00:00:00+00:00",
    )
    return Header(**(fields | kw))


def _write_one(run_dir: Path, header: Header, clock_sync=None) -> Path:
    it = Iteration(0, False, 4, 11.0, 11.1, 11.2, 11.3, 11.4, 11.5, 0.0, 0.0, 0.5, 0, "ab")
    with RunLogWriter(run_dir, header) as log:
        log.write(it)
        return log.close(clock_sync=clock_sync)


def test_clock_fields_round_trip_in_header_and_footer(tmp_path):
    start, end = ClockSync(1000.5, 2e-5, 10.0), ClockSync(1000.25, 3e-5, 12.0)
    header = _header(**start.fields())
    path = _write_one(tmp_path, header, end)
    log = read_rank(path)
    assert log.header.clock_sync == start and log.footer.clock_sync == end
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["clock_offset_s"] == 1000.5 and lines[-1]["clock_error_s"] == 3e-5


def test_logs_without_clock_fields_still_read(tmp_path):
    path = _write_one(tmp_path, _header())
    log = read_rank(path)
    assert log.header.clock_sync is None and log.footer.clock_sync is None
    assert "clock_offset_s" not in path.read_text()  # no new keys in such logs
    assert all(log.header.clock_sync is None for log in read_run(BLS))  # stored old logs


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"clock_offset_s": 1.0}, "go together"),
        ({"clock_offset_s": 1.0, "clock_error_s": -1.0, "clock_sync_t": 1.0}, ">= 0"),
    ],
)
def test_bad_clock_fields_are_refused(tmp_path, fields, match):
    with pytest.raises(ValueError, match=match):
        _header(**fields).validate()
    good = _write_one(tmp_path, _header())
    lines = good.read_text().splitlines()
    footer = json.loads(lines[-1]) | fields
    good.write_text("\n".join([*lines[:-1], json.dumps(footer)]) + "\n")
    with pytest.raises(LogFormatError, match=match):
        read_rank(good)


# -- tables: synthetic logs -------------------------------------------------------------------


def rewrite(dst: Path, host, shift=None, start=None, end=None, edit=None, src: Path = BLS):
    """The stored run written again through the real writer, per rank: ``host(rank)``,
    times mapped by ``shift(rank, t)``, clock syncs ``start(rank)`` / ``end(rank)`` in
    header / footer, other header fields from ``edit(rank)``."""
    for log in read_run(src):
        r = log.header.rank
        fields = {"host": host(r)} | (edit(r) if edit else {})
        if start is not None:
            fields |= start(r).fields()
        header = msgspec.structs.replace(log.header, **fields)
        with RunLogWriter(dst, header) as out:
            for it in log.iterations:
                if shift is not None:
                    it = msgspec.structs.replace(
                        it, **{n: shift(r, getattr(it, n)) for n in tables.TIME_COLUMNS}
                    )
                out.write(it)
            out.close(clock_sync=None if end is None else end(r))
    return read_run(dst)


def two_hosts(rank: int) -> str:
    return "node01" if rank < 2 else "node02"


def zero(error: float = 2e-5):
    return lambda r: ClockSync(0.0, 0.0 if r == 0 else error, FIRST)


def build(run) -> tables.Tables:
    it = tables.iterations_table(run)
    return tables.Tables(it, tables.per_iteration_table(run), tables.runs_table([run]))


def assert_same_tables(a: tables.Tables, b: tables.Tables, atol=1e-9, skip=(), rtol=0.0) -> None:
    """Equal tables, times to ``atol``, except what names the folder or the clock offset
    (and the columns in ``skip``)."""
    skip = {"run_dir", "clock_offset_s", *skip}
    for name in tables.TABLE_NAMES:
        x, y = getattr(a, name), getattr(b, name)
        cols = [c for c in x.columns if c not in skip]
        pd.testing.assert_frame_equal(x[cols], y[cols], check_exact=False, atol=atol, rtol=rtol)


def test_a_host_1000_s_off_gives_the_tables_of_no_offset(tmp_path):
    base = rewrite(tmp_path / "base", two_hosts, start=zero(), end=zero())
    moved = rewrite(
        tmp_path / "moved",
        two_hosts,
        shift=lambda r, t: t + OFFSET if r >= 2 else t,
        start=lambda r: ClockSync(OFFSET if r >= 2 else 0.0, 2e-5 if r else 0.0, FIRST + OFFSET),
        end=lambda r: ClockSync(OFFSET if r >= 2 else 0.0, 2e-5 if r else 0.0, LAST + OFFSET),
    )
    a, b = build(base), build(moved)
    assert_same_tables(a, b)
    it = b.iterations
    assert set(it.loc[it["rank"] >= 2, "clock_offset_s"]) == {OFFSET}
    assert set(it.loc[it["rank"] < 2, "clock_offset_s"]) == {0.0}
    assert set(it.loc[it["rank"] >= 2, "clock_error_s"]) == {2e-5}
    assert b.runs["clock_error_s"].iloc[0] == 2e-5 and b.runs["hosts"].iloc[0] == 2
    # the very same run on one host: same times, no error at all
    one = build(rewrite(tmp_path / "one", lambda r: "node01", start=zero(), end=zero()))
    assert set(one.iterations["clock_error_s"]) == {0.0}
    assert_same_tables(one, a, atol=1e-12, skip={"host", "hosts", "clock_error_s"})


def test_measurement_noise_stays_within_the_logged_bound(tmp_path):
    """Offsets measured 3 us off the truth, with a 5 us bound: times off by <= the bound."""
    base = build(rewrite(tmp_path / "base", two_hosts, start=zero(), end=zero()))
    noisy = build(
        rewrite(
            tmp_path / "noisy",
            two_hosts,
            shift=lambda r, t: t + OFFSET if r >= 2 else t,
            start=lambda r: ClockSync(OFFSET + 3e-6 if r >= 2 else 0.0, 5e-6, FIRST + OFFSET),
            end=lambda r: ClockSync(OFFSET - 2e-6 if r >= 2 else 0.0, 4e-6, LAST + OFFSET),
        )
    )
    it_a, it_b = base.iterations, noisy.iterations
    bound = it_b["clock_error_s"].to_numpy()
    assert set(bound[it_b["rank"] >= 2]) == {5e-6}  # the larger of the two bounds
    for name in tables.TIME_COLUMNS:
        diff = np.abs(it_a[name].to_numpy() - it_b[name].to_numpy())
        assert (diff <= bound + 1e-9).all()
        assert diff[it_b["rank"] >= 2].max() > 1e-6  # the noise is there, not aligned away
    assert (it_a["latency_s"] == it_b["latency_s"]).all()  # durations never cross clocks


def test_each_host_takes_its_best_measurement_and_rank_0s_host_reads_its_clock(tmp_path):
    errors = {1: 3e-6, 2: 5e-6, 3: 2e-6}
    offsets = {1: 1e-6, 2: OFFSET + 4e-6, 3: OFFSET - 1e-6}
    run = rewrite(
        tmp_path / "run",
        two_hosts,
        shift=lambda r, t: t + OFFSET if r >= 2 else t,
        start=lambda r: ClockSync(offsets.get(r, 0.0), errors.get(r, 0.0), FIRST),
        end=lambda r: ClockSync(offsets.get(r, 0.0), errors.get(r, 0.0), LAST),
    )
    it = tables.iterations_table(run)
    by_rank = it.groupby("rank")
    assert set(by_rank["clock_offset_s"].unique().explode()) == {0.0, OFFSET - 1e-6}
    assert it.loc[it["rank"] == 1, "clock_error_s"].eq(0.0).all()  # one clock: exact
    for r in (2, 3):  # rank 3's measurement, the tighter one, for both ranks of node02
        assert it.loc[it["rank"] == r, "clock_offset_s"].eq(OFFSET - 1e-6).all()
        assert it.loc[it["rank"] == r, "clock_error_s"].eq(2e-6).all()


def long_run(run_dir: Path, ranks: int = 4, n: int = 200) -> Path:
    """A synchronous-looking run of ``n`` 1 ms iterations, one every 2 ms, on one clock."""
    for rank in range(ranks):
        header = _header(run_id="long", rank=rank, world_size=ranks)
        with RunLogWriter(run_dir, header) as log:
            for i in range(n):
                t = 50.0 + 2e-3 * i + 1e-5 * rank
                times = [t, t + 2e-4, t + 3e-4, t + 5e-4, t + 6e-4, t + 1e-3]
                log.write(Iteration(i, i < 2, 4, *times, 0.0, 0.0, 1e-3, 0, "ab"))
            log.close()
    return run_dir


def test_a_drift_between_start_and_end_is_interpolated(tmp_path):
    """node02's clock gains 2 ms against rank 0's during the run: each iteration is moved by
    the offset of its own time, not by the start's."""
    src = long_run(tmp_path / "src")
    base = build(rewrite(tmp_path / "base", two_hosts, start=zero(1e-6), end=zero(1e-6), src=src))
    first = min(it.t_start for log in read_run(src) for it in log.iterations)
    last = max(it.t_done for log in read_run(src) for it in log.iterations)
    drift = 2e-3

    def offset(t: float) -> float:  # true offset at rank 0's time t
        return OFFSET + drift * (t - first) / (last - first)

    drifted = build(
        rewrite(
            tmp_path / "drift",
            two_hosts,
            shift=lambda r, t: t + offset(t) if r >= 2 else t,
            start=lambda r: ClockSync(
                offset(first) if r >= 2 else 0.0, 1e-6, first + offset(first)
            ),
            end=lambda r: ClockSync(offset(last) if r >= 2 else 0.0, 1e-6, last + offset(last)),
            src=src,
        )
    )
    # within an iteration the offset is held (durations stay as logged): the residue is
    # the drift over one iteration's time, well below the drift over the run
    within = drift * base.iterations["latency_s"].max() / (last - first)
    assert within < drift / 4
    assert_same_tables(
        base, drifted, atol=within + 1e-9, rtol=1e-4, skip={"clock_drift_s"}
    )  # rtol: throughput
    assert drifted.runs["clock_drift_s"].iloc[0] == pytest.approx(drift, abs=1e-9)
    assert base.runs["clock_drift_s"].iloc[0] == 0.0
    # the start offset alone would be off by up to the whole drift
    it = drifted.iterations
    held = it["t_start"] + it["clock_offset_s"] - OFFSET
    late = it["rank"] >= 2
    assert (held - base.iterations["t_start"])[late].abs().max() > drift / 2


def test_the_tables_ignore_the_wall_clock(tmp_path):
    """``started_utc`` (and its ``t0``) no longer align anything: perturbing them on one host
    by hours leaves every table as it was (``started_utc`` of the runs table is its
    provenance, the earliest logged, and moves with it)."""
    kw = dict(
        shift=lambda r, t: t + OFFSET if r >= 2 else t,
        start=lambda r: ClockSync(OFFSET if r >= 2 else 0.0, 1e-5 if r else 0.0, FIRST),
        end=lambda r: ClockSync(OFFSET if r >= 2 else 0.0, 1e-5 if r else 0.0, LAST),
    )
    plain = build(rewrite(tmp_path / "plain", two_hosts, **kw))

    def skewed(r):
        if r < 2:
            return {}
        return {"started_utc": "2026-01-14T13:21:07.114512+00:00", "t0": 17.0}

    wall = build(rewrite(tmp_path / "wall", two_hosts, edit=skewed, **kw))
    assert read_run(tmp_path / "wall").ranks[2].header.started_utc != (
        read_run(tmp_path / "plain").ranks[2].header.started_utc
    )
    assert_same_tables(plain, wall, atol=0.0)


def test_old_logs_spanning_hosts_stay_unaligned_and_say_so(tmp_path):
    run = rewrite(tmp_path / "old", two_hosts)
    with pytest.warns(UserWarning, match="node02 carry no clock offsets"):
        it = tables.iterations_table(run)
    assert set(it["clock_offset_s"]) == {0.0}
    assert it.loc[it["rank"] >= 2, "clock_error_s"].isna().all()
    assert it.loc[it["rank"] < 2, "clock_error_s"].eq(0.0).all()
    same = tables.iterations_table(read_run(BLS))  # one host: no warning, no change
    np.testing.assert_array_equal(same["t_start"], it["t_start"])


# -- two namespace hosts, host 2's clock 1000 s ahead -----------------------------------------


def _infer_argv(out: Path, dataset: Path) -> list[str]:
    return infer_argv(
        out,
        f"dataset={dataset}",
        "model.name=tiny",
        "series=['bls:0', 'bls:2']",
        "delay.kind=rotating",
        "delay.size_s=0.003",
        "warmup=2",
        "iterations=20",
        "binding=none",
        "timeout_s=60",
    )


def _check_one_timeline(run, t: tables.Tables) -> None:
    """What one clock shows, on the aligned times, within the logged bounds: an exchange
    completes on a rank only after every rank began to post it (its lookups done: the
    data cannot leave before; for every lag bound), and a rank's own durations stay."""
    it = t.iterations.sort_values(["iteration", "rank"])
    n = run.world_size
    posted = it["t_lookup"].to_numpy().reshape(-1, n)
    completed = it["t_completed"].to_numpy().reshape(-1, n)
    error = it["clock_error_s"].to_numpy().reshape(-1, n)
    slack = error[:, :, None] + error[:, None, :]  # [i, r, s]: bound of rank r plus rank s
    assert (completed[:, :, None] + slack >= posted[:, None, :]).all()
    assert np.allclose(it["latency_s"], it["t_done"] - it["t_start"], rtol=0, atol=1e-9)
    row = t.runs.iloc[0]
    elapsed = max(log.footer.elapsed_s for log in run)
    assert elapsed - 2 * row["clock_error_s"] <= row["makespan_s"] < elapsed + 5.0
    assert t.per_iteration["start_spread_s"].max() < 5.0


@pytest.mark.mpi
def test_two_hosts_one_clock_1000_s_ahead_align_as_one_host(
    netns_hosts, mpirun, tiny_zipf_dataset, tmp_path
):
    one = tmp_path / "one"
    mpirun.argv(2, _infer_argv(one, tiny_zipf_dataset), timeout=180)
    hosts = netns_hosts(2, ranks_per_host=1, monotonic_offsets=[0, int(OFFSET)])
    two = tmp_path / "two"
    hosts.argv(_infer_argv(two, tiny_zipf_dataset), timeout=180)
    report = []
    for label in ("bls-L0", "bls-L2"):
        run_one, run_two = read_run(one / label), read_run(two / label)
        assert len({log.header.host for log in run_one}) == 1
        assert [log.header.host for log in run_two] == hosts.hostnames
        # host 2's clock really is 1000 s ahead: its raw times are
        raw = run_two.ranks[1].iterations[0].t_start - run_two.ranks[0].iterations[0].t_start
        assert abs(raw - OFFSET) < 5.0
        # the measured offsets, start and end, hold the true 1000 s within their bounds
        for sync in (run_two.ranks[1].header.clock_sync, run_two.ranks[1].footer.clock_sync):
            assert abs(sync.offset_s - OFFSET) <= sync.error_s < 0.1
            report.append((label, sync.offset_s - OFFSET, sync.error_s))
        for sync in (run_two.ranks[0].header.clock_sync, run_two.ranks[0].footer.clock_sync):
            assert (sync.offset_s, sync.error_s) == (0.0, 0.0)
        t_one, t_two = build(run_one), build(run_two)
        assert set(t_one.iterations["clock_error_s"]) == {0.0}
        _check_one_timeline(run_one, t_one)
        _check_one_timeline(run_two, t_two)
        # and without alignment the same check fails by the 1000 s
        unaligned = t_two.iterations.assign(clock_error_s=0.0)
        for name in TIMES:
            unaligned[name] = unaligned[name] + unaligned["clock_offset_s"]
        with pytest.raises(AssertionError):
            _check_one_timeline(run_two, t_two._replace(iterations=unaligned))
        # per-iteration latencies: one rank's own clock, identical to the logged ones
        logged = [it.t_done - it.t_start for log in run_two for it in log.measured]
        assert sorted(t_two.iterations["latency_s"]) == pytest.approx(sorted(logged), abs=0)
    print("offset - 1000 s, error bound (s):", report)
    assert not math.isnan(t_two.runs["clock_error_s"].iloc[0])


@pytest.mark.mpi
def test_serving_on_two_hosts_one_clock_1000_s_ahead(netns_hosts, tiny_zipf_dataset, tmp_path):
    """Open loop on the two hosts: query latencies never cross clocks (each rank counts from
    its own start instant), and the tables' aligned batch closes agree across hosts."""
    import yaml

    config = tmp_path / "serve.yaml"
    serve = {
        "reference": "gloo",
        "calibrate_iterations": 20,
        "duration_s": 1.0,
        "warmup_s": 0.1,
        "seed": 7,
        "rates": [150.0],
        "sizes": {"kind": "lognormal", "median": 12, "sigma": 0.9, "max": 48},
        "max_batch": 64,
        "max_wait_s": 0.004,
    }
    data = {
        "dataset": str(tiny_zipf_dataset),
        "model": {"name": "tiny"},
        "series": ["gloo", "bls:2"],
        "binding": "none",
        "timeout_s": 60,
        "serve": serve,
    }
    config.write_text(yaml.safe_dump(data))
    hosts = netns_hosts(2, ranks_per_host=1, monotonic_offsets=[0, int(OFFSET)])
    out = tmp_path / "out"
    hosts.argv([BLS_DLRM, "serve", "--config", str(config), "--out", str(out)], timeout=240)
    # the calibration's closed-loop capacity spans both hosts' clocks: its makespan is
    # seconds at most, not 1000 s (which would put it 5 orders below the work's bound; the
    # tiny model's exchange over TCP keeps it about 10x below here)
    calibration = json.loads((out / "serve.json").read_text())["calibration"]
    for c in calibration["candidates"].values():
        assert 1e-3 * c["ideal_sync_qps"] < c["capacity_qps"] < 2 * c["ideal_unbounded_qps"]
    for label in ("gloo", "bls-L2"):
        run = read_run(out / label / "load~0")
        assert [log.header.host for log in run] == hosts.hostnames
        for sync in (run.ranks[1].header.clock_sync, run.ranks[1].footer.clock_sync):
            assert abs(sync.offset_s - OFFSET) <= sync.error_s < 0.1
        raw = run.ranks[1].header.t_origin - run.ranks[0].header.t_origin
        assert abs(raw - OFFSET) < 5.0  # each rank's start instant on its own clock
        queries = pd.read_parquet(out / label / "load~0" / "queries.parquet")
        assert len(queries) > 50
        assert queries["latency_s"].between(0.0, 1.0).all()
        it = tables.iterations_table(run).sort_values(["iteration", "rank"])
        close = it["t_close"].to_numpy().reshape(-1, 2)
        error = it["clock_error_s"].to_numpy().reshape(-1, 2).sum(axis=1)
        # every rank closes batch i at its start instant + the same schedule time; the
        # start instants are one barrier's exit apart (about a network latency)
        assert (np.abs(close[:, 1] - close[:, 0]) <= error + 0.05).all()
        unaligned = close[:, 1] + it.loc[it["rank"] == 1, "clock_offset_s"].to_numpy()
        assert (np.abs(unaligned - close[:, 0]) > OFFSET - 5.0).all()


def test_header_new_carries_the_clock_sync():
    sync = ClockSync(1000.25, 2e-6, 3.5)
    header = Header.new(
        run_id="r", rank=0, world_size=1, collective="bls", lag_bound=0, config={},
        versions={}, git_rev=None, clock_sync=sync,
    )  # fmt: skip
    assert header.clock_sync == sync and header.to_dict()["clock_sync_t"] == 3.5
    assert Header.new(
        run_id="r", rank=0, world_size=1, collective="bls", lag_bound=0, config={},
        versions={}, git_rev=None,
    ).clock_sync is None  # fmt: skip
