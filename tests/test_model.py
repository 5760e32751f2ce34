"""DLRM model: configs, deterministic weights, sharded composition vs the oracle, plans."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bls_dlrm.model import (
    DLRM,
    KAGGLE_ROWS,
    PLAN_KINDS,
    TERABYTE_ROWS,
    DenseModel,
    EmbeddingShard,
    SparseBatch,
    get_config,
    plan_shards,
    tril_indices,
)
from bls_dlrm.model.weights import CHUNK_ROWS, table_init


def random_batch(config, batch: int, seed: int = 0, max_pool: int = 3):
    """Dense features and bags of random sizes 0..max_pool (empty bags included)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_pool + 1, size=(config.num_tables, batch))
    indices = np.concatenate(
        [rng.integers(0, rows, lengths[t].sum()) for t, rows in enumerate(config.rows)]
    )
    dense = torch.from_numpy(rng.random((batch, config.num_dense), dtype=np.float32))
    return dense, SparseBatch.from_lengths(indices, lengths)


# -- configs ---------------------------------------------------------------------------------


def test_kaggle_top_width_is_367():
    cfg = get_config("kaggle")
    assert cfg.top_input_width == 367
    assert cfg.table_rows == KAGGLE_ROWS and cfg.num_tables == 26
    assert get_config("kaggle", interaction="cat").top_input_width == 16 * 27


def test_terabyte_config_is_capped():
    cfg = get_config("terabyte")
    assert max(cfg.table_rows) <= 40_000_000 and cfg.table_rows == TERABYTE_ROWS
    assert cfg.embedding_dim == 128 and cfg.bottom_mlp[-1] == 128
    assert get_config("terabyte", max_rows=1000).rows == tuple(min(r, 1000) for r in TERABYTE_ROWS)


@pytest.mark.parametrize(
    ("name", "overrides", "key"),
    [
        ("nope", {}, "nope"),
        ("kaggle", {"embeding_dim": 8}, "embeding_dim"),
        ("kaggle", {"max_rows": 0}, "max_rows"),
        ("kaggle", {"interaction": "sum"}, "interaction"),
        ("kaggle", {"embedding_dim": 8}, "bottom_mlp"),
        ("kaggle", {"top_mlp": [8, 2]}, "top_mlp"),
        ("kaggle", {"table_rows": [10, -1]}, "table_rows[1]"),
    ],
)
def test_bad_config_names_the_key(name, overrides, key):
    with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("]", r"\]")):
        get_config(name, **overrides)


def test_config_round_trips_through_dict():
    cfg = get_config("kaggle", max_rows=1000, seed=3)
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


# -- forward ---------------------------------------------------------------------------------


def test_tiny_forward_shape_and_range():
    cfg = get_config("tiny")
    model = DLRM(cfg)
    dense, sparse = random_batch(cfg, 37)
    out = model(dense, sparse)
    assert out.shape == (37,) and out.dtype == torch.float32
    assert torch.all((out > 0) & (out < 1))
    with torch.inference_mode():  # workspaces of either mode; same numbers
        assert torch.equal(model(dense, sparse), out)
    assert torch.equal(model(dense, sparse), out)


def test_dot_interaction_matches_the_definition():
    cfg = get_config("tiny")
    dense_model = DenseModel(cfg)
    dense, sparse = random_batch(cfg, 5)
    y = dense_model.bottom(dense)
    emb = EmbeddingShard(cfg, range(cfg.num_tables)).lookup(sparse)
    feats = dense_model.interact(y, emb).clone()
    vectors = torch.cat([y[:, None], emb], dim=1)
    expect = [torch.cat([y[b], torch.stack([vectors[b, i] @ vectors[b, j]
                                            for i in range(5) for j in range(i)])])
              for b in range(5)]  # fmt: skip
    torch.testing.assert_close(feats, torch.stack(expect), rtol=1e-6, atol=1e-6)
    assert feats.shape[1] == cfg.top_input_width
    assert tril_indices(3).tolist() == [3, 6, 7]


def test_cat_interaction_forward():
    cfg = get_config("tiny", interaction="cat")
    dense, sparse = random_batch(cfg, 9)
    out = DLRM(cfg)(dense, sparse)
    assert out.shape == (9,) and torch.all((out > 0) & (out < 1))


