"""TorchRec inside BLS: the sharded DLRM's predictions, the pipelined loop, bad input.

Multi-rank cases run tests/torchrec_programs/predict.py on 2 ranks; every rank writes its
own files and the test compares them. Without the extra these tests skip, unless
BLS_DLRM_REQUIRE_TORCHREC is set (``make test`` sets it), where they fail.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("BLS_DLRM_REQUIRE_TORCHREC"):
    import torchrec  # noqa: F401 - make test installs the extra: its absence is a failure
else:
    pytest.importorskip("torchrec", reason="the TorchRec extra is not installed")

from bls_dlrm.data import BatchStore, generate_synthetic
from bls_dlrm.torchrec.kjt import (
    check_features,
    feature_keys,
    local_batch,
    rank_slice,
    to_kjt,
)
from bls_dlrm.torchrec.pipeline import steps_ahead

PROGRAM = Path(__file__).parent / "torchrec_programs" / "predict.py"
PYTHON = sys.executable


@pytest.fixture(scope="module")
def skewed_dataset(tmp_path_factory) -> Path:
    """6 batches of 48 samples, tiny model: Zipf indices, bursty pooling (empty bags too)."""
    out = tmp_path_factory.mktemp("torchrec") / "tiny-bursty"
    generate_synthetic(
        out,
        "tiny",
        num_batches=6,
        batch_size=48,
        seed=11,
        index_dist="zipf",
        pooling="bursty",
        pooling_k=3,
        pooling_sigma=1.5,
        pooling_max=40,
    )
    return out


def _load(out: Path, rank: int, name: str) -> np.ndarray:
    return np.load(out / f"rank{rank}-{name}.npy")


# -- single process: the KJT layout and the checks ---------------------------------------


def test_local_batch_is_the_rank_slice_of_our_batch(skewed_dataset):
    store = BatchStore(skewed_dataset)
    for i in range(len(store)):
        whole = store.batch(i)
        for rank in range(2):
            dense, kjt = local_batch(store, i, rank, 2)
            lo, hi = rank_slice(store.batch_size, rank, 2)
            assert kjt.keys() == feature_keys(store.num_tables)
            assert kjt.stride() == hi - lo
            np.testing.assert_array_equal(dense.numpy(), whole.dense[lo:hi].numpy())
            part = whole.sparse.slice(lo, hi)
            per_key = kjt.to_dict()
            for t in range(store.num_tables):
                idx, off = part.table(t)
                jt = per_key[f"f{t}"]
                np.testing.assert_array_equal(jt.values().numpy(), idx.numpy())
                np.testing.assert_array_equal(jt.lengths().numpy(), np.diff(off.numpy()))


def test_batch_not_divisible_by_ranks_is_one_clear_error():
    with pytest.raises(ValueError, match=r"47 is not divisible by 2 ranks.*multiple of 2"):
        rank_slice(47, 0, 2)


def test_kjt_keys_must_be_the_tables_features():
    keys = feature_keys(3)
    lengths = np.ones((3, 4), dtype=np.int32)
    good = to_kjt(lengths, np.arange(12), keys)
    check_features(good, keys, 4)
    with pytest.raises(ValueError, match=r"missing \['f2'\].*not a table's feature \['g'\]"):
        check_features(to_kjt(lengths, np.arange(12), ["f0", "f1", "g"]), keys, 4)
    with pytest.raises(ValueError, match="same keys in another order"):
        check_features(to_kjt(lengths, np.arange(12), ["f1", "f0", "f2"]), keys, 4)
    with pytest.raises(ValueError, match="holds 4 samples per key, the plan needs 8"):
        check_features(good, keys, 8)


def test_steps_ahead_counts_steps_a_peer_has_not_begun():
    # rank 0 starts a step every 1 s; rank 1 every 3 s
    fast, slow = np.arange(10.0), 3.0 * np.arange(10) + 0.5
    ahead = steps_ahead([fast, slow])
    # rank 0 starts step 9 at 9.0 while rank 1 is in step 2 (started 6.5): it has finished
    # steps 3..8, which rank 1 has not begun
    assert ahead == [6, 0]
    assert steps_ahead([np.arange(5.0), np.arange(5.0) + 0.1]) == [0, 0]


# -- two ranks ------------------------------------------------------------------------------


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("plan", ["[[0, 1], [2, 3]]", "[[2], [0, 1, 3]]"])
def test_predictions_bit_identical_across_backends_and_lag_bounds(
    mpirun, skewed_dataset, tmp_path, plan
):
    series = "gloo,mpisync,bls,gloo:0,gloo:4,mpisync:1,mpisync:4,bls:0,bls:1,bls:2,bls:4,bls:8"
    mpirun.argv(
        2,
        [PYTHON, str(PROGRAM), "--data", str(skewed_dataset), "--out", str(tmp_path),
         "--series", series, "--plan", plan],
        timeout=240,
    )  # fmt: skip
    names = [s.replace(":", "-L") for s in series.split(",")]
    batch = BatchStore(skewed_dataset).batch_size
    for rank in range(2):
        reference = _load(tmp_path, rank, "reference")
        assert reference.size == 6 * batch // 2
        for name in names:
            got = _load(tmp_path, rank, name)
            assert got.dtype == np.float32
            assert got.tobytes() == reference.tobytes(), f"rank {rank}: {name} differs"
    # The two ranks predict different samples, and together the whole batches.
    assert _load(tmp_path, 0, "bls-L4").tobytes() != _load(tmp_path, 1, "bls-L4").tobytes()
    full = _load(tmp_path, 0, "full").reshape(6, batch)
    halves = np.concatenate(
        [_load(tmp_path, r, "bls-L4").reshape(6, batch // 2) for r in range(2)], axis=1
    )
    # The unsharded model on the whole batch: its MLPs multiply 48 rows instead of 24, and
    # a matrix product over another row count may round differently: float tolerance.
    np.testing.assert_allclose(halves, full, rtol=1e-5, atol=1e-6)
    # The loop times as waiting exactly the batch's exchanges: splits; lengths, values; embeddings
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}-works.json").read_text()) == [1, 2, 1]
    # Pipeline depth: each stream L + 1 deep, a batch 3L steps from first post to result.
    info = json.loads((tmp_path / "rank0-bls-L4.json").read_text())
    assert max(info["in_flight"]) == 6 and len(info["start"]) == 6 + 3 * 4


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("lag_bound", [0, 2, 4])
def test_a_slow_rank_lags_up_to_the_lag_bound_and_no_further(
    mpirun, skewed_dataset, tmp_path, lag_bound
):
    """Rank 1 sleeps 40 ms in each of the first 12 of 24 steps; rank 0 runs ahead by
    exactly L (all three exchange streams take part: the first 12 steps are not drain)."""
    mpirun.argv(
        2,
        [PYTHON, str(PROGRAM), "--data", str(skewed_dataset), "--out", str(tmp_path),
         "--series", f"bls:{lag_bound}", "--delay-rank", "1", "--delay-s", "0.04",
         "--delay-steps", "12", "--batches", "24"],
        timeout=180,
    )  # fmt: skip
    starts = [
        json.loads((tmp_path / f"rank{r}-bls-L{lag_bound}.json").read_text())["start"]
        for r in range(2)
    ]
    ahead = steps_ahead(starts)
    assert ahead[0] == lag_bound, ahead  # the fast rank uses the whole bound
    # and no rank ever exceeds it; once its delays end, the slow rank may itself run up to
    # L ahead for a step when the other is descheduled, as the bound allows
    assert max(ahead) <= lag_bound, ahead
    waits = json.loads((tmp_path / f"rank0-bls-L{lag_bound}.json").read_text())["wait"]
    # The fast rank's first L steps never wait for the slow one.
    assert sum(waits[:lag_bound]) < 0.03, waits[:lag_bound]


@pytest.mark.mpi
@pytest.mark.slow
def test_kjt_with_wrong_keys_is_one_clear_error_before_any_exchange(
    mpirun, skewed_dataset, tmp_path
):
    mpirun.argv(
        2,
        [PYTHON, str(PROGRAM), "--data", str(skewed_dataset), "--out", str(tmp_path),
         "--bad-keys"],
        timeout=180,
    )  # fmt: skip
    for rank in range(2):
        message = (tmp_path / f"rank{rank}-error.txt").read_text()
        assert "KJT keys do not match the sharded tables' features" in message
        assert "missing ['f3']" in message and "['wrong']" in message
        # Nothing of the refused run was posted: the same group runs on, and right.
        after = _load(tmp_path, rank, "after-error")
        reference = _load(tmp_path, rank, "reference")
        assert after.tobytes() == reference[: after.size].tobytes()


# -- the benchmark command ----------------------------------------------------------------


@pytest.mark.mpi
@pytest.mark.slow
def test_bench_torchrec_runs_every_series_and_reports_the_lag(skewed_dataset, tmp_path):
    import pandas as pd

    from bls_dlrm.launch import run_command

    bls_dlrm = str(Path(PYTHON).parent / "bls-dlrm")
    delay = '{"kind": "rotating", "size_s": 0.004, "seed": 0, "mode": "sleep"}'
    result = run_command(
        [bls_dlrm, "bench-torchrec", "--workload", "rot", str(skewed_dataset), "hot", delay,
         "--series", "gloo,mpisync,bls:0,bls:3", "--repetitions", "2", "--iterations", "24",
         "--warmup", "2", "--bind", "none", "--out", str(tmp_path)],
        timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    summary = pd.read_csv(tmp_path / "torchrec.csv").set_index("series")
    assert list(summary.index) == ["gloo", "mpisync", "bls:0", "bls:3"]
    assert summary.predictions_identical.all()
    assert (summary.repetitions == 2).all()
    assert summary.loc["bls:3", "max_steps_ahead"] <= 3
    assert summary.loc["bls:0", "max_steps_ahead"] == 0
    # batches between first post and predictions: L + 1 per exchange stream, 3L + 1 in all
    assert summary.loc["bls:3", "max_in_flight"] == 3 * 3 + 1
    assert summary.loc["bls:3", "ideal_throughput"] > 0
    runs = pd.read_csv(tmp_path / "torchrec_runs.csv")
    # counterbalanced: the series' positions rotate between repetitions
    assert runs.groupby("series").position.nunique().eq(2).all()
    assert "| rot | bls:3 |" in (tmp_path / "torchrec.md").read_text()
