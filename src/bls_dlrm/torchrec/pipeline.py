"""Pipelined sharded inference: TorchRec's three exchanges of a batch, each with lag L.

Notation: L lag bound, s step, N batches, W ranks.

Semantics. TorchRec's sharded EmbeddingBagCollection exchanges three times per batch, and
each exchange needs the previous one's result:

1. KJT splits: ``ebc.input_dist(ctx, kjt)`` posts the all-to-all of the per-rank lengths
   and values counts (one ``all_to_all_single(async_op=True)``) and returns an awaitable.
2. KJT tensors: its ``wait()`` reads the counts and posts the lengths and values
   all-to-alls, returning a second awaitable; that one's ``wait()`` gives the rank's
   tables' features for the whole global batch.
3. Pooled embeddings: ``ebc.compute_and_output_dist(ctx, features)`` looks them up and
   posts the all-to-all that hands every rank its samples' embeddings (a lazy awaitable).

``PipelinedInference.run`` keeps each of the three streams ``L`` steps deep. At step s it
posts the splits of batch s, then completes the splits of batch s - L (posting its
tensors), the tensors of batch s - 2L (looking them up and posting their embeddings, and
running the bottom MLP of that batch while they travel), and the embeddings of batch s - 3L
(interaction, over arch: predictions). Every wait is on an exchange this rank posted L steps
earlier, so it blocks only when a peer is more than L steps behind: a slow rank may lag L
whole steps before the fastest blocks, on all three exchanges alike. This is what keeps the
two-phase input distribution from synchronising every batch: the counts of batch s are
not needed until step s + L. Each stream holds at most L + 1 exchanges in flight; a batch
spends 3L steps from its first post to its predictions. ``L = 0`` is TorchRec's own
synchronous order (every awaitable resolved within the step).

The exchanges are posted in the same order on every rank (that is what numbers them on a
"bls" group), and completed in post order, as the BLS backend completes them. A "bls"
group needs a lag bound of at least :func:`group_lag_bound` so that its own rule (complete
exchange n - L_group - 1 before posting n) never waits earlier than this loop does.

Predictions are bit-identical for every L and backend: the same operations on the same
rows; only when they run changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torchrec.distributed.types import Awaitable
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from .kjt import check_features
from .model import ShardedDLRM, predict

__all__ = [
    "EXCHANGES_PER_BATCH",
    "PipelinedInference",
    "StepRecord",
    "group_lag_bound",
    "steps_ahead",
    "stock_forward",
]

#: All-to-alls of one batch: splits, lengths, values, (weights), pooled embeddings.
EXCHANGES_PER_BATCH = 5


def group_lag_bound(lag_bound: int) -> int:
    """The "bls" group lag bound under which a loop of lag bound L never blocks early.

    At most ``L + 1`` steps' exchanges are in flight, ``EXCHANGES_PER_BATCH`` per step at
    most; the group may then keep all of them.
    """
    return EXCHANGES_PER_BATCH * (lag_bound + 1)


@dataclass
class StepRecord:
    """One step of one rank: when it started, its waits, its work, its pipeline depth."""

    start: float  # monotonic clock (one per host)
    end: float
    wait_splits: float = 0.0
    wait_tensors: float = 0.0
    wait_output: float = 0.0
    delay: float = 0.0  # injected (included in work)
    in_flight: int = 0  # batches posted and not yet predicted, after this step's post

    @property
    def wait(self) -> float:
        return self.wait_splits + self.wait_tensors + self.wait_output

    @property
    def work(self) -> float:
        """Local work of the step (compute + injected delay), waits excluded."""
        return self.end - self.start - self.wait


Batch = tuple[torch.Tensor, KeyedJaggedTensor]


@dataclass
class PipelinedInference:
    """Inference of a sharded DLRM with lag bound ``lag_bound`` (module docstring)."""

    model: ShardedDLRM
    lag_bound: int
    _local_batch: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.lag_bound, bool) or not isinstance(self.lag_bound, int):
            raise TypeError(f"lag_bound must be an int, got {self.lag_bound!r}")
        if self.lag_bound < 0:
            raise ValueError(f"lag_bound must be >= 0, got {self.lag_bound}")

    def run(
        self,
        batches: Sequence[Batch],
        *,
        delays: Sequence[float] | None = None,
        inject: Callable[[float], float] | None = None,
        on_predictions: Callable[[int, torch.Tensor], None] | None = None,
    ) -> list[StepRecord]:
        """Predict every batch; ``on_predictions(i, p)`` gets batch i's (b,) predictions in
        order. ``delays[i]`` seconds are injected (``inject``) after step i's work."""
        n, lag = len(batches), self.lag_bound
        if delays is not None and len(delays) < n:
            raise ValueError(f"{len(delays)} delays for {n} batches")
        for dense, kjt in batches:
            self._check(dense, kjt)
        ebc, dlrm = self.model.ebc, self.model.dlrm
        splits: dict[int, object] = {}
        tensors: dict[int, object] = {}
        pooled: dict[int, object] = {}
        contexts: dict[int, object] = {}
        bottom: dict[int, torch.Tensor] = {}
        records: list[StepRecord] = []
        with torch.no_grad():
            for s in range(n + 3 * lag):
                rec = StepRecord(start=time.monotonic(), end=0.0)
                if s < n:
                    contexts[s] = ebc.create_context()
                    splits[s] = ebc.input_dist(contexts[s], batches[s][1])
                rec.in_flight = len(contexts)
                j = s - lag
                if 0 <= j < n:
                    rec.wait_splits = _block(splits[j])
                    tensors[j] = splits.pop(j).wait()
                j = s - 2 * lag
                if 0 <= j < n:
                    rec.wait_tensors = _block(tensors[j])
                    features = tensors.pop(j).wait()
                    pooled[j] = ebc.compute_and_output_dist(contexts[j], features)
                    bottom[j] = dlrm.dense_arch(batches[j][0])
                j = s - 3 * lag
                if 0 <= j < n:
                    rec.wait_output = _block(pooled[j])
                    embeddings = pooled.pop(j).wait()
                    predictions = predict(dlrm, bottom.pop(j), embeddings)
                    del contexts[j]
                    if on_predictions is not None:
                        on_predictions(j, predictions)
                if s < n and delays is not None and delays[s] > 0:
                    rec.delay = (inject or _sleep)(float(delays[s]))
                rec.end = time.monotonic()
                records.append(rec)
        return records

    def _check(self, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> None:
        if self._local_batch is None:
            self._local_batch = kjt.stride()
        check_features(kjt, self.model.keys, self._local_batch)
        if dense.shape[0] != self._local_batch:
            raise ValueError(
                f"dense features hold {dense.shape[0]} samples, the KJT {self._local_batch}"
            )


def steps_ahead(starts: Sequence[Sequence[float]]) -> list[int]:
    """How far each rank got ahead of its slowest peer, in whole steps.

    ``starts[r][s]`` is rank r's start of step s on one monotonic clock (ranks on one
    host). When rank r starts step s it has finished steps 0..s-1; a peer in step p has
    not begun steps p+1..s-1. Returned per rank: the largest count of such steps over its
    steps and peers. A loop of lag bound L never exceeds L (the slow rank lags L steps).
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in starts]
    out = []
    for r, mine in enumerate(arrays):
        worst = 0
        for q, peer in enumerate(arrays):
            if q == r or mine.size < 2:
                continue
            current = np.searchsorted(peer, mine[1:], side="right") - 1
            worst = max(worst, int(np.max(np.arange(mine.size - 1) - current)))
        out.append(worst)
    return out


def _works(awaitable, depth: int = 5) -> list[dist.Work]:
    """The ``torch.distributed`` Works inside a TorchRec awaitable (its exchanges)."""
    found: list[dist.Work] = []
    stack = [(awaitable, 0)]
    while stack:
        obj, level = stack.pop()
        if isinstance(obj, dist.Work):
            found.append(obj)
        elif level < depth and isinstance(obj, Awaitable | list | tuple):
            values = obj if isinstance(obj, list | tuple) else vars(obj).values()
            stack.extend((v, level + 1) for v in values)
    return found


def _block(awaitable) -> float:
    """Wait for the exchanges of ``awaitable`` only; the time blocked.

    TorchRec's ``wait()`` does more than wait (it posts the next exchange, builds the KJT
    or KeyedTensor); waiting its Works first (``Work.wait`` is idempotent) separates the
    time a peer kept this rank waiting from work, which the theory's ideal needs.
    """
    t = time.monotonic()
    for work in _works(awaitable):
        work.wait()
    return time.monotonic() - t


def _sleep(seconds: float) -> float:
    t = time.monotonic()
    time.sleep(seconds)
    return time.monotonic() - t


def stock_forward(model: ShardedDLRM, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
    """TorchRec as it is: ``DistributedModelParallel``'s forward, every exchange waited
    inside it; click probabilities (b,)."""
    check_features(kjt, model.keys, dense.shape[0])
    with torch.no_grad():
        return torch.sigmoid(model.dmp(dense, kjt)).reshape(-1)
