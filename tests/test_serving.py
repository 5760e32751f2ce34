"""The serving schedule: arrivals, query sizes, the batcher, query latency (no MPI)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bls_dlrm.run.serving import (
    QuerySizes,
    Schedule,
    ServeSpec,
    form_batches,
    gather,
    query_latencies,
    schedule,
    summarise,
)


def spec(**kw) -> ServeSpec:
    base = dict(
        rate_qps=400.0,
        duration_s=5.0,
        sizes=QuerySizes("lognormal", median=40, sigma=0.8, max=300),
        max_batch=512,
        max_wait_s=0.004,
        seed=3,
    )
    return ServeSpec(**(base | kw))


def test_the_schedule_is_a_pure_function_of_the_seed():
    a, b = schedule(spec()), schedule(spec())
    for name in ("arrival", "size", "offset", "close", "first"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    c = schedule(spec(seed=4))
    assert not np.array_equal(a.arrival[:10], c.arrival[:10])


def test_arrivals_are_poisson_at_the_offered_rate():
    s = schedule(spec(rate_qps=1000.0, duration_s=20.0))
    gaps = np.diff(s.arrival)
    assert s.arrival[0] >= 0 and s.arrival[-1] < 20.0
    assert abs(s.num_queries / 20.0 - 1000.0) < 4 * np.sqrt(1000 * 20) / 20
    assert abs(gaps.mean() - 1e-3) < 5e-5
    # exponential gaps: coefficient of variation 1
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05


def test_query_sizes_follow_their_distribution(tmp_path):
    rng = np.random.default_rng(0)
    assert (QuerySizes("constant", samples=7).draw(rng, 100) == 7).all()
    logn = QuerySizes("lognormal", median=50, sigma=0.5, max=400).draw(rng, 50_000)
    assert 45 <= np.median(logn) <= 55 and logn.max() <= 400 and logn.min() >= 1
    table = tmp_path / "sizes.txt"
    table.write_text("# quantiles\n100\n200\n700\n")
    drawn = QuerySizes("table", path=str(table)).draw(rng, 3000)
    assert set(np.unique(drawn)) == {100, 200, 700}
    assert QuerySizes("table", path=str(table), max=600).largest() == 600


@pytest.mark.parametrize(
    ("sizes", "needle"),
    [
        ({"kind": "poisson"}, "sizes.kind"),
        ({"kind": "constant", "samples": 0}, "sizes.samples"),
        ({"kind": "lognormal", "median": -1}, "sizes.median"),
        ({"kind": "table"}, "sizes.path"),
        ({"kind": "table", "path": "/nonexistent/sizes.txt"}, "cannot read"),
        ({"kind": "constant", "bogus": 1}, "sizes.bogus: unknown key"),
    ],
)
def test_bad_query_sizes_are_refused_by_name(sizes, needle):
    with pytest.raises(ValueError, match=needle):
        QuerySizes.from_dict(sizes)


def test_a_query_larger_than_a_batch_is_refused():
    with pytest.raises(ValueError, match="does not fit max_batch"):
        spec(sizes=QuerySizes("constant", samples=600)).validate()
    with pytest.raises(ValueError, match=r"sizes\.max: a lognormal needs max"):
        spec(sizes=QuerySizes("lognormal", median=10)).validate()


def test_the_batcher_closes_on_size_on_wait_and_on_a_query_that_does_not_fit():
    arrival = np.array([0.0, 0.001, 0.002, 0.010, 0.0105, 0.011, 0.030])
    size = np.array([100, 100, 100, 300, 200, 50, 10])
    close, first = form_batches(arrival, size, max_batch=400, max_wait_s=0.005)
    # batch 0: three queries, then waits out its 5 ms; batch 1: 300 + 200 does not fit,
    # closes as the 200 arrives; batch 2: 200 + 50, waits; batch 3: the last query alone
    assert first.tolist() == [0, 3, 4, 6, 7]
    assert close.tolist() == pytest.approx([0.005, 0.0105, 0.0155, 0.035])
    # exactly full: closes as its last query arrives
    close, first = form_batches(np.array([0.0, 0.001, 0.002]), np.array([200, 200, 5]), 400, 1.0)
    assert first.tolist() == [0, 2, 3] and close.tolist() == pytest.approx([0.001, 1.002])


def test_batches_respect_the_limits_and_keep_every_query_once():
    s = schedule(spec(rate_qps=3000.0, duration_s=3.0))
    samples = s.batch_samples()
    assert samples.sum() == s.size.sum() and (samples <= 512).all() and (samples >= 1).all()
    assert s.first[0] == 0 and s.first[-1] == s.num_queries and (np.diff(s.first) >= 1).all()
    for b in range(s.num_batches):
        q = s.batch_queries(b)
        opened = s.arrival[q.start]
        # closes no earlier than its last query and no later than its wait allows
        assert s.arrival[q.stop - 1] <= s.close[b] <= opened + 0.004 + 1e-12
    assert (np.diff(s.close) >= 0).all()


class _Store:
    """Three batches of four samples: dense row = sample number, one bag per table."""

    batch_size, num_batches = 4, 3

    def batch(self, b):
        from bls_dlrm.data.store import Batch
        from bls_dlrm.model.sparse import SparseBatch

        first = 4 * b
        dense = torch.arange(first, first + 4, dtype=torch.float32)[:, None]
        lengths = np.array([[1, 2, 1, 1], [2, 1, 1, 1]])
        indices = torch.arange(10, dtype=torch.int64) + 100 * b
        return Batch(dense, SparseBatch.from_lengths(indices, lengths), None)


def test_gather_takes_the_stream_samples_across_batches_and_wraps_around():
    store = _Store()
    got = gather(store, 2, 7)  # samples 2, 3 of batch 0, 0..2 of batch 1
    assert got.dense[:, 0].tolist() == [2, 3, 4, 5, 6]
    expect = [
        store.batch(0).sparse.slice(2, 4),
        store.batch(1).sparse.slice(0, 3),
    ]
    for t in range(2):
        bags = [
            got.sparse.table(t)[0][int(o0) : int(o1)].tolist()
            for o0, o1 in zip(got.sparse.offsets[t, :-1], got.sparse.offsets[t, 1:], strict=True)
        ]
        want = []
        for part in expect:
            idx, off = part.table(t)
            want += [idx[int(a) : int(b)].tolist() for a, b in itertools.pairwise(off)]
        assert bags == want
    wrapped = gather(store, 11, 13)  # the last sample, then the first again
    assert wrapped.dense[:, 0].tolist() == [11, 0]


def test_query_latency_waits_for_every_rank_holding_part_of_it():
    # two queries of 3 samples in one batch of 6 over 2 ranks: slices 0:3 and 3:6
    arrival = np.array([0.0, 0.001])
    size = np.array([3, 3])
    close, first = form_batches(arrival, size, 6, 1.0)
    s = Schedule(arrival, size, np.array([0, 3]), close, first)
    done = np.array([[10.010], [10.050]])  # rank 0 done at +10 ms, rank 1 at +50 ms
    q = query_latencies(s, done, t_origin=10.0, ranks=2)
    assert q["latency_s"].tolist() == pytest.approx([0.010, 0.049])
    # a query straddling both slices waits for the later rank
    s2 = Schedule(np.array([0.0, 0.0005]), np.array([2, 4]), np.array([0, 2]), close, first)
    q2 = query_latencies(s2, done, t_origin=10.0, ranks=2)
    assert q2["latency_s"].tolist() == pytest.approx([0.010, 0.0495])


def test_summary_reports_percentiles_of_measured_queries_only():
    import pandas as pd

    lat = np.r_[np.full(10, 5.0), np.linspace(0.001, 0.1, 1000)]
    queries = pd.DataFrame(
        {
            "arrival_s": np.r_[np.zeros(10), np.linspace(1, 2, 1000)],
            "samples": 1,
            "latency_s": lat,
            "warmup": np.r_[np.ones(10, bool), np.zeros(1000, bool)],
        }
    )
    out = summarise(queries, duration_s=2.0, warmup_s=1.0)
    assert out["arrived_qps"] == pytest.approx(1000.0)
    assert out["queries"] == 1000
    assert out["p50_ms"] == pytest.approx(50.5, rel=1e-3)
    assert out["p99_ms"] == pytest.approx(np.percentile(lat[10:], 99) * 1e3)
    assert out["p99_9_ms"] <= 100.0 + 1e-9


def test_serve_help_documents_every_key():
    from bls_dlrm.run.serve import CapacitySearch, ServeConfig, build_parser

    text = build_parser().format_help()
    for name in [*ServeConfig.__dataclass_fields__, *CapacitySearch.__dataclass_fields__]:
        assert name in text, name
    for flag in ("--rate", "--loads", "--duration", "--find-capacity", "--slo-ms", "--percentile"):
        assert flag in text, flag


def test_an_idle_pipeline_still_calls_into_its_group():
    """With nothing pending, progress() asks the last finished Work (every call into a
    "bls" group moves its messages): the rank's own sends leave while it waits for the
    next batch to close, instead of holding its peers back."""
    from bls_dlrm.run.pipeline import Pipeline

    class Work:
        calls = 0

        def is_completed(self):
            Work.calls += 1
            return True

    pipe = Pipeline(ctx=None, series=None, group=None, writer=None, preds_kept=None, bar=None)
    pipe.progress()  # nothing finished yet: nothing to ask
    assert Work.calls == 0
    pipe.last_work = Work()
    pipe.progress()
    pipe.progress()
    assert Work.calls == 2


def test_timed_loops_run_without_automatic_garbage_collection():
    import gc

    from bls_dlrm.run.pipeline import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("a failing run")
    assert gc.isenabled()  # restored on errors too
