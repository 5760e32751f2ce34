"""The open serving loop (`bls-dlrm serve`) on 2 ranks: schedule, start times, predictions.

Every rank derives the arrival schedule and the batches from the seed alone, so the logs
of all ranks, all series and two launches agree on every batch's close time and size; no
batch starts before it closes; and a batch holds the same samples as the closed loop's
batch of the same number when queries are whole dataset batches, so its predictions are
bit-identical to ``bls-dlrm infer``'s. Bad serve configs stop before any MPI work.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import MPIRun

from bls_dlrm.data import generate_synthetic
from bls_dlrm.logs.reading import RunLog, read_run
from bls_dlrm.run.serving import QuerySizes, ServeSpec, schedule
from bls_dlrm.series import Series

EXE = str(Path(sys.executable).parent / "bls-dlrm")
RANKS = 2
BATCH = 32  # samples per stored dataset batch
DURATION = 1.0
WARMUP = 0.1
SEED = 7
#: the variable-size launch: two rates, queries of 1..64 samples batched up to 64
RATES = [200.0, 400.0]
SIZES = {"kind": "lognormal", "median": 12, "sigma": 0.9, "max": 48}
MAX_BATCH = 64
MAX_WAIT = 0.004
#: the whole-batch launch: one query = one stored batch = one served batch
WHOLE_RATE = 80.0


def _series() -> list[str]:
    """gloo, mpi (once its backend "mpisync" is registered), bls with L = 0 and 2."""
    import torch.distributed as dist

    import bls_dlrm.comm  # noqa: F401  (registers the backends)

    mpi = ["mpi"] if "mpisync" in dist.Backend.backend_list else []
    return ["gloo", *mpi, "bls:0", "bls:2"]


def _labels(series: list[str]) -> list[str]:
    return [Series.parse(text).folder for text in series]


def _write_config(path: Path, dataset: Path, series: list[str], serve: dict) -> Path:
    base = {
        "serve": {
            "reference": "gloo",
            "calibrate_iterations": 20,
            "duration_s": DURATION,
            "warmup_s": WARMUP,
            "seed": SEED,
        }
    }
    data = {
        "dataset": str(dataset),
        "model": {"name": "tiny"},
        "series": series,
        "binding": "none",
        "timeout_s": 60,
        "serve": base["serve"] | serve,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def _serve(runner: MPIRun, config: Path, out: Path, *extra: str) -> Path:
    argv = [EXE, "serve", "--config", str(config), "--out", str(out), *extra]
    runner.argv(RANKS, argv, timeout=120)
    return out


def _spec(header_serve: dict) -> ServeSpec:
    """The ServeSpec a run logged in its header (``config["serve"]``)."""
    fields = {k: header_serve[k] for k in ServeSpec.__dataclass_fields__}
    return ServeSpec(**(fields | {"sizes": QuerySizes(**header_serve["sizes"])}))


def _closes(log: RunLog) -> list[np.ndarray]:
    """Per rank: every batch's close time relative to the run's start instant."""
    out = []
    for rank in log.ranks:
        t_origin = rank.header.t_origin
        out.append(np.array([it.t_close for it in rank.iterations]) - t_origin)
    return out


# -- launches (module scope: each runs once for the tests that read it) ------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "tiny"
    generate_synthetic(
        out, "tiny", num_batches=4, batch_size=BATCH, seed=5, index_dist="zipf",
        pooling="uniform", pooling_k=4,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def varied(tmp_path_factory, dataset) -> Path:
    """Two rates, two series, query sizes 1..48 samples batched up to 64."""
    tmp = tmp_path_factory.mktemp("varied")
    serve = {"rates": RATES, "sizes": SIZES, "max_batch": MAX_BATCH, "max_wait_s": MAX_WAIT}
    config = _write_config(tmp / "run.yaml", dataset, ["gloo", "bls:2"], serve)
    return _serve(MPIRun(tmp), config, tmp / "out")


@pytest.fixture(scope="module")
def varied_again(tmp_path_factory, dataset) -> Path:
    """The first rate of ``varied`` again, same seed, another launch and series."""
    tmp = tmp_path_factory.mktemp("varied_again")
    serve = {"rates": RATES[:1], "sizes": SIZES, "max_batch": MAX_BATCH, "max_wait_s": MAX_WAIT}
    config = _write_config(tmp / "run.yaml", dataset, ["bls:1"], serve)
    return _serve(MPIRun(tmp), config, tmp / "out")


@pytest.fixture(scope="module")
def whole(tmp_path_factory, dataset) -> Path:
    """Every series; a query is a whole stored batch and fills a served batch alone."""
    tmp = tmp_path_factory.mktemp("whole")
    serve = {
        "rates": [WHOLE_RATE],
        "sizes": {"kind": "constant", "samples": BATCH},
        "max_batch": BATCH,
        "max_wait_s": MAX_WAIT,
    }
    config = _write_config(tmp / "run.yaml", dataset, _series(), serve)
    return _serve(MPIRun(tmp), config, tmp / "out")


# -- 1. the schedule ---------------------------------------------------------------------


@pytest.mark.mpi
def test_schedule_is_the_same_on_every_rank_series_and_launch(varied, varied_again):
    first_launch: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    num_queries: dict[int, int] = {}
    for k, rate in enumerate(RATES):
        per_series = []
        for label in _labels(["gloo", "bls:2"]):
            log = read_run(varied / label / f"load~{k}")
            assert log.world_size == RANKS
            serve = log.header.config["serve"]
            spec = _spec(serve)
            assert (spec.rate_qps, spec.seed, spec.max_batch) == (rate, SEED, MAX_BATCH)
            sched = schedule(spec)
            n = sched.num_batches
            assert serve["batches"] == n > 10
            num_queries[k] = sched.num_queries
            origin0 = log.ranks[0].header.t_origin
            for rank in log.ranks:
                assert rank.header.config["serve"] == serve  # same spec on every rank
                # each rank's own start instant (the end of one barrier): one host's clock
                assert abs(rank.header.t_origin - origin0) < 0.05
                assert [it.iteration for it in rank.iterations] == list(range(n))
                t_origin = rank.header.t_origin
                # bit for bit: the loop's close instant is the start plus the schedule's
                assert [it.t_close for it in rank.iterations] == [
                    t_origin + float(c) for c in sched.close
                ]
                got = np.array([it.batch_samples for it in rank.iterations])
                assert np.array_equal(got, sched.batch_samples())
            # the ranks' slices make up each batch
            slices = np.array([[it.samples for it in rank.iterations] for rank in log.ranks])
            assert np.array_equal(slices.sum(axis=0), sched.batch_samples())
            per_series.append((_closes(log)[0], sched.batch_samples()))
        for closes, sizes in per_series[1:]:
            assert np.array_equal(closes, per_series[0][0])
            assert np.array_equal(sizes, per_series[0][1])
        first_launch[k] = per_series[0]

    # the batcher really batched: sizes vary, some batches hold several queries
    sizes = first_launch[1][1]
    assert len(set(sizes.tolist())) > 3 and sizes.max() <= MAX_BATCH
    assert len(sizes) < num_queries[1]

    # another launch with the same seed: the same schedule
    again = read_run(varied_again / "bls-L1" / "load~0")
    assert again.header.t_origin != read_run(varied / "gloo" / "load~0").header.t_origin
    for closes in _closes(again):
        np.testing.assert_allclose(closes, first_launch[0][0], rtol=0, atol=1e-6)
    for rank in again.ranks:
        got = np.array([it.batch_samples for it in rank.iterations])
        assert np.array_equal(got, first_launch[0][1])


@pytest.mark.mpi
def test_logged_batches_obey_the_batcher(varied):
    """Independent of serving.form_batches: each batch's queries (queries.parquet) arrived
    by its close, it closed within max_wait of its first arrival, and it fits max_batch."""
    for k in range(len(RATES)):
        run_dir = varied / "gloo" / f"load~{k}"
        log = read_run(run_dir)
        its = log.ranks[0].iterations
        close = np.array([it.t_close for it in its]) - log.header.t_origin
        sizes = np.array([it.batch_samples for it in its])
        queries = pd.read_parquet(run_dir / "queries.parquet")
        assert queries["batch"].is_monotonic_increasing
        assert sorted(set(queries["batch"])) == list(range(len(its)))
        per_batch = queries.groupby("batch")
        assert np.array_equal(per_batch["samples"].sum().to_numpy(), sizes)
        first_arrival = per_batch["arrival_s"].min().to_numpy()
        last_arrival = per_batch["arrival_s"].max().to_numpy()
        assert (sizes <= MAX_BATCH).all()
        assert (last_arrival <= close + 1e-6).all()
        assert (close <= first_arrival + MAX_WAIT + 1e-6).all()
        assert (np.diff(close) >= 0).all()
        # a batch that closed early did so because it was full or the next query did not fit
        early = np.flatnonzero(close < first_arrival + MAX_WAIT - 1e-6)
        nxt = per_batch["samples"].first().to_numpy()
        for b in early[early < len(its) - 1]:
            assert sizes[b] == MAX_BATCH or sizes[b] + nxt[b + 1] > MAX_BATCH, b


# -- 2. no batch starts before it closes ---------------------------------------------------


@pytest.mark.mpi
def test_no_batch_starts_before_it_closes(varied, whole):
    runs = [varied / label / f"load~{k}" for label in ("gloo", "bls-L2") for k in (0, 1)]
    runs += [whole / label / "load~0" for label in _labels(_series())]
    for run_dir in runs:
        for rank in read_run(run_dir).ranks:
            for it in rank.iterations:
                assert it.t_start >= it.t_close, (run_dir, rank.header.rank, it.iteration)
                assert it.t_done >= it.t_start


# -- 3. predictions ----------------------------------------------------------------------


def _checksums(log: RunLog) -> list[dict[int, str]]:
    return [{it.iteration: it.checksum for it in rank.iterations} for rank in log.ranks]


@pytest.mark.mpi
def test_predictions_equal_the_closed_loops(whole, dataset, tmp_path, mpirun):
    labels = _labels(_series())
    served = {label: read_run(whole / label / "load~0") for label in labels}
    reference = _checksums(served["gloo"])
    n = served["gloo"].header.config["serve"]["batches"]
    assert all(len(sums) == n for sums in reference)
    assert len(set(reference[0].values())) > 1  # not one checksum for every batch
    for label in labels:  # bit-identical across collectives and lag bounds
        assert _checksums(served[label]) == reference, label
        for rank in served[label].ranks:
            assert {it.batch_samples for it in rank.iterations} == {BATCH}

    # the closed loop over the same batches (iteration i reads stored batch i mod 4)
    out = tmp_path / "infer"
    argv = [EXE, "infer", "--out", str(out)]
    for kv in (
        f"dataset={dataset}",
        "model.name=tiny",
        "collective=gloo",
        "binding=none",
        "warmup=1",
        f"iterations={n + 2}",
    ):
        argv += ["--set", kv]
    mpirun.argv(RANKS, argv, timeout=120)
    closed = _checksums(read_run(out))
    for r in range(RANKS):
        common = sorted(set(closed[r]) & set(reference[r]))
        assert common == list(range(n))
        assert [closed[r][i] for i in common] == [reference[r][i] for i in common], r


# -- 4. the report -----------------------------------------------------------------------


@pytest.mark.mpi
def test_report_and_query_latencies(varied):
    report = json.loads((varied / "serve.json").read_text())
    labels = _labels(["gloo", "bls:2"])
    assert sorted(report["series"]) == sorted(labels)
    assert report["ranks"] == RANKS
    assert report["calibration"]["series"] == "gloo"
    assert report["calibration"]["capacity_qps"] > 0
    runs = report["runs"]
    keys = sorted((run["load_index"], run["series"]) for run in runs)
    assert keys == sorted((k, label) for k in range(len(RATES)) for label in labels)
    for run in runs:
        k = run["load_index"]
        assert run["rate_qps"] == RATES[k]
        for key in ("p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "mean_ms"):
            assert math.isfinite(run[key]) and run[key] > 0, (key, run)
        assert run["p50_ms"] <= run["p90_ms"] <= run["p99_ms"] <= run["p99_9_ms"]
        assert isinstance(run["stable"], bool) and run["backlog_batches"] >= 0

        run_dir = varied / run["series"] / f"load~{k}"
        log = read_run(run_dir)
        sched = schedule(_spec(log.header.config["serve"]))
        assert run["batches"] == sched.num_batches
        queries = pd.read_parquet(run_dir / "queries.parquet")
        assert len(queries) == sched.num_queries
        assert np.array_equal(queries["query"], np.arange(sched.num_queries))
        assert np.array_equal(queries["arrival_s"], sched.arrival)
        assert np.array_equal(queries["samples"], sched.size)
        assert np.array_equal(queries["warmup"], sched.arrival < WARMUP)
        assert run["queries"] == int((~queries["warmup"]).sum())
        lat = queries["latency_s"].to_numpy()
        assert (lat > 0).all()
        # a query is not done before its batch closed, nor before every rank finished it
        batch = queries["batch"].to_numpy()
        assert (lat >= sched.close[batch] - sched.arrival).all()
        # each rank's times since its own start instant
        done = np.array(
            [[it.t_done - rank.header.t_origin for it in rank.iterations] for rank in log.ranks]
        )
        last = done.max(axis=0)[batch] - sched.arrival
        assert (lat <= last + 1e-6).all()
        measured = lat[~queries["warmup"].to_numpy()]
        assert run["p99_ms"] == pytest.approx(np.percentile(measured, 99) * 1e3)


# -- 5. capacity ---------------------------------------------------------------------------


@pytest.mark.mpi
def test_find_capacity_writes_a_search_per_series(dataset, tmp_path, mpirun):
    serve = {
        "sizes": {"kind": "constant", "samples": 8},
        "max_batch": BATCH,
        "max_wait_s": MAX_WAIT,
        "capacity": {"probes": 2},
    }
    config = _write_config(tmp_path / "run.yaml", dataset, ["gloo", "bls:2"], serve)
    out = _serve(mpirun, config, tmp_path / "out", "--find-capacity", "--slo-ms", "20")
    report = json.loads((out / "serve.json").read_text())
    assert report["runs"] == []  # no rates or loads: only the search
    labels = _labels(["gloo", "bls:2"])
    assert sorted(report["capacity"]) == sorted(labels)
    for label in labels:
        found = report["capacity"][label]
        probes = found["probes"]
        assert 1 <= len(probes) <= 2, (label, probes)
        assert found["capacity_qps"] is None or found["capacity_qps"] > 0
        assert found["slo_ms"] == 20
        for k, probe in enumerate(probes):
            assert probe["series"] == label and probe["capacity_probe"] == k
            assert probe["rate_qps"] > 0 and isinstance(probe["passed"], bool)
            run_dir = out / label / f"capacity~{k}"
            assert (run_dir / "queries.parquet").is_file()
            assert read_run(run_dir).header.config["serve"]["rate_qps"] == probe["rate_qps"]
        passed = [p["rate_qps"] for p in probes if p["passed"]]
        assert found["capacity_qps"] == (max(passed) if passed else None)
        if len(probes) == 1:  # a single probe: the top of the interval passed
            assert probes[0]["passed"]


# -- 6. bad configs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "pattern"),
    [
        (["serve.sizes={kind: poisson}"], r"serve\.sizes\.kind: 'poisson'"),
        (["serve.loads=[0.5]"], r"rates.*loads"),  # rates come from the file
        (["serve.sizes={kind: constant, samples: 64}"], r"serve\.sizes: .*max_batch 32"),
        (["serve.sizes={kind: lognormal, median: 10, max: 40}"], r"serve\.sizes: .*max_batch"),
        (["serve.rates=null"], r"--rate, --loads or --find-capacity"),
        (["serve.rate=[3]"], r"serve\.rate\b"),
        (["serve.rates=[-1]"], r"serve\.rates"),
        (["serve.reference=bls"], r"serve\.reference"),
        (["serve.calibrate_iterations=0"], r"serve\.calibrate_iterations"),
        (["serve.capacity={probes: 0}"], r"serve\.capacity\.probes"),
        (["serve.sizes={kind: lognormal, median: 10}"], r"serve\.sizes\.max: a lognormal"),
        (["serve.duration_s=0"], r"serve\.duration_s: must be > 0"),
        (["serve.max_wait_s=-1"], r"serve\.max_wait_s"),
    ],
)
def test_bad_serve_config_fails_before_mpi(sets, pattern, dataset, tmp_path, capsys):
    from bls_dlrm.run import serve

    serve_cfg = {"rates": [100.0], "sizes": {"kind": "constant", "samples": 8}, "max_batch": 32}
    config = _write_config(tmp_path / "run.yaml", dataset, ["gloo"], serve_cfg)
    out = tmp_path / "out"
    argv = ["--config", str(config), "--out", str(out)]
    for kv in sets:
        argv += ["--set", kv]
    assert serve.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bls-dlrm serve: bad config:")
    assert re.search(pattern, err), err
    assert not out.exists()


def test_cli_rejects_bad_serve_config_with_exit_2_without_mpi(dataset, tmp_path):
    """The command, not under mpiexec: exit 2, the key named, MPI never initialised."""
    config = _write_config(tmp_path / "run.yaml", dataset, ["gloo"], {"rates": [100.0]})
    out = tmp_path / "out"
    code = (
        "import sys\n"
        "from bls_dlrm.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('mpi' if 'mpi4py.MPI' in sys.modules else 'no-mpi')\n"
        "sys.exit(rc)\n"
    )
    argv = [sys.executable, "-c", code, "serve", "--config", str(config), "--out", str(out)]
    argv += ["--set", "serve.sizes={kind: poisson}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "serve.sizes" in result.stderr and "poisson" in result.stderr
    assert result.stdout.strip() == "no-mpi"
    assert not out.exists()


def test_rate_and_loads_flags_exclude_each_other(tmp_path):
    from bls_dlrm.run import serve

    args = serve.build_parser().parse_args(
        ["--out", str(tmp_path / "x"), "--set", "dataset=/x", "--rate", "100", "--loads", "0.5"]
    )
    with pytest.raises(serve.ConfigError, match="--rate and --loads"):
        serve.load_serve_config(args)
