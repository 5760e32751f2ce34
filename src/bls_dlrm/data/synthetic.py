"""Seeded synthetic batches: the skew knobs of the sweep, in the store format.

BLS pays off when ranks are unbalanced, and two of the ways to unbalance them are data
skew: which rows a table's lookups hit (``index_dist``) and how many per sample (``pooling``).
Both are set globally and may be overridden per table.

Index distributions over a table of ``n`` rows:

- ``uniform``: every row equally likely.
- ``zipf``: the row of popularity rank ``k`` (1 = hottest) has probability
  ``k**-alpha / sum_{j<=n} j**-alpha``, i.e. Zipf *truncated to the table*. Drawn exactly by
  rejection-inversion (Hörmann and Derflinger, 1996): O(1) work and memory per draw for any
  ``n`` (no table of ``n`` probabilities for 40M-row tables) and any ``alpha > 0``; over
  98% of candidates are accepted for alpha in 0.1..3. Ranks are then scattered over the
  table by a seeded affine bijection ``row = (a * (k - 1) + c) mod n`` with
  ``gcd(a, n) = 1``, so hot rows are not all adjacent in memory (as hashed real features
  are not).

Pooling (bag size per sample and table):

- ``fixed``: always ``pooling_k``.
- ``uniform``: uniform on ``1..pooling_k``.
- ``heavy``: lognormal with median ``pooling_k`` and shape ``pooling_sigma``, rounded and
  clipped to ``1..pooling_max`` (default ``20 * pooling_k``): most bags small, a few large.
  Drawn per sample, so over a batch of thousands the table's total work hardly varies.
- ``bursty``: per *batch*: each table in each batch gets its own pooling factor, lognormal
  with median ``pooling_k`` and shape ``pooling_sigma``, rounded and clipped to
  ``1..pooling_max`` (default ``20 * pooling_k``), and every bag of that table in that
  batch has that size. A table's lookup work then varies heavily from batch to batch, so
  the rank holding this batch's heavy tables works longer: ranks unbalanced iteration by
  iteration (with the sharding plan ``hot``, the hot tables share a rank).

Zipf exponents may differ per table: ``zipf_alpha`` is one number or a list with one per
table, or ``zipf_alpha_range=(lo, hi)`` draws each table's exponent uniformly from the
seed. ``per_table`` overrides win over both.

Dense features are uniform on [0, 1), like the reference DLRM's random data; there are no
labels (inference needs none).

Reproducibility: every random quantity comes from its own stream keyed by (seed, what,
batch, table) through numpy's ``SeedSequence``, so the output is a function of the
parameters alone, and the first ``m`` batches do not depend on ``num_batches``.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..model.config import ModelConfig, get_config
from .store import DatasetWriter

__all__ = [
    "INDEX_DISTS",
    "POOLINGS",
    "TableSpec",
    "affine_permutation",
    "burst_factor",
    "draw_lengths",
    "generate_synthetic",
    "table_alphas",
    "zipf_pmf",
    "zipf_ranks",
]

INDEX_DISTS = ("uniform", "zipf")
POOLINGS = ("fixed", "uniform", "heavy", "bursty")

_DENSE, _TABLE, _PERM, _BURST, _ALPHA = 0, 1, 2, 3, 4


def _stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence(seed, spawn_key=key)))


# -- Zipf by rejection-inversion ------------------------------------------------------------


def _log1p_over_x(x: np.ndarray) -> np.ndarray:
    small = np.abs(x) < 1e-8
    safe = np.where(small, 1.0, x)
    return np.where(small, 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x)), np.log1p(safe) / safe)


def _expm1_over_x(x: np.ndarray) -> np.ndarray:
    small = np.abs(x) < 1e-8
    safe = np.where(small, 1.0, x)
    return np.where(
        small, 1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x)), np.expm1(safe) / safe
    )


class _ZipfSampler:
    """Rejection-inversion for ``P(k) ~ k**-s`` on 1..n (numerically stable near s = 1)."""

    def __init__(self, n: int, s: float):
        self.n, self.s = n, s
        self.h_x1 = float(self._H(np.array(1.5))) - 1.0
        self.h_n = float(self._H(np.array(n + 0.5)))
        self.squeeze = 2.0 - float(self._H_inv(self._H(np.array(2.5)) - self._h(np.array(2.0))))

    def _h(self, x: np.ndarray) -> np.ndarray:
        return np.exp(-self.s * np.log(x))

    def _H(self, x: np.ndarray) -> np.ndarray:  # integral of x**-s, shifted to H(1) = 0
        log_x = np.log(x)
        return _expm1_over_x((1.0 - self.s) * log_x) * log_x

    def _H_inv(self, y: np.ndarray) -> np.ndarray:
        t = np.maximum(y * (1.0 - self.s), -1.0)
        return np.exp(_log1p_over_x(t) * y)

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        out = np.empty(size, dtype=np.int64)
        todo = np.arange(size)
        while todo.size:
            u = self.h_n + rng.random(todo.size) * (self.h_x1 - self.h_n)
            x = self._H_inv(u)
            k = np.clip(np.floor(x + 0.5), 1, self.n)
            ok = (k - x <= self.squeeze) | (u >= self._H(k + 0.5) - self._h(k))
            out[todo[ok]] = k[ok].astype(np.int64)
            todo = todo[~ok]
        return out


def zipf_ranks(rng: np.random.Generator, n: int, alpha: float, size: int) -> np.ndarray:
    """``size`` popularity ranks in 1..n with ``P(k) = k**-alpha / sum_j j**-alpha``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"zipf_alpha must be finite and > 0, got {alpha!r}")
    if n == 1:
        return np.ones(size, dtype=np.int64)
    return _ZipfSampler(n, float(alpha)).draw(rng, size)


