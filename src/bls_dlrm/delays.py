"""Delay schedules ``d[rank, iteration]`` and the one point where delays are injected.

BLS only pays off when ranks are unbalanced, so the sweep injects delays on purpose. A
schedule is a pure function of its parameters and seed: every rank computes the whole
matrix itself and reads its own row, so the ranks agree on it without communicating, the
theory module can be fed the very same matrix, and the logs can record the spec that
regenerates it. Nothing here reads rank-local state.

Draws are made iteration-major, each random quantity from its own child stream of the seed,
so a longer run extends a shorter one with the same seed: ``schedule(P, 2 * N)[:, :N]``
equals ``schedule(P, N)``.

Kinds (``DelaySpec.kind``):

- ``none``: no delay.
- ``straggler``: fixed ranks (default: the last rank) delayed ``size_s`` every iteration.
- ``random``: every (rank, iteration) delayed independently with probability ``p``; the size
  is ``size_s`` (``distribution="constant"``), exponential with mean ``size_s``, or
  lognormal with median ``size_s`` and shape ``sigma``.
- ``rotating``: exactly one uniformly drawn rank per iteration delayed ``size_s``. The total
  delay is the same as one straggler's, but spread over ranks, so a lag bound can hide it:
  the best case for BLS.
- ``heterogeneous``: per-rank speed factors ``factors[r] >= 1`` on a per-iteration base work
  of ``size_s`` seconds; a factor-f rank takes ``f * size_s``, i.e. is delayed
  ``(f - 1) * size_s`` every iteration.
- ``trace``: a (ranks, iterations) matrix of seconds from a ``.npy`` or CSV file at
  ``path``, tiled or truncated along iterations. ``size_s`` is not used.

How a delay is spent (``DelaySpec.mode``):

- ``busy`` (default): the delayed rank computes for the delay on its own core
  (:func:`cpu_work`). With one rank bound per core this is what a slower rank is: it does
  more work, and it cannot hand its core to another rank while it is "delayed", so the
  work the theory counts does not depend on the collective being measured.
- ``sleep``: the rank sleeps (:func:`sleep_for`), leaving its core idle; an option for
  experiments that model waiting on something outside the node.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DISTRIBUTIONS", "KINDS", "MODES", "DelaySpec", "cpu_work", "inject", "sleep_for"]

KINDS = ("none", "straggler", "random", "rotating", "heterogeneous", "trace")
MODES = ("busy", "sleep")
DISTRIBUTIONS = ("constant", "exponential", "lognormal")


def _check_seconds(name: str, value: float) -> float:
    """A finite, non-negative number of seconds; the error names the field."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0 seconds, got {value!r}")
    return value


