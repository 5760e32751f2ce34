"""Bootstrap confidence intervals of ratios over repetitions, and verdicts by interval.

Every ratio the claims table and the figures quote (a BLS series' throughput over the best
synchronous series', a speedup over its ideal) is a statistic over the repetitions of a
workload, and carries a confidence interval from :func:`scipy.stats.bootstrap`:

``ratio_ci(num, den, paired=True)``
    ``num[k]`` and ``den[k]`` come from the same repetition ``k`` (runs of one workload
    interleaved in one launch share the machine's state). The statistic is the **geometric
    mean of the per-repetition ratios** ``num[k] / den[k]``: the exponential of the mean
    log-ratio. It is symmetric (``ratio_ci(den, num)`` is the reciprocal interval), and a
    ratio of 2 and one of 0.5 average to 1, as they should.

``ratio_ci(num, den, paired=False)``
    The two samples are resampled independently; the statistic is the **ratio of the
    arithmetic means** ``mean(num) / mean(den)`` (samples may differ in size).

The interval is the bias-corrected and accelerated (BCa) bootstrap interval, the
:func:`scipy.stats.bootstrap` default; where BCa is undefined (its jackknife degenerates on
small samples with ties) the percentile interval is used. Degenerate inputs do not raise:
a sample of one value, or per-repetition ratios that are all equal, give the interval
``(point, point, point)``. Resampling is seeded, so an interval is reproducible exactly.

``verdict(low, high, threshold)`` judges an interval against a threshold spec (a mapping
with ``op`` and ``value``, or ``op: within`` with ``low`` and ``high``):

* *supported*: the whole interval satisfies the threshold;
* *not supported*: the whole interval lies on the wrong side of it;
* *inconclusive*: the interval straddles it.

Boundaries, decided here once: a value within a relative tolerance :data:`RTOL` of the
threshold *equals* it (``105 / 100`` is 1.05 however the float arithmetic rounds). Equal
satisfies ``>=``, ``<=`` and the closed band ``within [low, high]``, and fails ``>`` and
``<``. So for ``> 1.8`` an interval ``[1.8, 2.1]`` is inconclusive and ``[1.7, 1.8]`` is
not supported; for ``>= 0.9`` an interval ``[0.9, 0.95]`` is supported and ``[0.8, 0.9]``
is inconclusive.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as _stats

__all__ = [
    "CONFIDENCE",
    "INCONCLUSIVE",
    "NOT_SUPPORTED",
    "N_RESAMPLES",
    "OPS",
    "RTOL",
    "SEED",
    "SUPPORTED",
    "describe_threshold",
    "ratio_ci",
    "verdict",
]

CONFIDENCE = 0.95
N_RESAMPLES = 9999
SEED = 0
#: Relative tolerance within which a value equals its threshold (module docstring).
RTOL = 1e-9

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive"

#: Threshold operators :func:`verdict` understands.
OPS = (">", ">=", "<", "<=", "within")


def _as_array(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype="float64").ravel()
    if arr.size == 0:
        raise ValueError(f"{name}: no values")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: values must be finite, got {arr.tolist()}")
    return arr


def _interval(
    data: tuple[np.ndarray, ...],
    statistic: Any,
    *,
    paired: bool,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> tuple[float, float]:
    """BCa interval, or the percentile interval where BCa is undefined."""
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning, small-sample notes
            res = _stats.bootstrap(
                data,
                statistic,
                n_resamples=n_resamples,
                paired=paired,
                vectorized=True,
                confidence_level=confidence,
                method=method,
                rng=np.random.default_rng(seed),
            )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high
    raise RuntimeError("bootstrap interval is undefined")  # pragma: no cover


def _log_mean(logs: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(logs, axis=axis)


def _mean_ratio(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) / np.mean(b, axis=axis)


def ratio_ci(
    num: Sequence[float] | np.ndarray,
    den: Sequence[float] | np.ndarray,
    *,
    paired: bool = True,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float, float]:
    """``(point, low, high)`` of the ratio ``num / den`` over repetitions.

    Paired (default): geometric mean of ``num[k] / den[k]``; both samples must have the
    same length and be positive. Unpaired: ``mean(num) / mean(den)``, resampled
    independently. See the module docstring for the interval and degenerate cases.
    """
    a = _as_array(num, "num")
    b = _as_array(den, "den")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if paired:
        if a.size != b.size:
            raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
        if np.any(a <= 0) or np.any(b <= 0):
            raise ValueError("paired ratios need positive values (their logs are averaged)")
        logs = np.log(a) - np.log(b)
        point = float(np.exp(logs.mean()))
        if logs.size < 2 or np.ptp(logs) == 0:
            point = float(a[0] / b[0])  # one ratio: exactly it, not exp(log) of it
            return point, point, point
        low, high = _interval(
            (logs,),
            _log_mean,
            paired=True,
            confidence=confidence,
            n_resamples=n_resamples,
            seed=seed,
        )
        # exp is monotone: an interval of the mean log-ratio is one of the geometric mean.
        return point, min(point, math.exp(low)), max(point, math.exp(high))
    if b.mean() == 0:
        raise ValueError("den has mean 0")
    point = float(a.mean() / b.mean())
    if a.size < 2 or b.size < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return point, point, point
    low, high = _interval(
        (a, b),
        _mean_ratio,
        paired=False,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
    )
    return point, min(point, low), max(point, high)


# --------------------------------------------------------------------------------------
# Verdicts


def _close(a: float, b: float, rtol: float) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=0.0) or a == b


def _ge(a: float, b: float, rtol: float) -> bool:
    return a > b or _close(a, b, rtol)


def _gt(a: float, b: float, rtol: float) -> bool:
    return a > b and not _close(a, b, rtol)


def _check_spec(threshold: Mapping[str, Any]) -> tuple[str, tuple[float, ...]]:
    op = threshold.get("op")
    if op not in OPS:
        raise ValueError(f"threshold op must be one of {OPS}, got {op!r}")
    if op == "within":
        lo, hi = float(threshold["low"]), float(threshold["high"])
        if not lo <= hi:
            raise ValueError(f"threshold band [{lo}, {hi}] is empty")
        return op, (lo, hi)
    return op, (float(threshold["value"]),)


def verdict(low: float, high: float, threshold: Mapping[str, Any], *, rtol: float = RTOL) -> str:
    """*supported*, *not supported* or *inconclusive* for the interval ``[low, high]``.

    ``threshold``: ``{"op": ">" | ">=" | "<" | "<=", "value": t}`` or
    ``{"op": "within", "low": a, "high": b}`` (closed band). Boundaries: module docstring.
    """
    op, values = _check_spec(threshold)
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"not an interval: [{low}, {high}]")
    if op == "within":
        a, b = values
        if _ge(low, a, rtol) and _ge(b, high, rtol):
            return SUPPORTED
        if _gt(a, high, rtol) or _gt(low, b, rtol):
            return NOT_SUPPORTED
        return INCONCLUSIVE
    (t,) = values
    if op == ">":
        ok, wrong = _gt(low, t, rtol), _ge(t, high, rtol)
    elif op == ">=":
        ok, wrong = _ge(low, t, rtol), _gt(t, high, rtol)
    elif op == "<":
        ok, wrong = _gt(t, high, rtol), _ge(low, t, rtol)
    else:  # "<="
        ok, wrong = _ge(t, high, rtol), _gt(low, t, rtol)
    if ok:
        return SUPPORTED
    return NOT_SUPPORTED if wrong else INCONCLUSIVE


def describe_threshold(threshold: Mapping[str, Any], *, what: str = "CI") -> str:
    """A threshold spec in words, e.g. ``CI within [0.95, 1.05]`` or ``CI low > 1.05``."""
    op, values = _check_spec(threshold)
    if op == "within":
        return f"{what} within [{values[0]:g}, {values[1]:g}]"
    end = "low" if op in (">", ">=") else "high"
    sign = {">=": "≥", "<=": "≤"}.get(op, op)
    return f"{what} {end} {sign} {values[0]:g}"