def zipf_pmf(n: int, alpha: float, ranks: np.ndarray | int) -> np.ndarray:
    """Exact probabilities of ``ranks`` under Zipf truncated to n (for checks; O(n))."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    return weights[np.asarray(ranks) - 1] / weights.sum()


def affine_permutation(rng: np.random.Generator, n: int) -> tuple[int, int]:
    """A seeded bijection of 0..n-1, ``x -> (a * x + c) mod n``, as ``(a, c)``."""
    if n <= 2:
        return 1, int(rng.integers(0, n))
    while True:
        a = int(rng.integers(1, n))
        if math.gcd(a, n) == 1:
            return a, int(rng.integers(0, n))


# -- pooling --------------------------------------------------------------------------------


class TableSpec:
    """The resolved knobs of one table (global settings with its overrides applied)."""

    KEYS = ("index_dist", "zipf_alpha", "pooling", "pooling_k", "pooling_max", "pooling_sigma")

    def __init__(
        self,
        index_dist: str,
        zipf_alpha: float,
        pooling: str,
        pooling_k: int,
        pooling_max: int | None,
        pooling_sigma: float,
    ):
        if index_dist not in INDEX_DISTS:
            raise ValueError(f"index_dist must be one of {INDEX_DISTS}, got {index_dist!r}")
        if isinstance(zipf_alpha, bool) or not isinstance(zipf_alpha, numbers.Real):
            raise ValueError(f"zipf_alpha must be a number > 0, got {zipf_alpha!r}")
        if not (zipf_alpha > 0 and math.isfinite(zipf_alpha)):
            raise ValueError(f"zipf_alpha must be finite and > 0, got {zipf_alpha!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if isinstance(pooling_k, bool) or not isinstance(pooling_k, numbers.Integral):
            raise ValueError(f"pooling_k must be a positive integer, got {pooling_k!r}")
        if pooling_k < 1:
            raise ValueError(f"pooling_k must be a positive integer, got {pooling_k!r}")
        if pooling_max is None:
            heavy = pooling in ("heavy", "bursty")
            pooling_max = 20 * int(pooling_k) if heavy else int(pooling_k)
        if isinstance(pooling_max, bool) or not isinstance(pooling_max, numbers.Integral):
            raise ValueError(f"pooling_max must be a positive integer, got {pooling_max!r}")
        if pooling in ("heavy", "bursty") and pooling_max < pooling_k:
            raise ValueError(f"pooling_max={pooling_max} must be >= pooling_k={pooling_k}")
        if not (pooling_sigma >= 0 and math.isfinite(pooling_sigma)):
            raise ValueError(f"pooling_sigma must be finite and >= 0, got {pooling_sigma!r}")
        self.index_dist, self.zipf_alpha = index_dist, float(zipf_alpha)
        self.pooling, self.pooling_k = pooling, int(pooling_k)
        self.pooling_max, self.pooling_sigma = int(pooling_max), float(pooling_sigma)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.KEYS}


def burst_factor(rng: np.random.Generator, spec: TableSpec) -> int:
    """One batch's pooling factor of a ``bursty`` table: lognormal, median ``pooling_k``."""
    k = spec.pooling_k * math.exp(spec.pooling_sigma * rng.standard_normal())
    return int(min(max(round(k), 1), spec.pooling_max))