@dataclass(frozen=True)
class DelaySpec:
    """A seeded delay schedule; ``schedule(ranks, iterations)`` gives the matrix in seconds.

    Fields a kind does not use are ignored by it but kept, so ``to_dict`` round-trips. Checks
    that need the rank count (straggler ranks in range, one factor per rank, the trace's
    rank count and file) run in ``schedule``, since a config is validated before the world
    size or generated trace files exist.
    """

    kind: str = "none"
    size_s: float = 0.0
    ranks: tuple[int, ...] | None = None
    p: float = 0.1
    distribution: str = "constant"
    sigma: float = 0.5
    factors: tuple[float, ...] | None = None
    path: str | None = None
    seed: int = 0
    mode: str = "busy"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "size_s", _check_seconds("size_s", self.size_s))
        if isinstance(self.p, bool) or not isinstance(self.p, numbers.Real):
            raise ValueError(f"p must be a probability in [0, 1], got {self.p!r}")
        if not 0.0 <= float(self.p) <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {self.p!r}")
        object.__setattr__(self, "p", float(self.p))
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}"
            )
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, numbers.Real):
            raise ValueError(f"sigma must be a number >= 0, got {self.sigma!r}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"sigma must be finite and >= 0, got {self.sigma!r}")
        object.__setattr__(self, "sigma", float(self.sigma))
        if self.ranks is not None:
            ranks = tuple(self.ranks) if not isinstance(self.ranks, str) else None
            if ranks is None or not all(
                isinstance(r, numbers.Integral) and not isinstance(r, bool) and r >= 0
                for r in ranks
            ):
                raise ValueError(f"ranks must be a list of rank numbers >= 0, got {self.ranks!r}")
            object.__setattr__(self, "ranks", tuple(sorted({int(r) for r in ranks})))
        if self.factors is not None:
            factors = tuple(self.factors) if not isinstance(self.factors, str) else None
            if factors is None or not all(
                isinstance(f, numbers.Real)
                and not isinstance(f, bool)
                and math.isfinite(f)
                and f >= 1.0
                for f in factors
            ):
                raise ValueError(
                    f"factors must be a list of finite speed factors >= 1, got {self.factors!r}"
                )
            object.__setattr__(self, "factors", tuple(float(f) for f in factors))
        if self.kind == "heterogeneous" and self.factors is None:
            raise ValueError("factors must be given for kind 'heterogeneous'")
        if self.path is not None:
            object.__setattr__(self, "path", str(self.path))
        if self.kind == "trace" and not self.path:
            raise ValueError("path must name a trace file (.npy or .csv) for kind 'trace'")
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, numbers.Integral)
            or self.seed < 0
        ):
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DelaySpec:
        """Build from a config section or a logged ``to_dict``; unknown keys are errors.

        An unknown key is almost always a typo (``prob`` for ``p``) that would otherwise run
        the wrong experiment silently.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown delay field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready dict of every field (tuples as lists), for configs and logs."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def _rngs(self, streams: int) -> list[np.random.Generator]:
        """Independent child generators of the seed, one per random quantity."""
        children = np.random.SeedSequence(self.seed).spawn(streams)
        return [np.random.default_rng(child) for child in children]

    def schedule(self, ranks: int, iterations: int) -> np.ndarray:
        """Delay in seconds for every (rank, iteration): float64 of shape (ranks, iterations)."""
        if isinstance(ranks, bool) or not isinstance(ranks, numbers.Integral) or ranks < 1:
            raise ValueError(f"ranks must be an int >= 1, got {ranks!r}")
        if (
            isinstance(iterations, bool)
            or not isinstance(iterations, numbers.Integral)
            or iterations < 0
        ):
            raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
        ranks, iterations = int(ranks), int(iterations)
        out = np.zeros((ranks, iterations), dtype=np.float64)
        kind = self.kind
        if kind == "none":
            return out
        if kind == "straggler":
            slow = self.ranks if self.ranks is not None else (ranks - 1,)
            bad = [r for r in slow if r >= ranks]
            if bad:
                raise ValueError(f"ranks {bad} out of range for {ranks} ranks (0..{ranks - 1})")
            out[list(slow), :] = self.size_s
            return out
        if kind == "rotating":
            (rng,) = self._rngs(1)
            which = rng.integers(0, ranks, size=iterations)
            out[which, np.arange(iterations)] = self.size_s
            return out
        if kind == "random":
            return self._random(ranks, iterations)
        if kind == "heterogeneous":
            assert self.factors is not None
            if len(self.factors) != ranks:
                raise ValueError(
                    f"factors has {len(self.factors)} entries but there are {ranks} ranks"
                )
            out[:] = ((np.asarray(self.factors) - 1.0) * self.size_s)[:, np.newaxis]
            return out
        return self._trace(ranks, iterations)

    def _random(self, ranks: int, iterations: int) -> np.ndarray:
        # Drawn as (iterations, ranks) and transposed so that longer runs extend shorter ones.
        hit_rng, size_rng = self._rngs(2)
        hit = hit_rng.random((iterations, ranks)) < self.p
        shape = (iterations, ranks)
        if self.distribution == "constant" or self.size_s == 0.0:
            size = np.full(shape, self.size_s)
        elif self.distribution == "exponential":
            size = size_rng.exponential(self.size_s, shape)
        else:
            size = size_rng.lognormal(math.log(self.size_s), self.sigma, shape)
        return np.ascontiguousarray(np.where(hit, size, 0.0).T, dtype=np.float64)

    def _trace(self, ranks: int, iterations: int) -> np.ndarray:
        assert self.path is not None
        path = Path(self.path)
        if not path.is_file():
            raise ValueError(f"path: trace file {str(path)!r} does not exist")
        try:
            if path.suffix.lower() == ".npy":
                data = np.load(path, allow_pickle=False)
            else:
                data = np.loadtxt(path, delimiter=",", comments="#", ndmin=2, dtype=np.float64)
        except (OSError, ValueError) as exc:
            raise ValueError(f"path: cannot read trace file {str(path)!r}: {exc}") from exc
        data = np.asarray(data, dtype=np.float64)
        if data.ndim == 1:
            data = data[np.newaxis, :]
        if data.ndim != 2 or data.shape[1] == 0:
            raise ValueError(
                f"path: trace {str(path)!r} must be a non-empty (ranks, iterations) matrix, "
                f"got shape {data.shape}"
            )
        if data.shape[0] != ranks:
            raise ValueError(
                f"path: trace {str(path)!r} has {data.shape[0]} ranks (rows), run has {ranks}"
            )
        if not np.all(np.isfinite(data)) or np.any(data < 0):
            raise ValueError(f"path: trace {str(path)!r} must hold finite seconds >= 0")
        cols = np.arange(iterations) % data.shape[1]
        return np.ascontiguousarray(data[:, cols], dtype=np.float64)


def resolve_factor(delay: Mapping[str, Any], work_s: float, seed: int) -> dict[str, Any]:
    """A config's delay section as a run config takes it: ``factor`` (a multiple of the
    work per iteration, ``work_s``) becomes ``size_s`` (rounded to the nanosecond), and
    the schedule gets ``seed``."""
    out = {k: v for k, v in delay.items() if k != "factor"}
    if "factor" in delay:
        out["size_s"] = round(delay["factor"] * work_s, 9)
    out["seed"] = seed
    return out


def inject(seconds: float, mode: str = "busy") -> float:
    """Delay this rank by ``seconds``; returns the time actually spent (monotonic clock).

    The one documented injection point of the inference loop. ``mode="busy"`` computes on
    this rank's core (:func:`cpu_work`), ``mode="sleep"`` sleeps (:func:`sleep_for`). Either
    way the call returns no earlier than ``seconds`` after it started, and the result is the
    measured duration (the logs record it, since a sleep may overshoot).
    """
    if mode == "busy":
        return cpu_work(seconds)
    if mode == "sleep":
        return sleep_for(seconds)
    raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def sleep_for(seconds: float) -> float:
    """Sleep ``seconds`` (repeated until the full time has passed); returns the time slept."""
    seconds = _check_seconds("seconds", seconds)
    begin = time.monotonic()
    if seconds == 0.0:
        return 0.0
    deadline = begin + seconds
    now = begin
    while now < deadline:
        time.sleep(deadline - now)
        now = time.monotonic()
    return now - begin


_WORK_SIZE = 1024  # floats per step: a few microseconds, so a call overshoots by little


def cpu_work(seconds: float) -> float:
    """Compute on this core for ``seconds``; returns the time actually spent (monotonic clock).

    The work is a chain of element-wise numpy operations on a small vector, each step
    depending on the last (``x <- sqrt(x * x + 1) / 2``, converging to 1/sqrt(3)), so it can
    be neither skipped nor reordered, and it stays on one core: numpy runs element-wise
    operations in the calling thread, unlike matrix products that a threaded BLAS may
    spread over other cores (whose ranks the delay must not slow). The loop ends at the
    first step past the deadline, so a call overshoots by one step (microseconds).
    """
    seconds = _check_seconds("seconds", seconds)
    begin = time.monotonic()
    if seconds == 0.0:
        return 0.0
    deadline = begin + seconds
    x = np.linspace(0.0, 1.0, _WORK_SIZE)
    tmp = np.empty_like(x)
    now = begin
    while now < deadline:
        for _ in range(8):
            np.multiply(x, x, out=tmp)
            tmp += 1.0
            np.sqrt(tmp, out=x)
            x *= 0.5
        now = time.monotonic()
    if not np.isfinite(x[0]):  # pragma: no cover - keeps the result observable
        raise ArithmeticError("cpu_work diverged")
    return now - begin
