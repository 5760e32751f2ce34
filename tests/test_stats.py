"""Bootstrap intervals of ratios and verdicts by interval (bls_dlrm.analysis.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bls_dlrm.analysis import stats as st
from bls_dlrm.analysis.stats import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, ratio_ci, verdict

NUM = [105.0, 104.0, 107.0, 103.0, 106.0]
DEN = [100.0, 101.0, 99.0, 100.0, 100.5]


# --------------------------------------------------------------------------------------
# ratio_ci


def test_paired_point_is_the_geometric_mean_of_per_repetition_ratios():
    point, low, high = ratio_ci(NUM, DEN)
    ratios = np.array(NUM) / np.array(DEN)
    assert point == pytest.approx(float(np.exp(np.log(ratios).mean())), rel=1e-12)
    assert low < point < high
    assert low > 1.0 and high < 1.1


def test_paired_pairs_by_position_not_by_sorting():
    # Repetition k's machine state scales both series alike: the per-repetition ratio is
    # exactly 1.1 everywhere, so the paired interval is that value and nothing wider.
    scale = [1.0, 2.0, 0.5, 1.5, 0.8]
    num = [1.1 * s for s in scale]
    point, low, high = ratio_ci(num, scale)
    assert point == pytest.approx(1.1) and low == pytest.approx(1.1) and high == pytest.approx(1.1)
    # The same values unpaired are a wide interval around the same ratio of means.
    point_u, low_u, high_u = ratio_ci(num, scale, paired=False)
    assert point_u == pytest.approx(1.1)
    assert high_u - low_u > 0.3


def test_paired_is_symmetric_under_swapping():
    p, lo, hi = ratio_ci(NUM, DEN)
    q, lo2, hi2 = ratio_ci(DEN, NUM)
    assert q == pytest.approx(1 / p)
    assert lo2 == pytest.approx(1 / hi, rel=1e-9) and hi2 == pytest.approx(1 / lo, rel=1e-9)


def test_unpaired_point_is_the_ratio_of_means_and_sizes_may_differ():
    num = [10.0, 12.0, 11.0, 13.0]
    den = [5.0, 6.0, 5.5, 4.5, 5.0, 6.0]
    point, low, high = ratio_ci(num, den, paired=False)
    assert point == pytest.approx(np.mean(num) / np.mean(den))
    assert low < point < high


def test_seeded_and_reproducible():
    rng = np.random.default_rng(3)
    num, den = rng.normal(110, 5, 20), rng.normal(100, 5, 20)
    a = ratio_ci(num, den, seed=7, n_resamples=999)
    assert ratio_ci(num, den, seed=7, n_resamples=999) == a
    assert ratio_ci(num, den, seed=8, n_resamples=999) != a  # the seed is really used


def test_confidence_widens_the_interval():
    _, lo95, hi95 = ratio_ci(NUM, DEN, confidence=0.95)
    _, lo50, hi50 = ratio_ci(NUM, DEN, confidence=0.50)
    assert lo95 < lo50 and hi50 < hi95


@pytest.mark.parametrize("paired", [True, False])
def test_degenerate_inputs_give_a_point_interval(paired):
    assert ratio_ci([3.0], [2.0], paired=paired) == (1.5, 1.5, 1.5)
    p, lo, hi = ratio_ci([3.0] * 5, [2.0] * 5, paired=paired)
    assert p == lo == hi == pytest.approx(1.5)


def test_bca_undefined_falls_back_to_a_finite_interval():
    # One value differs: BCa's jackknife degenerates; the percentile interval is used.
    p, lo, hi = ratio_ci([1, 1, 1, 1, 2], [1, 1, 1, 1, 1])
    assert all(math.isfinite(v) for v in (p, lo, hi))
    assert lo <= p <= hi and hi > lo


def test_a_clear_gain_excludes_one_and_noise_straddles_it():
    rng = np.random.default_rng(1)
    den = rng.normal(100, 3, 8)
    _, low, _ = ratio_ci(den * 1.3 * rng.normal(1, 0.02, 8), den)
    assert low > 1.2
    _, low, high = ratio_ci(rng.normal(100, 8, 8), rng.normal(100, 8, 8))
    assert low < 1.0 < high


@pytest.mark.parametrize(
    ("num", "den", "kwargs", "message"),
    [
        ([], [1.0], {}, "no values"),
        ([1.0, 2.0], [1.0], {}, "differ in length"),
        ([1.0, -2.0], [1.0, 1.0], {}, "positive"),
        ([1.0, math.nan], [1.0, 1.0], {}, "finite"),
        ([1.0], [1.0], {"confidence": 1.0}, "confidence"),
    ],
)
def test_bad_inputs_are_refused(num, den, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ratio_ci(num, den, **kwargs)


# --------------------------------------------------------------------------------------
# verdict

BAND = {"op": "within", "low": 0.95, "high": 1.05}
GT = {"op": ">", "value": 1.05}
GE = {"op": ">=", "value": 0.90}
LE = {"op": "<=", "value": 1.05}


@pytest.mark.parametrize(
    ("low", "high", "threshold", "expected"),
    [
        # band: inside, on either edge, wholly outside, straddling an edge
        (0.97, 1.03, BAND, SUPPORTED),
        (0.95, 1.05, BAND, SUPPORTED),
        (1.02, 1.06, BAND, INCONCLUSIVE),
        (0.90, 1.10, BAND, INCONCLUSIVE),
        (1.0501, 1.2, BAND, NOT_SUPPORTED),
        (0.8, 0.9499, BAND, NOT_SUPPORTED),
        (1.05, 1.2, BAND, INCONCLUSIVE),  # touches the edge: not wholly outside
        (0.9, 0.95, BAND, INCONCLUSIVE),
        # strict ">": equal fails it
        (1.06, 1.2, GT, SUPPORTED),
        (1.05, 1.2, GT, INCONCLUSIVE),
        (1.0, 1.05, GT, NOT_SUPPORTED),
        (1.05, 1.05, GT, NOT_SUPPORTED),
        (1.0, 1.10, GT, INCONCLUSIVE),
        # ">=": equal satisfies it
        (0.90, 0.95, GE, SUPPORTED),
        (0.90, 0.90, GE, SUPPORTED),
        (0.80, 0.90, GE, INCONCLUSIVE),
        (0.80, 0.8999, GE, NOT_SUPPORTED),
        # "<=" (a check: no gain beyond the ideal)
        (0.9, 1.05, LE, SUPPORTED),
        (1.0, 1.1, LE, INCONCLUSIVE),
        (1.0501, 1.1, LE, NOT_SUPPORTED),
        # "<"
        (0.5, 0.99, {"op": "<", "value": 1.0}, SUPPORTED),
        (0.5, 1.0, {"op": "<", "value": 1.0}, INCONCLUSIVE),
        (1.0, 1.2, {"op": "<", "value": 1.0}, NOT_SUPPORTED),
    ],
)
def test_verdict_table(low, high, threshold, expected):
    assert verdict(low, high, threshold) == expected


#: Per-repetition baselines of different scale: every ratio is exactly the factor, but the
#: logs differ in their last bits, so the interval's ends straddle the factor by ~1e-16.
SCALES = [100.0, 300.0, 700.0, 1234.0, 2000.0]


@pytest.mark.parametrize(
    ("factor", "threshold", "expected"),
    [
        (1.05, BAND, SUPPORTED),
        (0.95, BAND, SUPPORTED),
        (1.05, GT, NOT_SUPPORTED),
        (1.05, {"op": ">=", "value": 1.05}, SUPPORTED),
        (0.90, GE, SUPPORTED),
        (1.8, {"op": ">", "value": 1.8}, NOT_SUPPORTED),
        (1.05, LE, SUPPORTED),
    ],
)
def test_exact_threshold_survives_float_rounding(factor, threshold, expected):
    _, low, high = ratio_ci([s * factor for s in SCALES], SCALES)
    assert low != high  # the rounding is really there ...
    assert high - low < 1e-14
    assert verdict(low, high, threshold) == expected  # ... and does not decide the verdict
    # A one-value interval at the threshold is judged the same.
    assert verdict(factor, factor, threshold) == expected


def test_tolerance_is_tiny():
    assert verdict(1.0500001, 1.2, BAND) == NOT_SUPPORTED
    assert verdict(1.0 + 5e-7, 1.2, {"op": ">", "value": 1.0}) == SUPPORTED
    assert verdict(1.0 + 1e-15, 1.2, {"op": ">", "value": 1.0}) == INCONCLUSIVE
    assert st.RTOL <= 1e-6


@pytest.mark.parametrize(
    "threshold",
    [
        {"op": "=>", "value": 1.0},
        {"op": "within", "low": 1.1, "high": 1.0},
        {"op": ">"},
    ],
)
def test_bad_threshold_specs_are_refused(threshold):
    with pytest.raises((ValueError, KeyError)):
        verdict(1.0, 1.1, threshold)


def test_not_an_interval_is_refused():
    with pytest.raises(ValueError, match="interval"):
        verdict(1.2, 1.1, GT)


def test_describe_threshold():
    assert st.describe_threshold(BAND) == "CI within [0.95, 1.05]"
    assert st.describe_threshold(GT, what="95% CI") == "95% CI low > 1.05"
    assert st.describe_threshold(GE) == "CI low ≥ 0.9"
    assert st.describe_threshold(LE) == "CI high ≤ 1.05"