def draw_lengths(
    rng: np.random.Generator, spec: TableSpec, batch_size: int, factor: int | None = None
) -> np.ndarray:
    """Bag sizes of one table for one batch, int32, all in ``1..pooling_max``.

    ``factor`` is the batch's pooling factor of a ``bursty`` table (:func:`burst_factor`).
    """
    k = spec.pooling_k
    if spec.pooling == "bursty":
        if factor is None:
            raise ValueError("a bursty table needs the batch's pooling factor")
        return np.full(batch_size, factor, dtype=np.int32)
    if spec.pooling == "fixed":
        return np.full(batch_size, k, dtype=np.int32)
    if spec.pooling == "uniform":
        return rng.integers(1, k + 1, size=batch_size).astype(np.int32)
    sizes = np.rint(k * np.exp(spec.pooling_sigma * rng.standard_normal(batch_size)))
    return np.clip(sizes, 1, spec.pooling_max).astype(np.int32)


# -- the generator --------------------------------------------------------------------------


def table_alphas(
    num_tables: int,
    seed: int,
    zipf_alpha: float | Sequence[float],
    zipf_alpha_range: Sequence[float] | None = None,
) -> list[float]:
    """Each table's Zipf exponent: one for all, a list, or drawn from a range by the seed."""
    if zipf_alpha_range is not None:
        bounds = list(zipf_alpha_range)
        if len(bounds) != 2 or not all(
            isinstance(b, numbers.Real) and not isinstance(b, bool) for b in bounds
        ):
            raise ValueError(f"zipf_alpha_range must be (low, high), got {zipf_alpha_range!r}")
        lo, hi = float(bounds[0]), float(bounds[1])
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ValueError(f"zipf_alpha_range needs 0 < low <= high, got {zipf_alpha_range!r}")
        return [float(a) for a in _stream(seed, _ALPHA).uniform(lo, hi, num_tables)]
    if isinstance(zipf_alpha, Sequence) and not isinstance(zipf_alpha, str):
        if len(zipf_alpha) != num_tables:
            raise ValueError(f"zipf_alpha has {len(zipf_alpha)} exponents for {num_tables} tables")
        return list(zipf_alpha)
    return [zipf_alpha] * num_tables


def _resolve_specs(
    num_tables: int,
    defaults: dict[str, Any],
    per_table: Mapping[int, Mapping[str, Any]] | None,
    alphas: Sequence[float] | None = None,
) -> list[TableSpec]:
    per_table = dict(per_table or {})
    for t, over in per_table.items():
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t < num_tables:
            raise ValueError(f"per_table key {t!r} is not a table id in 0..{num_tables - 1}")
        unknown = sorted(set(over) - set(TableSpec.KEYS))
        if unknown:
            raise ValueError(
                f"per_table[{t}] has unknown key(s) {unknown}; known: {list(TableSpec.KEYS)}"
            )
    specs = []
    for t in range(num_tables):
        try:
            own = {"zipf_alpha": alphas[t]} if alphas is not None else {}
            specs.append(TableSpec(**{**defaults, **own, **per_table.get(t, {})}))
        except ValueError as exc:
            where = f"per_table[{t}]: " if t in per_table else ""
            raise ValueError(f"{where}{exc}") from None
    return specs


