"""Ideal makespan under a lag bound: hand-computed cases, closed forms and properties."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bls_dlrm.delays import DelaySpec
from bls_dlrm.theory import (
    ideal_makespan,
    ideal_speedup,
    makespan_sync,
    makespan_unbounded,
    simulate_scale_out,
    start_times,
)

# Rank 0 is slow at the end, rank 1 at the start: only a lag bound lets them overlap.
W = np.array([[1.0, 1.0, 4.0], [4.0, 1.0, 1.0]])


def reference_makespan(work: np.ndarray, lag: int | None) -> float:
    """Scalar transcription of the recurrence, to check the vectorised one against."""
    ranks, iterations = work.shape
    finish = [[0.0] * iterations for _ in range(ranks)]
    for i in range(iterations):
        for r in range(ranks):
            s = finish[r][i - 1] if i > 0 else 0.0
            j = i - lag - 1 if lag is not None else -1
            if j >= 0:
                s = max(s, max(finish[q][j] for q in range(ranks)))
            finish[r][i] = s + float(work[r, i])
    return max(finish[r][iterations - 1] for r in range(ranks))


def test_hand_computed_l0():
    # All ranks start each iteration together after the slowest: 0, 4, 5; end 5 + 4.
    np.testing.assert_array_equal(start_times(W, 0), [[0, 4, 5], [0, 4, 5]])
    assert ideal_makespan(W, 0) == 9.0


def test_hand_computed_l1():
    # i=1 is ungated; i=2 waits for both posts of i=0 (at 1 and 4).
    # rank 0: 0->1, 1->2, max(2, 4)=4 -> 8; rank 1: 0->4, 4->5, max(5, 4)=5 -> 6.
    np.testing.assert_array_equal(start_times(W, 1), [[0, 1, 4], [0, 4, 5]])
    assert ideal_makespan(W, 1) == 8.0


def test_hand_computed_l2_is_unbounded_for_three_iterations():
    # No gate i-3 exists: each rank runs its own sum, 6 and 6.
    np.testing.assert_array_equal(start_times(W, 2), [[0, 1, 2], [0, 4, 5]])
    assert ideal_makespan(W, 2) == 6.0
    assert ideal_makespan(W, None) == 6.0
    assert ideal_makespan(W, math.inf) == 6.0
    assert ideal_speedup(W, 2) == pytest.approx(9.0 / 6.0)


def test_closed_forms_on_hand_case():
    assert makespan_sync(W) == 9.0
    assert makespan_unbounded(W) == 6.0


def test_zero_iterations_and_zero_work():
    empty = np.zeros((3, 0))
    assert ideal_makespan(empty, 0) == 0.0
    assert makespan_sync(empty) == 0.0
    assert makespan_unbounded(empty) == 0.0
    assert start_times(empty, 1).shape == (3, 0)
    assert ideal_speedup(np.zeros((2, 5)), 1) == 1.0


def test_single_rank_has_no_lag_benefit():
    w = np.array([[0.5, 2.0, 1.5]])
    for lag in (0, 1, None):
        assert ideal_makespan(w, lag) == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("work", "match"),
    [
        (np.ones(3), "2-D"),
        (np.ones((2, 2, 2)), "2-D"),
        (np.ones((0, 3)), "at least one rank"),
        (np.array([[1.0, np.nan]]), "finite"),
        (np.array([[1.0, np.inf]]), "finite"),
        (np.array([[1.0, -0.1]]), "non-negative"),
        (np.array([["a", "b"]]), "real numbers"),
    ],
)
def test_bad_work_is_rejected(work, match):
    with pytest.raises(ValueError, match=match):
        ideal_makespan(work, 0)


@pytest.mark.parametrize("lag", [-1, 1.5, "2", True, -math.inf, math.nan])
def test_bad_lag_bound_is_rejected(lag):
    with pytest.raises(ValueError, match="lag_bound"):
        ideal_makespan(W, lag)


def test_numpy_integer_lag_bound_is_accepted():
    assert ideal_makespan(W, np.int64(1)) == 8.0


def test_rotating_straggler_speedup_is_near_its_bound():
    # P = 4, base work 1, one rank per iteration delayed 2.5. Synchronous: every iteration
    # costs 3.5. Unbounded: a rank's sum is N + 2.5 * (its delayed count) >= N * (1 + 2.5/4)
    # on the busiest rank, so no lag bound beats 3.5 / 1.625 = 2.1538...
    ranks, iterations = 4, 200
    spec = DelaySpec(kind="rotating", size_s=2.5, seed=1)
    work = 1.0 + spec.schedule(ranks, iterations)
    assert makespan_sync(work) == pytest.approx(3.5 * iterations)
    speedup = ideal_speedup(work, 8)
    assert 1.9 < speedup < (1 + 2.5) / (1 + 2.5 / 4) < 2.16
    assert speedup <= makespan_sync(work) / makespan_unbounded(work) + 1e-12


def test_simulate_scale_out_rows():
    spec = DelaySpec(kind="rotating", size_s=2.5, seed=3)
    rows = simulate_scale_out(spec, ranks=64, iterations=100, base_work_s=1.0, lag_bounds=(0, 8))
    assert [row["lag_bound"] for row in rows] == [0, 8]
    assert all(row["simulated"] is True for row in rows)
    assert rows[0]["makespan_s"] == pytest.approx(3.5 * 100)
    assert rows[0]["ideal_speedup"] == pytest.approx(1.0)
    assert rows[1]["ideal_speedup"] > 1.0


def test_simulate_scale_out_tiles_measured_costs_and_marks_unbounded():
    rows = simulate_scale_out(
        DelaySpec(), ranks=8, iterations=5, base_work_s=[1.0, 2.0], lag_bounds=(None, math.inf)
    )
    # Costs 1, 2, 1, 2, 1 on every rank and no delay: every lag bound gives the same 7 s.
    assert [row["lag_bound"] for row in rows] == [None, None]
    assert all(row["makespan_s"] == pytest.approx(7.0) for row in rows)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ranks": 0}, "ranks"),
        ({"iterations": 0}, "iterations"),
        ({"base_work_s": []}, "base_work_s"),
        ({"base_work_s": [[1.0]]}, "base_work_s"),
        ({"base_work_s": -1.0}, "non-negative"),
    ],
)
def test_simulate_scale_out_validates(kwargs, match):
    args = {"delay": DelaySpec(), "ranks": 4, "iterations": 3, "base_work_s": 1.0} | kwargs
    with pytest.raises(ValueError, match=match):
        simulate_scale_out(**args)


work_matrices = st.tuples(st.integers(1, 6), st.integers(1, 12)).flatmap(
    lambda shape: arrays(
        np.float64,
        shape,
        elements=st.floats(0.0, 100.0, allow_nan=False, allow_infinity=False),
    )
)


@settings(max_examples=200, deadline=None)
@given(work=work_matrices, lag=st.integers(0, 15))
def test_matches_scalar_reference(work, lag):
    assert ideal_makespan(work, lag) == pytest.approx(reference_makespan(work, lag))


@settings(max_examples=200, deadline=None)
@given(work=work_matrices)
def test_limits_are_the_closed_forms(work):
    n = work.shape[1]
    assert ideal_makespan(work, 0) == pytest.approx(work.max(axis=0).sum())
    assert ideal_makespan(work, 0) == pytest.approx(makespan_sync(work))
    assert ideal_makespan(work, n - 1) == pytest.approx(work.sum(axis=1).max())
    assert ideal_makespan(work, 10 * n) == pytest.approx(makespan_unbounded(work))
    assert ideal_makespan(work, None) == pytest.approx(makespan_unbounded(work))


@settings(max_examples=200, deadline=None)
@given(work=work_matrices)
def test_monotone_in_lag_and_bracketed(work):
    n = work.shape[1]
    spans = [ideal_makespan(work, lag) for lag in range(n + 1)]
    for shorter, longer in itertools.pairwise(spans):
        assert longer <= shorter + 1e-9
    for span in spans:
        assert makespan_unbounded(work) - 1e-9 <= span <= makespan_sync(work) + 1e-9


@settings(max_examples=200, deadline=None)
@given(work=work_matrices, lag=st.integers(0, 15))
def test_start_times_respect_both_gates(work, lag):
    start = start_times(work, lag)
    finish = start + work
    assert start.shape == work.shape
    assert np.all(start >= 0)
    assert np.all(start[:, 1:] >= finish[:, :-1] - 1e-9)
    n = work.shape[1]
    for i in range(lag + 1, n):
        assert np.all(start[:, i] >= finish[:, i - lag - 1].max() - 1e-9)
    # Every start is tight: equal to one of its two lower bounds (or 0 at the beginning).
    for i in range(n):
        bound = finish[:, i - 1] if i > 0 else np.zeros(work.shape[0])
        if i - lag - 1 >= 0:
            bound = np.maximum(bound, finish[:, i - lag - 1].max())
        np.testing.assert_allclose(start[:, i], bound)


@settings(max_examples=100, deadline=None)
@given(work=work_matrices, lag=st.integers(0, 15), scale=st.floats(0.01, 100.0))
def test_scales_linearly(work, lag, scale):
    assert ideal_makespan(scale * work, lag) == pytest.approx(scale * ideal_makespan(work, lag))
