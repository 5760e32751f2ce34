"""Synthetic generator and batch store: reproducibility, distributions, manifest checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bls_dlrm.data import (
    BatchStore,
    DatasetError,
    MissingFileError,
    affine_permutation,
    generate_synthetic,
    zipf_pmf,
    zipf_ranks,
)
from bls_dlrm.data.synthetic import TableSpec, draw_lengths, table_alphas
from bls_dlrm.model import DLRM, get_config

TINY = get_config("tiny")


def shas(path):
    manifest = json.loads((path / "manifest.json").read_text())
    return {name: meta["sha256"] for name, meta in manifest["files"].items()}


@pytest.fixture(scope="module")
def zipf_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "zipf"
    return generate_synthetic(
        out, TINY, 4, 32, seed=5, index_dist="zipf", pooling="uniform", pooling_k=4
    )


def test_same_seed_same_files_other_seed_differs(tmp_path, zipf_data):
    kwargs = {"index_dist": "zipf", "pooling": "uniform", "pooling_k": 4}
    again = generate_synthetic(tmp_path / "again", TINY, 4, 32, seed=5, **kwargs)
    assert shas(again) == shas(zipf_data)
    assert (again / "manifest.json").read_bytes() == (zipf_data / "manifest.json").read_bytes()
    other = generate_synthetic(tmp_path / "other", TINY, 4, 32, seed=6, **kwargs)
    assert shas(other)["indices.npy"] != shas(zipf_data)["indices.npy"]
    assert shas(other)["dense.npy"] != shas(zipf_data)["dense.npy"]


def test_prefix_batches_do_not_depend_on_count(tmp_path, zipf_data):
    kwargs = {"index_dist": "zipf", "pooling": "uniform", "pooling_k": 4}
    short = BatchStore(generate_synthetic(tmp_path / "s", TINY, 2, 32, seed=5, **kwargs))
    full = BatchStore(zipf_data)
    for i in range(2):
        assert torch.equal(short[i].dense, full[i].dense)
        assert short[i].sparse.equal(full[i].sparse)


def test_store_round_trip_feeds_the_model(zipf_data):
    store = BatchStore(zipf_data, expect_config=TINY)
    assert len(store) == 4 and store.batch_size == 32 and not store.has_labels
    batch = store[3]
    assert batch.dense.shape == (32, 13) and batch.dense.dtype == torch.float32
    assert batch.labels is None
    assert batch.sparse.num_tables == 4 and batch.sparse.batch_size == 32
    for t, rows in enumerate(TINY.rows):
        idx, _ = batch.sparse.table(t)
        assert idx.min() >= 0 and idx.max() < rows
    out = DLRM(TINY)(batch.dense, batch.sparse)
    assert out.shape == (32,)
    assert sum(1 for _ in store) == 4
    with pytest.raises(IndexError):
        store.batch(4)


def test_zipf_frequencies_match_truncated_theory():
    rng = np.random.default_rng(0)
    n, size = 5000, 200_000
    for alpha in (0.6, 1.0, 1.05, 2.0):
        ranks = zipf_ranks(rng, n, alpha, size)
        assert ranks.min() >= 1 and ranks.max() <= n
        top = np.arange(1, 11)
        p = zipf_pmf(n, alpha, top)
        freq = np.bincount(ranks, minlength=n + 1)[top] / size
        se = np.sqrt(p * (1 - p) / size)
        assert np.all(np.abs(freq - p) < 5 * se), (alpha, freq, p)
        # the tail's total mass too (catches a sampler that is right only at the head)
        tail = (ranks > 100).mean()
        p_tail = 1 - zipf_pmf(n, alpha, np.arange(1, 101)).sum()
        assert abs(tail - p_tail) < 5 * np.sqrt(p_tail * (1 - p_tail) / size)


def test_zipf_on_a_10m_row_table_is_fast_and_right_at_the_head():
    rng = np.random.default_rng(1)
    ranks = zipf_ranks(rng, 10_000_000, 1.05, 100_000)
    assert ranks.max() <= 10_000_000
    h = np.sum(np.arange(1, 10_000_001, dtype=np.float64) ** -1.05)
    p1 = 1 / h
    assert abs((ranks == 1).mean() - p1) < 5 * np.sqrt(p1 * (1 - p1) / 100_000)


def test_zipf_rows_are_ranks_through_a_bijection(zipf_data):
    store = BatchStore(zipf_data)
    table = store.manifest["params"]["tables"][3]
    n = TINY.rows[3]
    a, c = table["permutation"]
    assert sorted((a * np.arange(n) + c) % n) == list(range(n))
    rows = np.concatenate([store[i].sparse.table(3)[0].numpy() for i in range(len(store))])
    ranks = (rows - c) * pow(a, -1, n) % n + 1
    assert np.bincount(ranks).argmax() == 1  # the hottest row is rank 1
    for n in (1, 2, 7, 1000):
        a, c = affine_permutation(np.random.default_rng(n), n)
        assert sorted((a * np.arange(n) + c) % n) == list(range(n))


@pytest.mark.parametrize(
    ("pooling", "k", "lo", "hi"),
    [("fixed", 3, 3, 3), ("uniform", 5, 1, 5), ("heavy", 2, 1, 40)],
)
def test_pooling_lengths_in_range(pooling, k, lo, hi):
    spec = TableSpec("uniform", 1.05, pooling, k, None, 1.0)
    lengths = draw_lengths(np.random.default_rng(0), spec, 20_000)
    assert lengths.dtype == np.int32
    assert lengths.min() == lo and lengths.max() <= hi
    if pooling == "uniform":
        assert set(np.unique(lengths)) == set(range(1, k + 1))
    if pooling == "heavy":
        assert np.median(lengths) == k and lengths.max() > 4 * k  # a real tail


def test_per_table_overrides(tmp_path):
    path = generate_synthetic(
        tmp_path / "d",
        TINY,
        2,
        16,
        seed=0,
        pooling_k=2,
        per_table={1: {"pooling": "fixed", "pooling_k": 7}, 2: {"index_dist": "zipf"}},
    )
    batch = BatchStore(path)[1]
    lengths = batch.sparse.lengths()
    assert torch.all(lengths[0] == 2) and torch.all(lengths[1] == 7)
    tables = BatchStore(path).manifest["params"]["tables"]
    assert tables[2]["index_dist"] == "zipf" and tables[0]["index_dist"] == "uniform"
    with pytest.raises(ValueError, match=r"per_table\[1\]"):
        generate_synthetic(tmp_path / "e", TINY, 1, 4, per_table={1: {"pooling_kk": 2}})
    with pytest.raises(ValueError, match=r"per_table\[0\]: pooling_k"):
        generate_synthetic(tmp_path / "e", TINY, 1, 4, per_table={0: {"pooling_k": 0}})
    with pytest.raises(ValueError, match="index_dist"):
        generate_synthetic(tmp_path / "e", TINY, 1, 4, index_dist="normal")
    assert not (tmp_path / "e").exists() and not (tmp_path / "e.partial").exists()


def test_bursty_pooling_draws_one_factor_per_table_and_batch(tmp_path):
    kwargs = {"pooling": "bursty", "pooling_k": 4, "pooling_sigma": 1.0, "pooling_max": 60}
    path = generate_synthetic(tmp_path / "b", TINY, 40, 16, seed=3, **kwargs)
    store = BatchStore(path)
    factors = np.empty((len(store), TINY.num_tables), dtype=np.int64)
    for b in range(len(store)):
        lengths = store.numpy_batch(b)[1]  # (tables, batch)
        assert np.all(lengths == lengths[:, :1])  # one size for a table's bags in a batch
        factors[b] = lengths[:, 0]
    assert factors.min() >= 1 and factors.max() <= 60
    assert factors.max() >= 3 * np.median(factors)  # heavy tail across batches
    for t in range(TINY.num_tables):  # each table varies on its own, batch to batch
        assert len(np.unique(factors[:, t])) > 3
    assert not np.array_equal(factors[:, 0], factors[:, 1])
    # reproducible, and the manifest keeps the hash machinery
    again = generate_synthetic(tmp_path / "again", TINY, 40, 16, seed=3, **kwargs)
    assert shas(again) == shas(path)
    BatchStore(again, verify=True)
    assert store.manifest["params"]["tables"][0]["pooling"] == "bursty"
    with pytest.raises(ValueError, match="pooling_max"):
        generate_synthetic(
            tmp_path / "bad", TINY, 1, 4, pooling="bursty", pooling_k=5, pooling_max=2
        )


def test_zipf_exponent_per_table_from_a_list_or_a_seeded_range(tmp_path):
    listed = generate_synthetic(
        tmp_path / "l", TINY, 1, 8, index_dist="zipf", zipf_alpha=[0.5, 1.0, 1.5, 2.0]
    )
    tables = BatchStore(listed).manifest["params"]["tables"]
    assert [t["zipf_alpha"] for t in tables] == [0.5, 1.0, 1.5, 2.0]
    ranged = generate_synthetic(
        tmp_path / "r", TINY, 1, 8, seed=4, index_dist="zipf", zipf_alpha_range=(0.8, 1.6)
    )
    alphas = [t["zipf_alpha"] for t in BatchStore(ranged).manifest["params"]["tables"]]
    assert all(0.8 <= a <= 1.6 for a in alphas) and len(set(alphas)) == len(alphas)
    assert alphas == table_alphas(TINY.num_tables, 4, 1.05, (0.8, 1.6))
    assert table_alphas(TINY.num_tables, 5, 1.05, (0.8, 1.6)) != alphas
    # the per-table exponent is what the indices follow: the hottest row's share grows
    rng = np.random.default_rng(0)
    head = [np.mean(zipf_ranks(rng, 1000, a, 50_000) == 1) for a in (0.5, 2.0)]
    assert head[1] > 5 * head[0]
    with pytest.raises(ValueError, match="zipf_alpha has 2 exponents"):
        generate_synthetic(tmp_path / "x", TINY, 1, 4, index_dist="zipf", zipf_alpha=[1.0, 2.0])
    with pytest.raises(ValueError, match="zipf_alpha_range"):
        generate_synthetic(tmp_path / "x", TINY, 1, 4, zipf_alpha_range=(2.0, 1.0))


def test_tampered_file_is_named(tmp_path):
    path = generate_synthetic(tmp_path / "d", TINY, 2, 16, seed=0)
    data = bytearray((path / "indices.npy").read_bytes())
    data[-1] ^= 1
    (path / "indices.npy").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"indices\.npy: sha256"):
        BatchStore(path)
    BatchStore(path, verify=False)  # sizes still match: only hashing can tell
    intact = (path / "dense.npy").read_bytes()
    (path / "dense.npy").write_bytes(intact[:-4])
    with pytest.raises(DatasetError, match=r"dense\.npy: .* bytes"):
        BatchStore(path, verify=False)
    (path / "dense.npy").write_bytes(intact)
    (path / "lengths.npy").unlink()
    with pytest.raises(MissingFileError, match=r"lengths\.npy"):
        BatchStore(path, verify=False)


def test_other_config_is_rejected(tmp_path):
    path = generate_synthetic(tmp_path / "d", TINY, 1, 8, seed=0)
    with pytest.raises(DatasetError, match=r"config\.name"):
        BatchStore(path, expect_config=get_config("kaggle", max_rows=100))
    renamed = get_config("tiny", table_rows=[100, 250, 400, 1000])
    with pytest.raises(DatasetError, match=r"config\.table_rows.*table 2: 500 rows"):
        BatchStore(path, expect_config=renamed)
    with pytest.raises(MissingFileError, match="manifest"):
        BatchStore(tmp_path)
    with pytest.raises(FileExistsError):
        generate_synthetic(path, TINY, 1, 8)
    generate_synthetic(path, TINY, 1, 8, seed=1, overwrite=True)
    assert BatchStore(path).manifest["seed"] == 1


def test_format_version_mismatch_names_the_key(tmp_path):
    path = generate_synthetic(tmp_path / "d", TINY, 1, 8, seed=0)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="format_version"):
        BatchStore(path)