def generate_synthetic(
    out_dir: str | Path,
    config: ModelConfig | str,
    num_batches: int,
    batch_size: int,
    seed: int = 0,
    *,
    index_dist: str = "uniform",
    zipf_alpha: float | Sequence[float] = 1.05,
    zipf_alpha_range: Sequence[float] | None = None,
    pooling: str = "fixed",
    pooling_k: int = 1,
    pooling_max: int | None = None,
    pooling_sigma: float = 1.0,
    per_table: Mapping[int, Mapping[str, Any]] | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Path:
    """Write ``num_batches`` synthetic batches for ``config`` to ``out_dir``; returns it.

    ``per_table`` maps a table id to overrides of the six knobs (``index_dist``,
    ``zipf_alpha``, ``pooling``, ``pooling_k``, ``pooling_max``, ``pooling_sigma``).
    ``zipf_alpha`` may be a list (one exponent per table); ``zipf_alpha_range=(lo, hi)``
    draws each table's exponent from the seed instead.
    ``progress=None`` shows a bar only on a terminal.
    """
    if isinstance(config, str):
        config = get_config(config)
    for key, value in (("num_batches", num_batches), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    alphas = table_alphas(config.num_tables, int(seed), zipf_alpha, zipf_alpha_range)
    defaults = {
        "index_dist": index_dist,
        "zipf_alpha": alphas[0],
        "pooling": pooling,
        "pooling_k": pooling_k,
        "pooling_max": pooling_max,
        "pooling_sigma": pooling_sigma,
    }
    specs = _resolve_specs(config.num_tables, defaults, per_table, alphas)
    rows = config.rows
    samplers: list[_ZipfSampler | None] = []
    perms: list[tuple[int, int]] = []
    for t, spec in enumerate(specs):
        zipf = spec.index_dist == "zipf" and rows[t] > 1
        samplers.append(_ZipfSampler(rows[t], spec.zipf_alpha) if zipf else None)
        perms.append(affine_permutation(_stream(seed, _PERM, t), rows[t]))

    writer = DatasetWriter(out_dir, config, batch_size, labels=False, overwrite=overwrite)
    try:
        bar = tqdm(
            range(num_batches),
            desc=f"synthetic {config.name}",
            unit="batch",
            disable=(not sys.stderr.isatty()) if progress is None else not progress,
        )
        for b in bar:
            dense = _stream(seed, _DENSE, b).random((batch_size, config.num_dense), np.float32)
            lengths = np.empty((config.num_tables, batch_size), dtype=np.int32)
            parts = []
            for t, spec in enumerate(specs):
                rng = _stream(seed, _TABLE, b, t)
                factor = None
                if spec.pooling == "bursty":
                    factor = burst_factor(_stream(seed, _BURST, b, t), spec)
                lengths[t] = draw_lengths(rng, spec, batch_size, factor)
                count = int(lengths[t].sum(dtype=np.int64))
                sampler = samplers[t]
                if sampler is None:
                    parts.append(rng.integers(0, rows[t], size=count, dtype=np.int64))
                else:
                    a, c = perms[t]
                    ranks = sampler.draw(rng, count)
                    parts.append((a * (ranks - 1) + c) % rows[t])
            writer.add(dense, lengths, np.concatenate(parts))
        params = {
            "generator": "synthetic",
            "dense": "uniform[0,1)",
            "defaults": {
                **defaults,
                "zipf_alpha": (
                    list(zipf_alpha)
                    if isinstance(zipf_alpha, Sequence) and not isinstance(zipf_alpha, str)
                    else zipf_alpha
                ),
                "zipf_alpha_range": (
                    list(zipf_alpha_range) if zipf_alpha_range is not None else None
                ),
            },
            "per_table": {str(t): dict(v) for t, v in sorted((per_table or {}).items())},
            "tables": [
                {
                    **spec.to_dict(),
                    "permutation": list(perms[t]) if samplers[t] is not None else None,
                }
                for t, spec in enumerate(specs)
            ],
        }
        return writer.finish("synthetic", int(seed), params)
    except BaseException:
        writer.abort()
        raise