def test_embedding_bag_sums_rows():
    cfg = get_config("tiny")
    shard = EmbeddingShard(cfg, [2])
    weight = shard.tables[0].weight
    out = shard(torch.tensor([4, 7, 7]), torch.tensor([[0, 2, 2, 3]]))
    assert out.shape == (3, 1, cfg.embedding_dim)
    torch.testing.assert_close(out[0, 0], weight[4] + weight[7], rtol=0, atol=0)
    assert torch.equal(out[1, 0], torch.zeros(cfg.embedding_dim))  # empty bag
    assert torch.equal(out[2, 0], weight[7])


# -- determinism -----------------------------------------------------------------------------


def test_weights_identical_across_constructions_and_shards():
    cfg = get_config("tiny", seed=11)
    oracle = DLRM(cfg)
    shard = EmbeddingShard(cfg, [1, 3])
    for k, t in enumerate([1, 3]):
        assert torch.equal(shard.tables[k].weight, oracle.embeddings.tables[t].weight)
    reversed_shard = EmbeddingShard(cfg, [3, 0])
    assert torch.equal(reversed_shard.tables[0].weight, oracle.embeddings.tables[3].weight)
    again = DLRM(cfg)
    for a, b in zip(oracle.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = DLRM(get_config("tiny", seed=12))
    assert not torch.equal(other.dense.top_layers[0].weight, oracle.dense.top_layers[0].weight)


def test_table_init_is_chunked_independently_of_threads():
    rows = CHUNK_ROWS + 1000  # two chunks
    a = table_init(5, 2, rows, 2, threads=1)
    b = table_init(5, 2, rows, 2, threads=2)
    assert torch.equal(a, b)
    bound = (1.0 / rows) ** 0.5
    assert a.abs().max() <= bound and a.std() > bound / 3
    assert not torch.equal(a[:1000], a[CHUNK_ROWS : CHUNK_ROWS + 1000])


def exchange(plan, per_rank_emb, bounds, num_tables):
    """What the alltoallv delivers: rank s gets its sample slice of every table, in order."""
    out = []
    for lo, hi in bounds:
        emb = torch.empty(hi - lo, num_tables, per_rank_emb[0].shape[2])
        for tables, pooled in zip(plan, per_rank_emb, strict=True):
            emb[:, tables] = pooled[lo:hi]
        out.append(emb)
    return out


@pytest.mark.parametrize("kind", PLAN_KINDS)
def test_distributed_composition_equals_oracle(kind):
    """Shards for the global batch -> exchange -> bottom/top per slice.

    Bit-identical to the oracle run on the same slice (the claim the loop relies on);
    equal to the oracle on the whole batch to float tolerance (batch-size-dependent GEMM
    blocking may change the last bits).
    """
    cfg = get_config("kaggle", max_rows=300, seed=7)
    ranks, batch = 3, 100
    plan = plan_shards(cfg.rows, ranks, kind)
    oracle = DLRM(cfg)
    dense, sparse = random_batch(cfg, batch, seed=1)
    full = oracle(dense, sparse)

    shards = [EmbeddingShard(cfg, tables) for tables in plan]
    pooled = [shard.lookup(sparse) for shard in shards]
    # the packed per-shard input of forward gives the same bags
    for shard, tables, p in zip(shards, plan, pooled, strict=True):
        own = sparse.select(tables)
        assert torch.equal(shard(own.indices, own.offsets), p)
    all_emb = oracle.embeddings.lookup(sparse)
    for tables, p in zip(plan, pooled, strict=True):
        assert torch.equal(p, all_emb[:, tables])  # lookups: always bit-identical

    bounds = [(0, 30), (30, 64), (64, 100)]  # uneven slices, as in an alltoallv
    dense_models = [DenseModel(cfg) for _ in range(ranks)]
    parts = []
    for (lo, hi), emb, dm in zip(bounds, exchange(plan, pooled, bounds, cfg.num_tables),
                                 dense_models, strict=True):  # fmt: skip
        # lookups and interaction do not depend on the batch: slices are exact rows
        assert torch.equal(oracle.embeddings.lookup(sparse.slice(lo, hi)), all_emb[lo:hi])
        assert torch.equal(emb, all_emb[lo:hi])
        y = dm.bottom(dense[lo:hi])
        whole = dm.interact(oracle.dense.bottom(dense), all_emb)[lo:hi].clone()
        assert torch.equal(dm.interact(whole[:, : cfg.embedding_dim], emb), whole)
        pred = dm.top(y, emb)
        assert torch.equal(pred, oracle(dense[lo:hi], sparse.slice(lo, hi)))
        # the received parts, unassembled, give the same bits
        received = [(tables, p[lo:hi]) for tables, p in zip(plan, pooled, strict=True)]
        assert torch.equal(dm.top(y, received), pred)
        parts.append(pred)
    torch.testing.assert_close(torch.cat(parts), full, rtol=1e-5, atol=1e-6)


def test_top_checks_the_parts_cover_every_table():
    cfg = get_config("tiny")
    dm = DenseModel(cfg)
    y = torch.zeros(2, cfg.embedding_dim)
    part = torch.zeros(2, 2, cfg.embedding_dim)
    with pytest.raises(ValueError, match=r"tables \[2, 3\]"):
        dm.top(y, [([0, 1], part)])
    with pytest.raises(ValueError, match="given twice"):
        dm.top(y, [([0, 1], part), ([1, 2], part)])
    with pytest.raises(ValueError, match="expected embedded"):
        dm.top(y, torch.zeros(2, 3, cfg.embedding_dim))


def test_empty_slice():
    cfg = get_config("tiny")
    empty = SparseBatch(torch.zeros(0, dtype=torch.int64), torch.zeros(4, 1, dtype=torch.int64))
    assert DLRM(cfg)(torch.zeros(0, 13), empty).shape == (0,)


def test_slices_of_one_sample_are_close_to_the_oracle():
    cfg = get_config("tiny")
    oracle = DLRM(cfg)
    dense, sparse = random_batch(cfg, 40, seed=3)
    full = oracle(dense, sparse)
    single = torch.cat([oracle(dense[i : i + 1], sparse.slice(i, i + 1)) for i in range(40)])
    torch.testing.assert_close(single, full, rtol=1e-5, atol=1e-6)


def test_sparse_batch_slice_select_roundtrip():
    cfg = get_config("tiny")
    _, sparse = random_batch(cfg, 20, seed=4)
    parts = [sparse.slice(0, 7), sparse.slice(7, 20)]
    for t in range(cfg.num_tables):
        idx, off = sparse.table(t)
        joined = torch.cat([p.table(t)[0] for p in parts])
        assert torch.equal(joined, idx)
        assert off[-1] == idx.numel()
    picked = sparse.select([3, 1])
    assert torch.equal(picked.table(0)[0], sparse.table(3)[0])
    assert torch.equal(picked.offsets[1], sparse.offsets[1])
    with pytest.raises(ValueError, match="start at 0"):
        SparseBatch(torch.zeros(2, dtype=torch.int64), torch.tensor([[1, 2]]))


def test_shard_rejects_bad_input():
    cfg = get_config("tiny")
    with pytest.raises(ValueError, match="outside"):
        EmbeddingShard(cfg, [0, 4])
    shard = EmbeddingShard(cfg, [0, 1])
    _, sparse = random_batch(cfg, 4)
    with pytest.raises(ValueError, match="holds 2 tables"):
        shard(sparse.indices, sparse.offsets)
    with pytest.raises(ValueError, match="dense must have shape"):
        DenseModel(cfg).bottom(torch.zeros(4, 12))


# -- plans -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PLAN_KINDS)
@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 7, 26])
def test_plans_cover_each_table_once(kind, ranks):
    plan = plan_shards(KAGGLE_ROWS, ranks, kind)
    assert len(plan) == ranks
    assert sorted(t for tables in plan for t in tables) == list(range(26))
    assert all(tables and tables == sorted(tables) for tables in plan)


