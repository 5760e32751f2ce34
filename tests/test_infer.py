"""The distributed inference loop: bit-identical predictions on every collective and lag bound.

Inference reads frozen weights and independent batches, so the lag bound changes only
*when* a rank computes, never *what*: predictions must agree bit for bit across gloo, mpi
and bls with any L, for every placement plan, and with the single-process oracle run on
the same batch slice. Against the oracle on the whole batch they agree to float tolerance
(matrix products over a different number of rows may round differently; see
``bls_dlrm.model.dlrm``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bls_dlrm.data import BatchStore, generate_synthetic
from bls_dlrm.delays import DelaySpec
from bls_dlrm.logs.reading import read_run
from bls_dlrm.model import DLRM, get_config
from bls_dlrm.run.config import ConfigError, RunConfig, load_config
from bls_dlrm.run.pipeline import batch_slices, checksum
from bls_dlrm.series import Series

SCRIPTS = Path(__file__).parent / "mpi_scripts"
BATCH = 48
ITERATIONS = 6  # warmup 1 + 5 measured, as in infer_matrix.py


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "tiny"
    generate_synthetic(
        out,
        "tiny",
        num_batches=4,
        batch_size=BATCH,
        seed=5,
        index_dist="zipf",
        pooling="uniform",
        pooling_k=4,
    )
    return out


def _oracle(dataset: Path) -> tuple[list[np.ndarray], BatchStore, DLRM]:
    store = BatchStore(dataset)
    model = DLRM(get_config("tiny"))
    with torch.inference_mode():
        whole = [model(b.dense, b.sparse).numpy() for b in store]
    return whole, store, model


def _series() -> list[str]:
    """Every backend string; ``mpi`` (backend "mpisync") once it is registered."""
    import torch.distributed as dist

    import bls_dlrm.comm  # noqa: F401  (registers the backends)

    mpi = ["mpi"] if "mpisync" in dist.Backend.backend_list else []
    return ["gloo", *mpi, "bls:0", "bls:1", "bls:2", "bls:4", "bls:8"]


def test_mpi_series_backend_is_registered():
    import torch.distributed as dist

    import bls_dlrm.comm  # noqa: F401

    if "mpisync" not in dist.Backend.backend_list:
        pytest.skip("the synchronous MPI backend 'mpisync' is not registered yet")
    assert "mpi" in _series()


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_predictions_bit_identical_across_collectives_and_lag_bounds(
    ranks, dataset, mpirun, tmp_path
):
    """One launch per plan runs the loop for every backend string; checksums bit for bit."""
    out = tmp_path / "out"
    series = _series()
    labels = [Series.parse(text).folder for text in series]
    mpirun.argv(
        ranks,
        ["python", str(SCRIPTS / "infer_matrix.py"), str(dataset), str(out), *series],
        timeout=300,
    )
    whole, store, model = _oracle(dataset)
    slices = batch_slices(BATCH, ranks)
    orders = set()
    for plan_dir in sorted(out.iterdir()):
        assert sorted(p.name for p in (plan_dir / "logs").iterdir()) == sorted(labels)
        ref = labels[0]
        reference = [np.load(plan_dir / "preds" / ref / f"preds_rank{r}.npy") for r in range(ranks)]
        ref_log = read_run(plan_dir / "logs" / ref)
        ref_sums = [[it.checksum for it in rank.iterations] for rank in ref_log.ranks]
        assert len({c for sums in ref_sums for c in sums}) > 1  # not one checksum for all
        for label in labels:
            preds = [
                np.load(plan_dir / "preds" / label / f"preds_rank{r}.npy") for r in range(ranks)
            ]
            for r in range(ranks):
                # bit for bit, not approximately
                assert preds[r].tobytes() == reference[r].tobytes(), (plan_dir.name, label, r)
            log = read_run(plan_dir / "logs" / label)
            assert [[it.checksum for it in rank.iterations] for rank in log.ranks] == ref_sums
            header = log.ranks[0].header
            assert sorted(header.series_order) == sorted(labels)
            assert header.series_order[header.series_index] == label
            assert header.config["series_label"] == label
            orders.add(tuple(header.series_order))
            for rank in log.ranks:  # every rank ran the same order
                assert rank.header.series_order == header.series_order
        # the oracle: the same slice in one process is bit-identical; the whole batch is close
        with torch.inference_mode():
            for i in range(ITERATIONS):
                b = store.batch(i % len(store))
                for r, (lo, hi) in enumerate(slices):
                    got = reference[r][i]
                    mine = model(b.dense[lo:hi], b.sparse.slice(lo, hi)).numpy()
                    assert got.tobytes() == mine.tobytes(), (plan_dir.name, i, r)
                glued = np.concatenate([reference[r][i] for r in range(ranks)])
                np.testing.assert_allclose(glued, whole[i % len(store)], rtol=1e-5, atol=1e-6)
    assert len(orders) > 1  # the four repetitions ran the series in different orders


def test_checksum_is_blake2b_of_the_prediction_bytes():
    preds = torch.linspace(0.0, 1.0, 64, dtype=torch.float32)
    expected = hashlib.blake2b(preds.numpy().tobytes(), digest_size=16).hexdigest()
    assert checksum(preds) == expected
    changed = preds.clone()
    changed[17] = torch.nextafter(changed[17], torch.tensor(2.0))  # one ulp, one prediction
    assert checksum(changed) != checksum(preds)
    assert checksum(preds.clone()) == checksum(preds)


def test_logs_record_lag_and_waits(dataset, mpirun, tmp_path):
    """A rotating straggler with L = 4 lets fast ranks run ahead (lag > 1 is logged)."""
    out = tmp_path / "run"
    argv = [str(Path(sys.executable).parent / "bls-dlrm"), "infer", "--out", str(out)]
    for kv in (
        f"dataset={dataset}",
        "model.name=tiny",
        "collective=bls",
        "lag_bound=4",
        "delay.kind=straggler",
        "delay.size_s=0.01",
        "iterations=12",
        "warmup=1",
    ):
        argv += ["--set", kv]
    mpirun.argv(3, argv, timeout=120)
    log = read_run(out)
    lags = [it.lag for rank in log.ranks[:-1] for it in rank.iterations]
    assert max(lags) > 1
    assert all(it.lag <= 5 for rank in log.ranks for it in rank.iterations)  # L + 1 at most
    slow = log.ranks[-1].iterations
    assert all(it.delay_s >= 0.01 for it in slow)
    assert sum(it.wait_s for it in log.ranks[0].iterations) > 0


def test_batch_slices_cover_the_batch_evenly():
    assert batch_slices(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert batch_slices(8, 1) == [(0, 8)]
    with pytest.raises(ConfigError, match="smaller than"):
        batch_slices(3, 4)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["colective=bls"], "colective"),
        (["collective=nccl"], "collective"),
        (["collective=mpi", "lag_bound=2"], "lag_bound"),
        (["lag_bound=-1"], "lag_bound"),
        (["delay.kind=sometimes"], "delay"),
        (["model.name=huge"], "model"),
        (["model.rows=3"], "model.rows"),
        (["iterations=0"], "iterations"),
        (["series=[gloo, gloo]"], "series"),
        (["series=[bls]"], "series"),
        (["series=['mpi:2']"], "series"),
        (["series=[nccl]"], "series"),
        (["series=[]"], "series"),
        (["series=gloo"], "series"),
        (["shuffle_seed=-1"], "shuffle_seed"),
        (["binding=socket"], "binding"),
        (["delay.mode=spin"], "delay"),
        (["plan=scattered"], "plan"),
    ],
)
def test_bad_config_names_the_key(overrides, key, tmp_path):
    with pytest.raises(ConfigError, match=rf"^{key}"):
        load_config(None, ["dataset=/somewhere", *overrides])


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dataset: /d\ncollective: bls\nlag_bound: 2\nmodel: {name: tiny}\n")
    cfg = load_config(path, ["lag_bound=4", "delay.kind=rotating", "delay.size_s=0.01"])
    assert (cfg.lag_bound, cfg.delay["kind"], cfg.model.name) == (4, "rotating", "tiny")
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_cli_rejects_bad_config_before_mpi(tmp_path):
    exe = Path(sys.executable).parent / "bls-dlrm"
    result = subprocess.run(
        [str(exe), "infer", "--set", "dataset=/x", "--set", "lag_bond=3", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "lag_bond" in result.stderr
    assert not any(tmp_path.iterdir())


def test_series_parse_labels_and_backends():
    got = [Series.parse(t) for t in ("gloo", "mpi", "bls:0", "bls:4")]
    assert [s.folder for s in got] == ["gloo", "mpi", "bls-L0", "bls-L4"]
    assert [s.label for s in got] == ["gloo", "mpi", "bls L=0", "bls L=4"]
    assert [Series.parse(s.spec) for s in got] == got
    assert [s.backend for s in got] == ["gloo", "mpisync", "bls", "bls"]
    assert [s.lag_bound for s in got] == [0, 0, 0, 4]


def test_default_series_is_the_collective_and_lag_bound():
    cfg = load_config(None, ["dataset=/d", "collective=bls", "lag_bound=3"])
    assert cfg.series_list() == [Series("bls", 3)]
    assert load_config(None, ["dataset=/d", "collective=gloo"]).series_order() == [Series("gloo")]


def test_series_order_is_shuffled_by_seed_and_repetition():
    series = ["gloo", "mpi", "bls:0", "bls:1", "bls:4"]

    def order(seed, rep):
        cfg = RunConfig.from_dict(
            {"dataset": "/d", "series": series, "shuffle_seed": seed, "repetition": rep}
        )
        return [s.spec for s in cfg.series_order()]

    assert sorted(order(0, 0)) == sorted(series)
    assert order(3, 1) == order(3, 1) == order(4, 0)  # a function of seed + repetition
    rng = np.random.default_rng(5)
    assert order(5, 0) == [series[k] for k in rng.permutation(len(series))]
    assert len({tuple(order(0, rep)) for rep in range(6)}) > 1


def test_help_lists_run_keys_and_choices():
    exe = Path(sys.executable).parent / "bls-dlrm"
    result = subprocess.run(
        [str(exe), "infer", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    text = result.stdout
    for word in (
        "series",
        "bls:L",
        "collective",
        "gloo, mpi, bls",
        "lag_bound",
        "contiguous, balanced, unbalanced, hot",
        "straggler",
        "rotating",
        "busy, sleep",
        "shuffle_seed",
        "binding",
    ):
        assert word in text, word
    assert "see RunConfig" not in text


@pytest.mark.mpi
def test_delayed_iterations_take_at_least_the_delay_by_the_loop_clock(dataset, mpirun, tmp_path):
    """Both modes: the loop's own timestamps (not the injector's report) span the delay."""
    exe = str(Path(sys.executable).parent / "bls-dlrm")
    delay = {"kind": "random", "size_s": 0.02, "p": 0.5, "seed": 9}
    total = 9
    for mode in ("busy", "sleep"):
        out = tmp_path / mode
        argv = [exe, "infer", "--out", str(out)]
        for kv in (
            f"dataset={dataset}",
            "series=[gloo, 'bls:2']",
            f"delay={json.dumps(delay | {'mode': mode})}",
            "iterations=8",
            "warmup=1",
        ):
            argv += ["--set", kv]
        mpirun.argv(2, argv, timeout=120)
        schedule = DelaySpec.from_dict(delay).schedule(2, total)
        assert (schedule > 0).sum() >= 4
        for label in ("gloo", "bls-L2"):
            log = read_run(out / label)
            for r, rank in enumerate(log.ranks):
                assert rank.header.config["delay"]["mode"] == mode
                for it in rank.iterations:
                    scheduled = schedule[r, it.iteration]
                    assert it.t_lookup - it.t_start >= scheduled, (mode, label, r, it)
                    assert it.delay_s >= scheduled


@pytest.mark.mpi
def test_header_records_placement_and_single_series_writes_to_out(dataset, mpirun, tmp_path):
    out = tmp_path / "run"
    exe = str(Path(sys.executable).parent / "bls-dlrm")
    argv = [exe, "infer", "--out", str(out), "--set", f"dataset={dataset}"]
    argv += ["--set", "collective=gloo", "--set", "iterations=2", "--set", "binding=none"]
    mpirun.argv(2, argv, timeout=120)
    log = read_run(out)  # no series folder: the logs are in OUT itself
    for rank in log.ranks:
        h = rank.header
        assert (h.collective, h.series_order, h.series_index) == ("gloo", ["gloo"], 0)
        assert h.binding == "none" and h.cores and h.cores_per_rank == len(h.cores)
        assert h.cores == sorted(h.cores) and h.host


def test_hot_plan_puts_the_most_expensive_tables_together(tmp_path):
    from bls_dlrm.data import BatchStore
    from bls_dlrm.model import plan_shards
    from bls_dlrm.run.pipeline import table_costs

    path = tmp_path / "skewed"
    per_table = {0: {"pooling_k": 20}, 1: {"pooling_k": 12}}
    generate_synthetic(path, "tiny", 2, 16, seed=1, pooling="fixed", per_table=per_table)
    store = BatchStore(path)
    costs = table_costs(store)
    assert costs[:3] == [320.0, 192.0, 16.0]
    rows = get_config("tiny").rows
    plan = plan_shards(list(rows), 2, "hot", costs=costs)
    assert plan[0] == [0] and plan[1] == list(range(1, len(rows)))
    assert sorted(t for tables in plan for t in tables) == list(range(len(rows)))
