"""``bls-dlrm bench-a2a``: both modes through both APIs produce their fields (no speeds)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bls_dlrm.harness.bench_a2a import (
    NATIVE_API,
    CollectiveSpec,
    _api_list,
    _check_received,
    _count_matrices,
    _jobs,
    _summarise,
    build_parser,
)

BLS_DLRM = str(Path(sys.executable).parent / "bls-dlrm")

LATENCY_FIELDS = {
    "mode",
    "collective",
    "api",
    "ranks",
    "bind",
    "bytes_per_peer",
    "vary_counts",
    "p50_us",
    "p99_us",
    "mean_us",
    "rep",
}
SCHEDULE_FIELDS = {
    "mode",
    "collective",
    "api",
    "ranks",
    "bind",
    "schedule",
    "makespan_s",
    "wait_s_mean",
    "max_lag",
    "work_mean_s",
    "ideal_makespan_s",
    "ideal_sync_makespan_s",
    "ideal_speedup",
    "rep",
}


def _bench(tmp_path: Path, *options: str) -> tuple[list[dict], list[dict], str]:
    raw = tmp_path / "raw.jsonl"
    result = subprocess.run(
        [BLS_DLRM, "bench-a2a", "--ranks", "2", "--reps", "1", "--out", str(raw), *options],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
    summary = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    return rows, summary, result.stdout


@pytest.mark.mpi
@pytest.mark.parametrize("vary", [False, True], ids=["repeated", "vary-counts"])
def test_latency_mode_both_apis(vary, tmp_path):
    collectives = "native,mpi,bls:0,floor"
    options = ["--mode", "latency", "--collectives", collectives, "--api", "engine,torch"]
    options += ["--sizes", "64,4KiB", "--warmup", "2", "--iters", "5", "--baseline", "native"]
    rows, summary, table = _bench(tmp_path, *options, *(["--vary-counts"] if vary else []))
    got = {(r["collective"], r["api"], r["bytes_per_peer"]) for r in rows}
    want = {(c, a, b) for c in ("mpi", "bls:0") for a in ("engine", "torch") for b in (64, 4096)}
    want |= {("native", NATIVE_API, b) for b in (64, 4096)}
    want |= {("floor", "torch", b) for b in (64, 4096)}
    assert got == want
    for r in rows:
        assert set(r) >= LATENCY_FIELDS, r
        assert r["vary_counts"] is vary and r["bind"] == "none" and r["ranks"] == 2
        assert r["p50_us"] > 0 and r["p99_us"] >= r["p50_us"]
    assert len(summary) == len(want)
    for s in summary:
        assert s["ratio_to_native"] > 0, s
    assert "api" in table.splitlines()[-len(want) - 1]  # the table's header


@pytest.mark.mpi
def test_schedule_mode_both_apis_side_by_side(tmp_path):
    options = ["--mode", "schedule", "--collectives", "mpi,bls:2", "--api", "engine,torch"]
    options += ["--work-s", "0.002", "--warmup", "2", "--iters", "12", "--size", "1KiB"]
    rows, summary, table = _bench(tmp_path, *options, "--bind", "core")
    assert {(r["collective"], r["api"]) for r in rows} == {
        (c, a) for c in ("mpi", "bls:2") for a in ("engine", "torch")
    }
    for r in rows:
        assert set(r) >= SCHEDULE_FIELDS, r
        assert r["bind"] == "core" and r["iterations"] == 12
        assert r["makespan_s"] > 0 and r["ideal_speedup"] >= 1 - 1e-9
    by = {(s["collective"], s["api"]): s for s in summary}
    for api in ("engine", "torch"):
        assert by[("mpi", api)]["speedup"] == pytest.approx(1.0)
        assert by[("bls:2", api)]["share_of_ideal"] > 0
    assert by[("bls:2", "engine")]["max_lag"] >= 1
    assert by[("bls:2", "torch")]["makespan_ratio_to_engine"] > 0
    assert "share_of_ideal" in table and "makespan_ratio_to_engine" in table


def test_count_matrices_vary_every_exchange_with_about_equal_bytes():
    fixed = _count_matrices(3, 100, 6, vary=False, seed=1)
    assert (fixed == 100).all()
    varied = _count_matrices(3, 100, 50, vary=True, seed=1)
    assert varied.shape == (50, 3, 3)
    assert all((varied[i] != varied[i - 1]).any() for i in range(1, 50))
    assert np.abs(varied - 100).max() <= 4  # a few rows per peer
    assert (varied == _count_matrices(3, 100, 50, vary=True, seed=1)).all()  # every rank alike
    assert (_count_matrices(2, 1, 4, vary=True, seed=1) == 1).all()  # nothing to vary


def test_collective_names_and_apis():
    assert CollectiveSpec.parse("native").label == "native"
    with pytest.raises(argparse.ArgumentTypeError):
        CollectiveSpec.parse("native:2")
    assert _api_list("engine,torch") == ["engine", "torch"]
    with pytest.raises(argparse.ArgumentTypeError):
        _api_list("nccl")
    specs = [CollectiveSpec.parse(t) for t in ("native", "bls:1", "floor")]
    assert _jobs(specs, ["engine", "torch"]) == [
        (specs[0], NATIVE_API),
        (specs[1], "engine"),
        (specs[1], "torch"),
        (specs[2], "torch"),  # the dispatch floor exists only through torch
    ]
    args = build_parser().parse_args(["--bind", "core", "--api", "torch", "--vary-counts"])
    assert (args.bind, args.api, args.vary_counts) == ("core", ["torch"], True)


def test_summary_ratios_within_the_same_api():
    args = build_parser().parse_args(["--mode", "schedule"])
    rows = []
    for api, mpi, bls in (("engine", 2.0, 1.0), ("torch", 3.0, 1.2)):
        for label, makespan in (("mpi", mpi), ("bls:4", bls)):
            for rep, jitter in enumerate((0.0, 0.1, -0.1)):
                rows.append(
                    {
                        "collective": label,
                        "api": api,
                        "schedule": "rotating",
                        "makespan_s": makespan + jitter,
                        "ideal_speedup": 2.0,
                        "max_lag": 3 + rep,
                        "rep": rep,
                    }
                )
    by = {(s["collective"], s["api"]): s for s in _summarise(rows, args)}
    assert by[("bls:4", "engine")]["speedup"] == pytest.approx(2.0)
    assert by[("bls:4", "torch")]["speedup"] == pytest.approx(2.5)
    assert by[("bls:4", "torch")]["share_of_ideal"] == pytest.approx(1.25)
    assert by[("bls:4", "torch")]["makespan_ratio_to_engine"] == pytest.approx(1.2)
    assert by[("bls:4", "engine")]["max_lag"] == 5 and by[("mpi", "torch")]["reps"] == 3


def test_received_data_check():
    counts = _count_matrices(3, 5, 1, vary=True, seed=2)[0]
    rank = 1
    pieces = []
    for p in range(3):
        start = int(counts[p, :rank].sum())
        pieces.append(np.arange(start, start + counts[p, rank], dtype=np.float32) + p)
    recv = np.concatenate(pieces)
    _check_received(recv, counts, rank, "test")
    recv[-1] += 1
    with pytest.raises(RuntimeError, match="wrong data from rank 2"):
        _check_received(recv, counts, rank, "test")
