"""Ideal makespan of an exchange sequence under a lag bound, and a scale-out simulation.

Measured speedups of the bounded lag synchronous (BLS) alltoallv only mean something next to
the best any exchange could do with the same per-rank work. This module computes that limit
from a work matrix ``w[r, i]``: the local work of rank ``r`` in iteration ``i`` in seconds
(compute plus injected delay, waits excluded), for ranks ``r = 0..P-1`` and iterations
``i = 0..N-1``.

The model (our own formalisation of the semantics in DESIGN.md; the exchange itself is
taken as free, so every number here is a lower bound on a real run):

- an iteration is its local work followed by a post; rank ``r`` posts iteration ``i`` at
  ``finish(r, i) = start(r, i) + w[r, i]``;
- rank ``r`` may start iteration ``i`` once it has finished its own iteration ``i-1`` and
  every rank has posted iteration ``i-L-1``::

      start(r, i) = max(finish(r, i-1), max_q finish(q, i-L-1))

  with terms for negative iteration numbers dropped (time starts at 0);
- the run ends when every rank has completed every iteration; completing iteration ``j``
  anywhere needs every rank to have posted ``j``, and each rank posts its iterations in
  order, so the makespan is ``max_r finish(r, N-1)``.

``L = 0`` is the bulk-synchronous exchange: every iteration costs its slowest rank, so the
makespan is ``sum_i max_r w[r, i]``. With no bound each rank runs free and the makespan is
``max_r sum_i w[r, i]``. Any ``L`` lies between the two, and a larger ``L`` never makes it
worse, because the gate ``i-L-1`` then refers to an earlier, already finished iteration.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from bls_dlrm.delays import DelaySpec

__all__ = [
    "ideal_makespan",
    "ideal_speedup",
    "makespan_sync",
    "makespan_unbounded",
    "simulate_scale_out",
    "start_times",
    "timeline",
]


def _as_work(work: np.ndarray) -> np.ndarray:
    """Validate a work matrix and return it as float64; bad input fails here, not deep inside."""
    arr = np.asarray(work)
    if arr.ndim != 2:
        raise ValueError(f"work must be a 2-D array (ranks, iterations), got shape {arr.shape}")
    if arr.shape[0] < 1:
        raise ValueError("work must have at least one rank (row)")
    if arr.dtype.kind not in "iuf":  # signed, unsigned, floating; not bool or complex
        raise ValueError(f"work must hold real numbers of seconds, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError("work must be finite (no NaN or infinity)")
    if np.any(arr < 0):
        raise ValueError("work must be non-negative seconds")
    return arr


def _lag_gate(lag_bound: int | float | None, iterations: int) -> int | None:
    """Normalise a lag bound: an int ``L >= 0``, or ``None`` when no gate can ever bind.

    ``None`` and ``math.inf`` mean unbounded; a finite bound ``L >= N-1`` is unbounded too for
    ``N`` iterations, since the gate ``i-L-1`` is then negative for every iteration.
    """
    if lag_bound is None:
        return None
    if isinstance(lag_bound, bool):
        raise ValueError("lag_bound must be an int >= 0, None or math.inf, got a bool")
    if isinstance(lag_bound, numbers.Integral):
        lag = int(lag_bound)
    elif isinstance(lag_bound, numbers.Real) and math.isinf(lag_bound) and lag_bound > 0:
        return None
    else:
        raise ValueError(f"lag_bound must be an int >= 0, None or math.inf, got {lag_bound!r}")
    if lag < 0:
        raise ValueError(f"lag_bound must be >= 0, got {lag}")
    return None if lag >= iterations - 1 else lag


def timeline(
    work: np.ndarray, lag: int | None, exchange_s: float = 0.0, overhead_s: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The recurrence of the module docstring: ``(start, finish, complete)``.

    ``work`` is a validated ranks x iterations matrix, ``lag`` a gate from
    :func:`_lag_gate` (None: unbounded). ``start`` and ``finish`` (= post) have the shape
    of ``work``; ``complete[i]`` is when exchange ``i`` completes, the last post of
    iteration ``i`` plus ``exchange_s``. A rank's iteration costs its work plus
    ``overhead_s``. With both costs 0 (the ideal) it is this module's free exchange;
    :mod:`bls_dlrm.analysis.simulate` charges them. One vectorised step per iteration (O(N*P)) on
    the transposed matrices, whose rows (iterations) are contiguous.
    """
    ranks, iterations = work.shape
    wt = np.ascontiguousarray(work.T)
    if overhead_s:
        wt = wt + overhead_s
    start_t = np.empty_like(wt)
    finish_t = np.empty_like(wt)
    complete = np.empty(iterations, dtype=np.float64)
    own = np.zeros(ranks, dtype=np.float64)
    for i in range(iterations):
        gate = -1 if lag is None else i - lag - 1
        s = np.maximum(own, complete[gate]) if gate >= 0 else own
        start_t[i] = s
        own = finish_t[i]
        np.add(s, wt[i], out=own)
        complete[i] = own.max() + exchange_s
    return start_t.T, finish_t.T, complete


