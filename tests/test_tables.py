"""Tables from the stored run folders in tests/data/runs (made by tests/data/make_fixture.py).

The run ``mpi-2r-trace`` is small enough to work out by hand. Two ranks, synchronous
exchange, every iteration: lookup 1 ms, bottom MLP 2 ms, top MLP 1 ms (compute 4 ms),
transfer 0.5 ms; injected delays: rank 1 at iteration 3 (3 ms), rank 0 at iteration 5
(2 ms); iterations 0-1 are warm-up. Times in ms after 5123.25 s (start -> done):

    iteration   rank 0                      rank 1
    2           8.0 -> 12.0                 8.0 -> 12.0
    3           12.0 -> 17.5 (waits 1.5)    12.0 -> 19.0 (delay 3)
    4           17.5 -> 21.5                19.0 -> 23.0
    5           21.5 -> 27.5 (delay 2)      23.0 -> 27.0

In iteration 3 rank 0 finishes its bottom MLP at 15.0 but rank 1 posts only at 16.0, so
the exchange completes at 16.5: a 1.5 ms wait, one iteration ahead of rank 1 (lag 1).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bls_dlrm.analysis import collect as tables_io
from bls_dlrm.analysis import tables
from bls_dlrm.logs.reading import read_run
from bls_dlrm.logs.records import Header, IncompleteRunError, Iteration
from bls_dlrm.logs.writer import RunLogWriter

RUNS = Path(__file__).parent / "data" / "runs"
MPI = RUNS / "mpi-2r-trace"
BLS = RUNS / "bls-4r-rotating-L2"
KILLED = RUNS / "gloo-2r-killed"
MS = 1e-3


@pytest.fixture(scope="module")
def mpi_run():
    return read_run(MPI)


@pytest.fixture(scope="module")
def bls_run():
    return read_run(BLS)


def copy_run(src: Path, dst: Path, edit_header=None, edit_record=None) -> Path:
    """Copy a stored run, optionally rewriting header and iteration records per rank."""
    shutil.copytree(src, dst)
    for path in sorted(dst.glob("rank*.jsonl")):
        out = []
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["record"] == "header" and edit_header:
                edit_header(record)
            if record["record"] == "iteration" and edit_record:
                edit_record(record, int(path.name[4:-6]))
            out.append(json.dumps(record) + "\n")
        path.write_text("".join(out))
    return dst


def small_run(run_dir: Path, run_id: str, config: dict, ranks: int = 2, n: int = 3) -> Path:
    """A tiny complete run written through the real writer."""
    for rank in range(ranks):
        header = Header(
            run_id=run_id,
            rank=rank,
            world_size=ranks,
            collective="bls",
            lag_bound=1,
            config=config,
            versions={},
            host="h",
            git_rev=None,
            clock="time.monotonic",
            t0=0.0,
            started_utc="2026-01-01T00:00:00+00:00",
        )
        with RunLogWriter(run_dir, header) as log:
            for i in range(n):
                t = 1.0 + i
                log.write(
                    Iteration(i, i == 0, 8, t, t, t, t, t + 0.5, t + 0.5, 0.0, 0.0, 0.5, 0, "ab")
                )
            log.close()
    return run_dir


# --- iterations ------------------------------------------------------------------------


def test_iterations_table_has_every_field_and_the_run_parameters(mpi_run):
    df = tables.iterations_table(mpi_run)
    assert len(df) == 2 * 4  # ranks x measured iterations
    for name in Iteration.__struct_fields__:
        assert name in df.columns
    assert not df["warmup"].any()
    assert sorted(set(df["iteration"])) == [2, 3, 4, 5]
    assert (df["run_id"] == "mpi-2r-trace-rep0").all()
    assert (df["collective"] == "mpi").all() and df["lag_bound"].isna().all()
    assert str(df["lag_bound"].dtype) == "Int64"
    assert (df["world_size"] == 2).all()
    assert (df["config.delay.kind"] == "trace").all()
    assert (df["config.skew.index_distribution"] == "zipf").all()
    assert (df["config.batch_size"] == 1024).all() and (df["config.warmup"] == 2).all()
    assert (df["clock_offset_s"] == 0.0).all()
    row = df[(df["rank"] == 0) & (df["iteration"] == 3)].iloc[0]
    assert row["wait_s"] == pytest.approx(1.5 * MS)
    assert row["lag"] == 1
    assert row["latency_s"] == pytest.approx(5.5 * MS)
    assert len(tables.iterations_table(mpi_run, include_warmup=True)) == 2 * 6


def test_flatten_config_dots_nested_keys_and_encodes_lists():
    flat = tables.flatten_config({"a": 1, "b": {"c": "x", "d": {"e": None}}, "f": [1, 2], "g": {}})
    assert flat == {"config.a": 1, "config.b.c": "x", "config.b.d.e": None, "config.f": "[1,2]"}


# --- per iteration ---------------------------------------------------------------------


def test_per_iteration_hand_computed(mpi_run):
    df = tables.per_iteration_table(mpi_run)
    assert list(df["iteration"]) == [2, 3, 4, 5]
    assert np.allclose(df["latency_s"], np.array([4.0, 7.0, 4.0, 6.0]) * MS)
    assert np.allclose(df["span_s"], np.array([4.0, 7.0, 5.5, 6.0]) * MS)
    # done on every rank at 12, 19, 23, 27.5 ms; the first measured iteration started at 8
    assert np.allclose(df["iteration_time_s"], np.array([4.0, 7.0, 4.0, 4.5]) * MS)
    assert df["iteration_time_s"].sum() == pytest.approx(
        tables.runs_table([mpi_run])["makespan_s"][0]
    )
    assert np.allclose(df["start_spread_s"], np.array([0.0, 0.0, 1.5, 1.5]) * MS)
    assert np.allclose(df["end_spread_s"], np.array([0.0, 1.5, 1.5, 0.5]) * MS)
    assert np.allclose(df["wait_max_s"], np.array([0.0, 1.5, 0.0, 0.0]) * MS)
    assert np.allclose(df["delay_max_s"], np.array([0.0, 3.0, 0.0, 2.0]) * MS)
    assert list(df["lag_max"]) == [0, 1, 0, 0]
    assert list(df["blocked_ranks"]) == [0, 1, 0, 0]
    assert list(df["samples"]) == [1024] * 4
    assert df["t_start_min"].iloc[0] == pytest.approx(5123.25 + 8 * MS)
    assert (df["collective"] == "mpi").all() and (df["config.delay.kind"] == "trace").all()


def test_per_iteration_checksum_combines_rank_checksums_in_rank_order(mpi_run):
    df = tables.per_iteration_table(mpi_run)
    parts = [log.iterations[3].checksum for log in mpi_run]
    assert (
        df.loc[df["iteration"] == 3, "checksum"].item()
        == hashlib.sha256(",".join(parts).encode()).hexdigest()
    )


def test_equal_predictions_give_equal_checksums_across_collectives(tmp_path, mpi_run):
    """The accuracy check: the same workload under another collective, same predictions."""

    def as_bls(header):
        header.update(run_id="bls-copy", collective="bls", lag_bound=4)

    other = read_run(copy_run(MPI, tmp_path / "bls-copy", edit_header=as_bls))
    runs = tables.runs_table([mpi_run, other])
    assert runs["predictions_checksum"].nunique() == 1
    assert list(tables.per_iteration_table(other)["checksum"]) == list(
        tables.per_iteration_table(mpi_run)["checksum"]
    )

    def flip(record, rank):
        if rank == 1 and record["iteration"] == 4:
            record["checksum"] = "00"

    changed = read_run(copy_run(MPI, tmp_path / "changed", edit_record=flip))
    assert (
        tables.runs_table([changed])["predictions_checksum"].item()
        != runs["predictions_checksum"].iloc[0]
    )


# --- runs ------------------------------------------------------------------------------


def test_runs_table_hand_computed(mpi_run):
    row = tables.runs_table([mpi_run]).iloc[0]
    makespan = (27.5 - 8.0) * MS  # last t_done (rank 0, it. 5) - first measured t_start
    assert row["makespan_s"] == pytest.approx(makespan)
    assert row["samples"] == 2 * 4 * 512
    assert row["throughput_sps"] == pytest.approx(4096 / makespan)
    # Per-iteration latencies 4, 7, 4, 6 ms; sorted 4, 4, 6, 7; linear interpolation at
    # rank q * (n - 1): p50 at 1.5 -> 5.0, p95 at 2.85 -> 6.85, p99 at 2.97 -> 6.97.
    assert row["latency_p50_s"] == pytest.approx(5.0 * MS)
    assert row["latency_p95_s"] == pytest.approx(6.85 * MS)
    assert row["latency_p99_s"] == pytest.approx(6.97 * MS)
    assert row["latency_mean_s"] == pytest.approx(5.25 * MS)
    assert row["latency_max_s"] == pytest.approx(7.0 * MS)
    # Sums over 2 ranks x 4 iterations: wait 1.5, delay 3 + 2, compute 8 x 4 ms.
    assert row["wait_s"] == pytest.approx(1.5 * MS)
    assert row["delay_s"] == pytest.approx(5.0 * MS)
    assert row["compute_s"] == pytest.approx(32.0 * MS)
    assert row["wait_share"] == pytest.approx(1.5 / 38.5)
    assert row["delay_share"] == pytest.approx(5.0 / 38.5)
    assert row["lag_max"] == 1 and row["lag_mean"] == pytest.approx(1 / 8)
    assert row["measured_iterations"] == 4 and row["iterations"] == 6
    assert row["world_size"] == 2 and row["collective"] == "mpi" and pd.isna(row["lag_bound"])
    assert row["hosts"] == 1 and row["git_rev"].startswith("2cee177")
    assert row["versions.torch"] == "2.13.0"
    assert row["config.delay.kind"] == "trace" and row["config.repetition"] == 0


def test_ideal_columns_call_theory_with_logged_work(monkeypatch, mpi_run, bls_run):
    from bls_dlrm import theory

    calls = []

    def fake_ideal(work, lag_bound):
        calls.append((np.array(work), lag_bound))
        return 0.5

    monkeypatch.setattr(theory, "ideal_makespan", fake_ideal)
    monkeypatch.setattr(theory, "makespan_sync", lambda work: 2.0)
    runs = tables.runs_table([mpi_run, bls_run])
    # w[r, i] = compute_s + delay_s over measured iterations, ranks in order.
    expected = np.array([[4.0, 4.0, 4.0, 6.0], [4.0, 7.0, 4.0, 4.0]]) * MS
    assert np.allclose(calls[0][0], expected)
    assert calls[0][1] == 0  # the synchronous baselines are L = 0
    assert calls[1][0].shape == (4, 5) and calls[1][1] == 2
    assert list(runs["ideal_makespan_s"]) == [0.5, 0.5]
    assert list(runs["ideal_makespan_sync_s"]) == [2.0, 2.0]
    assert list(runs["ideal_speedup"]) == [4.0, 4.0]
    assert runs["ideal_efficiency"].iloc[0] == pytest.approx(0.5 / (19.5 * MS))


def test_unbounded_bls_run_asks_theory_for_no_bound(monkeypatch, tmp_path):
    from bls_dlrm import theory

    seen = []
    monkeypatch.setattr(theory, "ideal_makespan", lambda work, lag: seen.append(lag) or 1.0)

    def unbounded(header):
        header.update(collective="bls", lag_bound=None)

    tables.runs_table([read_run(copy_run(MPI, tmp_path / "r", edit_header=unbounded))])
    assert seen == [None]


def test_ideal_columns_from_theory(mpi_run, bls_run):
    from bls_dlrm import theory

    runs = tables.runs_table([mpi_run, bls_run]).set_index("run_id")
    mpi = runs.loc["mpi-2r-trace-rep0"]
    # L = 0: each iteration costs its slowest rank: 4 + 7 + 4 + 6 ms.
    assert mpi["ideal_makespan_sync_s"] == pytest.approx(21 * MS)
    assert mpi["ideal_makespan_s"] == pytest.approx(21 * MS)
    assert mpi["ideal_speedup"] == pytest.approx(1.0)
    bls = runs.loc["bls-4r-rotating-L2-rep0"]
    it = tables.iterations_table(bls_run)
    work = (it["compute_s"] + it["delay_s"]).to_numpy().reshape(4, 5)
    assert bls["ideal_makespan_s"] == pytest.approx(theory.ideal_makespan(work, 2))
    assert bls["ideal_makespan_sync_s"] == pytest.approx(theory.makespan_sync(work))
    assert bls["ideal_speedup"] > 1.0  # a rotating straggler is what a lag bound can hide


def test_work_cv_hand_computed(mpi_run):
    """Work w = compute + delay per rank: 4|4, 4|7, 4|4, 6|4 ms over the measured iterations.

    Population std / mean across the two ranks: 0, 1.5/5.5 = 3/11, 0, 1/5 = 0.2.
    """
    row = tables.runs_table([mpi_run]).iloc[0]
    cvs = [0.0, 3 / 11, 0.0, 0.2]
    assert row["work_cv"] == pytest.approx(sum(cvs) / 4)
    # sorted 0, 0, 0.2, 3/11: p50 at rank 1.5 -> 0.1; p99 at rank 2.97
    assert row["work_cv_p50"] == pytest.approx(0.1)
    assert row["work_cv_p99"] == pytest.approx(0.2 + 0.97 * (3 / 11 - 0.2))


def work_run(run_dir: Path, compute: list[list[float]], delay: list[list[float]]) -> Path:
    """A complete run whose rank r does compute[r][i] + delay[r][i] in measured iteration i."""
    ranks = len(compute)
    for rank in range(ranks):
        header = Header(
            run_id="work",
            rank=rank,
            world_size=ranks,
            collective="mpi",
            lag_bound=None,
            config={},
            versions={},
            host="h",
            git_rev=None,
            clock="time.monotonic",
            t0=0.0,
            started_utc="2026-01-01T00:00:00+00:00",
        )
        with RunLogWriter(run_dir, header) as log:
            for i, (c, d) in enumerate(zip(compute[rank], delay[rank], strict=True)):
                t = 1.0 + i
                log.write(Iteration(i, False, 8, t, t, t, t, t + 0.5, t + 0.5, 0.0, d, c, 0, "ab"))
            log.close()
    return run_dir


def test_work_cv_is_zero_for_equal_work_and_counts_delays(tmp_path):
    same = [[0.004] * 3, [0.004] * 3]
    none = [[0.0] * 3, [0.0] * 3]
    flat = read_run(work_run(tmp_path / "flat", same, none))
    assert tables.runs_table([flat])["work_cv"].item() == 0.0
    # rank 1 is delayed 2 ms in every iteration: 4 and 6 ms, std 1, mean 5
    slow = read_run(work_run(tmp_path / "slow", same, [[0.0] * 3, [0.002] * 3]))
    row = tables.runs_table([slow]).iloc[0]
    assert row["work_cv"] == pytest.approx(0.2)
    assert row["work_cv_p50"] == pytest.approx(0.2) and row["work_cv_p99"] == pytest.approx(0.2)
    # three ranks, work 1, 2, 3 ms in iteration 0 only (then equal): cv sqrt(2/3) / 2
    three = [[0.001, 0.002], [0.002, 0.002], [0.003, 0.002]]
    row = tables.runs_table([read_run(work_run(tmp_path / "three", three, [[0.0] * 2] * 3))])
    assert row["work_cv"].item() == pytest.approx((2 / 3) ** 0.5 / 2 / 2)


def test_placement_and_series_columns_from_the_headers(tmp_path, mpi_run):
    def placed(header):
        header.update(
            series_order=["bls-L2", "mpi", "gloo"],
            series_index=1,
            shuffle_seed=17,
            cores=[header["rank"]] * (1 + header["rank"]),
            cores_per_rank=1 + header["rank"],
            binding="core",
        )

    run = read_run(copy_run(MPI, tmp_path / "placed", edit_header=placed))
    row = tables.runs_table([run]).iloc[0]
    assert row["binding"] == "core"
    assert row["cores_per_rank"] == 1  # fewest over ranks (rank 0: 1, rank 1: 2)
    assert row["series_order"] == "bls-L2|mpi|gloo"
    assert row["series_index"] == 1 and row["shuffle_seed"] == 17

    def mixed(header):
        placed(header)
        header["binding"] = "core" if header["rank"] == 0 else "none"

    other = read_run(copy_run(MPI, tmp_path / "mixed", edit_header=mixed))
    runs = tables.runs_table([mpi_run, other])
    assert list(runs["binding"].fillna("-")) == ["-", "mixed"]
    # the stored logs predate these fields: nulls, integers kept exact
    assert runs["cores_per_rank"].isna().iloc[0] and runs["series_order"].isna().iloc[0]
    for name in ("cores_per_rank", "series_index", "shuffle_seed"):
        assert str(runs[name].dtype) == "Int64"
    # the ideal speedup for the run's own lag bound stays
    assert "ideal_speedup" in runs.columns


def test_ranks_on_two_hosts_are_put_on_one_timeline(tmp_path, mpi_run):
    """Rank 1 on a host whose monotonic clock reads 1000 s more: same tables after alignment
    (by the offset its header logs; tests/test_clocks.py covers the alignment in depth)."""

    def other_host(header):
        if header["rank"] == 1:
            header.update(
                host="node02",
                t0=header["t0"] + 1000.0,
                clock_offset_s=1000.0,
                clock_error_s=1e-5,
                clock_sync_t=header["t0"] + 1000.0,
            )

    def shift(record, rank):
        if rank == 1:
            for name in tables.TIME_COLUMNS:
                record[name] += 1000.0

    moved = read_run(copy_run(MPI, tmp_path / "two-hosts", other_host, shift))
    it = tables.iterations_table(moved)
    assert set(it.loc[it["rank"] == 1, "clock_offset_s"]) == {1000.0}
    assert set(it.loc[it["rank"] == 1, "clock_error_s"]) == {1e-5}
    a = tables.runs_table([mpi_run]).iloc[0]
    b = tables.runs_table([moved]).iloc[0]
    assert b["hosts"] == 2
    for name in ("makespan_s", "latency_p50_s", "latency_p99_s", "throughput_sps"):
        assert b[name] == pytest.approx(a[name], rel=1e-9)


# --- folders, Parquet, command line ----------------------------------------------------


def test_find_run_dirs_finds_complete_and_incomplete_runs():
    assert tables_io.find_run_dirs(RUNS) == sorted([MPI, BLS, KILLED])
    assert tables_io.find_run_dirs([MPI, MPI]) == [MPI]


def test_collect_refuses_incomplete_runs(tmp_path):
    out = tmp_path / "tables"
    with pytest.raises(IncompleteRunError) as err:
        tables_io.collect(RUNS, out)
    message = str(err.value)
    assert "gloo-2r-killed" in message and "--skip-incomplete" in message
    assert "rank 1: only rank1.jsonl.partial exists" in message
    assert not out.exists()


def test_collect_skips_incomplete_runs_when_asked_and_writes_parquet(tmp_path):
    out = tmp_path / "tables"
    with pytest.warns(RuntimeWarning, match="gloo-2r-killed"):
        result = tables_io.collect(RUNS, out, skip_incomplete=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "iterations.parquet",
        "per_iteration.parquet",
        "runs.parquet",
    ]
    assert len(result.runs) == 2 and len(result.per_iteration) == 4 + 5
    assert len(result.iterations) == 2 * 4 + 4 * 5
    for name in tables.TABLE_NAMES:
        stored = pd.read_parquet(out / f"{name}.parquet")
        pd.testing.assert_frame_equal(stored, getattr(result, name), check_dtype=False)
    runs = pd.read_parquet(out / "runs.parquet").set_index("run_id")
    assert runs.loc["mpi-2r-trace-rep0", "throughput_sps"] == pytest.approx(4096 / (19.5 * MS))
    assert str(runs["lag_bound"].dtype) == "Int64"
    assert str(runs["config.skew.pooling_k"].dtype) == "Int64"


def test_collect_stores_config_values_of_mixed_types(tmp_path):
    small_run(tmp_path / "runs" / "a", "a", {"x": 1, "y": [1, 2]})
    small_run(tmp_path / "runs" / "b", "b", {"x": "one", "z": True})
    tables_io.collect(tmp_path / "runs", tmp_path / "out")
    runs = pd.read_parquet(tmp_path / "out" / "runs.parquet")
    assert list(runs["config.x"]) == ["1", "one"]
    assert list(runs["config.y"].fillna("-")) == ["[1,2]", "-"]
    iters = pd.read_parquet(tmp_path / "out" / "iterations.parquet")
    assert len(iters) == 2 * (2 * 2)


def test_collect_refuses_two_folders_with_one_run_id(tmp_path):
    shutil.copytree(MPI, tmp_path / "a")
    shutil.copytree(MPI, tmp_path / "b")
    with pytest.raises(ValueError, match="appears in both"):
        tables_io.collect(tmp_path, tmp_path / "out")


def test_collect_without_runs_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run folders"):
        tables_io.collect(tmp_path, tmp_path / "out")


def test_main_tables_command_line(tmp_path, capsys):
    out = tmp_path / "out"
    assert tables_io.main_tables([str(RUNS), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "gloo-2r-killed" in err and "incomplete" in err
    assert tables_io.main_tables([str(RUNS), "--out", str(out), "--skip-incomplete"]) == 0
    captured = capsys.readouterr()
    assert "warning: skipping 1 incomplete run(s)" in captured.err
    assert "2 run(s)" in captured.out
    assert len(pd.read_parquet(out / "runs.parquet")) == 2
    assert tables_io.main_tables([str(MPI), str(BLS), "--out", str(tmp_path / "o2")]) == 0
