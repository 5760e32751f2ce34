"""The distributed inference loop: bit-identical predictions on every collective and lag bound.

Inference reads frozen weights and independent batches, so the lag bound changes only
*when* a rank computes, never *what*: predictions must agree bit for bit across gloo, mpi
and bls with any L, for every placement plan, and with the single-process oracle run on
the same batch slice. Against the oracle on the whole batch they agree to float tolerance
(matrix products over a different number of rows may round differently; see
``bls_dlrm.model.dlrm``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bls_dlrm.data import BatchStore, generate_synthetic
from bls_dlrm.infer import ConfigError, RunConfig, batch_slices, load_config
from bls_dlrm.model import DLRM, get_config
from bls_dlrm.records import read_run

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


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_predictions_bit_identical_across_collectives_and_lag_bounds(
    ranks, dataset, mpirun, tmp_path
):
    out = tmp_path / "out"
    mpirun.argv(
        ranks, ["python", str(SCRIPTS / "infer_matrix.py"), str(dataset), str(out)], timeout=300
    )
    whole, store, model = _oracle(dataset)
    slices = batch_slices(BATCH, ranks)
    for plan_dir in sorted(out.iterdir()):
        runs = sorted(p for p in plan_dir.iterdir() if p.is_dir())
        assert len(runs) == 7, runs
        reference = [np.load(runs[0] / f"preds_rank{r}.npy") for r in range(ranks)]
        ref_sums = [
            [it.checksum for it in rank.iterations] for rank in read_run(runs[0] / "logs").ranks
        ]
        for run_dir in runs:
            preds = [np.load(run_dir / f"preds_rank{r}.npy") for r in range(ranks)]
            for r in range(ranks):
                # bit for bit, not approximately
                assert preds[r].tobytes() == reference[r].tobytes(), (
                    plan_dir.name,
                    run_dir.name,
                    r,
                )
            log = read_run(run_dir / "logs")
            assert [[it.checksum for it in rank.iterations] for rank in log.ranks] == ref_sums
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