def test_plan_kinds_behave_as_documented():
    assert plan_shards(KAGGLE_ROWS, 4, "contiguous") == [
        list(range(0, 7)), list(range(7, 14)), list(range(14, 20)), list(range(20, 26)),
    ]  # fmt: skip
    balanced = plan_shards([10, 1, 1, 1, 9, 2], 2, "balanced")
    loads = [sum([10, 1, 1, 1, 9, 2][t] for t in tables) for tables in balanced]
    assert max(loads) - min(loads) <= 2
    by_count = plan_shards(KAGGLE_ROWS, 2, "balanced", costs=[1.0] * 26)
    assert [len(t) for t in by_count] == [13, 13]
    unbalanced = plan_shards(KAGGLE_ROWS, 4, "unbalanced")
    assert len(unbalanced[0]) == 13
    largest = sorted(range(26), key=lambda t: -KAGGLE_ROWS[t])[:13]
    assert unbalanced[0] == sorted(largest)


def test_fewer_tables_than_ranks_raises():
    with pytest.raises(ValueError, match="4 tables over 5 ranks"):
        plan_shards([1, 2, 3, 4], 5, "balanced")
    with pytest.raises(ValueError, match="unknown sharding kind"):
        plan_shards([1, 2], 1, "random")
    with pytest.raises(ValueError, match="costs"):
        plan_shards([1, 2], 2, "balanced", costs=[1.0])