def start_times(work: np.ndarray, lag_bound: int | float | None) -> np.ndarray:
    """Start time of every (rank, iteration) under lag bound ``L``, shape of ``work``.

    The recurrence of the module docstring (:func:`timeline` with a free exchange).
    Finish (= post) times are ``start_times(work, L) + work``; timeline figures draw both.
    """
    w = _as_work(work)
    return timeline(w, _lag_gate(lag_bound, w.shape[1]))[0]


def ideal_makespan(work: np.ndarray, lag_bound: int | float | None) -> float:
    """Makespan of a free exchange with lag bound ``L``: ``max_r finish(r, N-1)``.

    The run is over when every rank has completed every iteration; completion of iteration
    ``j`` needs all ranks to have posted ``j``, so the makespan is the last post of the last
    iteration. ``lag_bound`` None or ``math.inf`` means unbounded. Zero iterations take 0 s.
    """
    w = _as_work(work)
    if w.shape[1] == 0:
        _lag_gate(lag_bound, 0)
        return 0.0
    start = start_times(w, lag_bound)
    return float(np.max(start[:, -1] + w[:, -1]))


def makespan_sync(work: np.ndarray) -> float:
    """Closed form for ``L = 0``: each iteration costs its slowest rank, ``sum_i max_r w``."""
    w = _as_work(work)
    if w.shape[1] == 0:
        return 0.0
    return float(w.max(axis=0).sum())


def makespan_unbounded(work: np.ndarray) -> float:
    """Closed form for ``L = inf``: the busiest rank alone decides, ``max_r sum_i w``."""
    w = _as_work(work)
    return float(w.sum(axis=1).max())


def ideal_speedup(work: np.ndarray, lag_bound: int | float | None) -> float:
    """Best speedup lag bound ``L`` can give over the synchronous exchange on this work.

    ``makespan_sync(work) / ideal_makespan(work, L)``; measured BLS speedups are reported as a
    fraction of this. Work that is all zero has nothing to speed up, so the answer is 1.0.
    """
    ideal = ideal_makespan(work, lag_bound)
    sync = makespan_sync(work)
    if ideal == 0.0:
        return 1.0
    return sync / ideal


def simulate_scale_out(
    delay: DelaySpec,
    ranks: int,
    iterations: int,
    base_work_s: float | Sequence[float] | np.ndarray,
    lag_bounds: Sequence[int | float | None] = (0, 1, 2, 4, 8, None),
) -> list[dict[str, object]]:
    """Simulation, not measurement: ideal makespans at a rank count we cannot run.

    The work matrix is ``base + delay.schedule(ranks, iterations)``. ``base_work_s`` is the
    per-iteration local cost without delays, the same on every rank: a scalar, or a 1-D
    sequence of (for example measured) per-iteration costs, tiled or truncated to
    ``iterations``. Returns one row per lag bound, each marked ``"simulated": True`` so no
    table or figure can pass it off as a measured run; ``lag_bound`` None means unbounded.
    """
    if not isinstance(ranks, numbers.Integral) or isinstance(ranks, bool) or ranks < 1:
        raise ValueError(f"ranks must be an int >= 1, got {ranks!r}")
    if not isinstance(iterations, numbers.Integral) or isinstance(iterations, bool):
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    base = np.asarray(base_work_s, dtype=np.float64)
    if base.ndim == 0:
        base = np.full(iterations, float(base))
    elif base.ndim == 1 and base.size > 0:
        base = base[np.arange(iterations) % base.size]
    else:
        raise ValueError(
            f"base_work_s must be a scalar or a non-empty 1-D sequence, got shape {base.shape}"
        )
    work = _as_work(base[np.newaxis, :] + delay.schedule(ranks, iterations))
    sync = makespan_sync(work)
    rows: list[dict[str, object]] = []
    for lag_bound in lag_bounds:
        makespan = ideal_makespan(work, lag_bound)
        unbounded = lag_bound is None or (isinstance(lag_bound, float) and math.isinf(lag_bound))
        rows.append(
            {
                "simulated": True,
                "delay_kind": delay.kind,
                "ranks": int(ranks),
                "iterations": int(iterations),
                "lag_bound": None if unbounded else int(lag_bound),
                "makespan_s": makespan,
                "sync_makespan_s": sync,
                "ideal_speedup": sync / makespan if makespan > 0 else 1.0,
            }
        )
    return rows
