"""Table placement: which rank holds which embedding tables.

Placement is one of the sweep's skew knobs: it decides how much lookup work and how many
bytes of the alltoallv each rank owns, and so whether ranks run balanced or not.

- ``contiguous``: the reference DLRM's placement. Tables are dealt in order in contiguous
  blocks, the first ``T mod P`` ranks getting one extra table. Ignores sizes and costs.
- ``balanced``: greedy longest-processing-time: tables by decreasing cost, each to the rank
  with the least cost so far (ties: fewer tables, then lower rank). The cost defaults to
  the table's row count (balances memory); pass ``costs`` to balance something else, e.g.
  expected lookups per batch (pooling factor), which is what sets a rank's compute and
  the size of its part of the alltoallv.
- ``unbalanced``: deliberately skewed. Rank 0 takes the most expensive half of the tables
  (``ceil(T / 2)``, but leaving at least one table to every other rank); the rest are
  placed ``balanced`` among ranks 1..P-1. Rank 0 then does about half the lookups and
  sends about half the exchanged bytes: a built-in straggler without injected delays.
- ``hot``: the hot tables together. Tables by decreasing cost fill rank 0 until it holds
  about ``1/P`` of the total cost, then rank 1, and so on (the last rank takes the rest).
  Expected costs stay roughly balanced, but the few most expensive tables share a rank
  while the many cheap ones spread over the others. With per-batch pooling skew (the cost
  of a table varies from batch to batch, more so the hotter it is) the rank of the hot
  tables is the slow one in some iterations and the fast one in others: ranks unbalanced
  iteration by iteration, not on average. Pass ``costs`` = expected lookups per batch.

Every plan lists each table exactly once and gives every rank at least one table (fewer
tables than ranks is an error). Each rank's list is in increasing table order. Plans are
pure functions of their inputs, so every rank computes the same plan without talking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["PLAN_KINDS", "plan_shards"]

PLAN_KINDS = ("contiguous", "balanced", "unbalanced", "hot")


def _contiguous(num_tables: int, ranks: int) -> list[list[int]]:
    per, extra = divmod(num_tables, ranks)
    plan, start = [], 0
    for r in range(ranks):
        count = per + (1 if r < extra else 0)
        plan.append(list(range(start, start + count)))
        start += count
    return plan


def _greedy(tables: Sequence[int], costs: Sequence[float], ranks: int) -> list[list[int]]:
    order = sorted(tables, key=lambda t: (-costs[t], t))
    load = [0.0] * ranks
    plan: list[list[int]] = [[] for _ in range(ranks)]
    for t in order:
        r = min(range(ranks), key=lambda q: (load[q], len(plan[q]), q))
        plan[r].append(t)
        load[r] += costs[t]
    return [sorted(p) for p in plan]


def _hot(costs: Sequence[float], ranks: int) -> list[list[int]]:
    num_tables = len(costs)
    order = sorted(range(num_tables), key=lambda t: (-costs[t], t))
    target = sum(costs) / ranks
    plan: list[list[int]] = [[] for _ in range(ranks)]
    r, load = 0, 0.0
    for placed, t in enumerate(order):
        if plan[r] and r < ranks - 1:
            full = load + costs[t] / 2 > target  # adding t would overshoot more than undershoot
            needed = num_tables - placed <= ranks - 1 - r  # later ranks need the rest
            if full or needed:
                r, load = r + 1, 0.0
        plan[r].append(t)
        load += costs[t]
    return [sorted(p) for p in plan]


def plan_shards(
    table_rows: Sequence[int],
    ranks: int,
    kind: str = "contiguous",
    costs: Sequence[float] | None = None,
) -> list[list[int]]:
    """Table ids per rank for ``ranks`` ranks; see the module docstring for the kinds."""
    num_tables = len(table_rows)
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise ValueError(f"ranks must be a positive integer, got {ranks!r}")
    if kind not in PLAN_KINDS:
        raise ValueError(f"unknown sharding kind {kind!r}; known: {PLAN_KINDS}")
    if num_tables < ranks:
        raise ValueError(
            f"cannot shard {num_tables} tables over {ranks} ranks: every rank needs at least "
            f"one table (use at most {num_tables} ranks, or a config with more tables)"
        )
    if costs is None:
        costs = [float(r) for r in table_rows]
    else:
        costs = [float(c) for c in costs]
        if len(costs) != num_tables:
            raise ValueError(f"costs has {len(costs)} entries for {num_tables} tables")
        if any(not math.isfinite(c) or c < 0 for c in costs):
            raise ValueError(f"costs must be finite and >= 0, got {costs}")

    if kind == "contiguous":
        return _contiguous(num_tables, ranks)
    if kind == "balanced":
        return _greedy(range(num_tables), costs, ranks)
    if kind == "hot":
        return _hot(costs, ranks)
    # unbalanced
    if ranks == 1:
        return [list(range(num_tables))]
    heavy = min(math.ceil(num_tables / 2), num_tables - (ranks - 1))
    order = sorted(range(num_tables), key=lambda t: (-costs[t], t))
    rest = _greedy(order[heavy:], costs, ranks - 1)
    return [sorted(order[:heavy]), *rest]
