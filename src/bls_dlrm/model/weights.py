"""Deterministic weight initialisation that needs no communication.

Every rank builds only the parameters it holds, yet all ranks must agree with each other and
with the single-process oracle bit for bit. So no parameter's values may depend on which
other parameters a process creates, or in which order: each one draws from its own random
stream, keyed by ``(seed, part, index, chunk)`` through numpy's ``SeedSequence`` (a hash of
the key, stable across platforms), where ``part`` names table / bottom MLP / top MLP.

Large tables are drawn in fixed chunks of ``CHUNK_ROWS`` rows, each chunk its own stream, so
a table of tens of millions of rows fills on all cores in parallel while its values stay a
function of the key alone (not of the thread count). The generator is SFC64, numpy's
fastest, with float32 output: filling 10M x 16 floats takes well under a second per core.

Distributions follow the reference DLRM code (uniform embeddings, normal linear layers):

- table with ``n`` rows: ``U(-sqrt(1/n), sqrt(1/n))``;
- linear layer ``n_in -> n_out``: weight ``N(0, sqrt(2 / (n_in + n_out)))``, bias
  ``N(0, sqrt(1 / n_out))``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["CHUNK_ROWS", "PART_BOTTOM", "PART_TABLE", "PART_TOP", "linear_init", "table_init"]

PART_TABLE = 1
PART_BOTTOM = 2
PART_TOP = 3

#: Rows per independently seeded chunk of a table (part of the init's definition: changing
#: it changes every table of more than this many rows).
CHUNK_ROWS = 1 << 18


def stream(seed: int, *key: int) -> np.random.Generator:
    """The random stream of one parameter (chunk), independent of every other key."""
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence(seed, spawn_key=key)))


def _fill_uniform(out: np.ndarray, bound: float, seed: int, key: tuple[int, ...]) -> None:
    stream(seed, *key).random(out=out, dtype=np.float32)
    out *= np.float32(2.0 * bound)
    out -= np.float32(bound)


def table_init(
    seed: int, table: int, rows: int, dim: int, threads: int | None = None
) -> torch.Tensor:
    """Table ``table``'s weights, ``(rows, dim)`` float32, identical in every process."""
    weight = torch.empty(rows, dim, dtype=torch.float32)
    flat = weight.numpy()
    bound = math.sqrt(1.0 / rows)
    chunks = range((rows + CHUNK_ROWS - 1) // CHUNK_ROWS)

    def fill(c: int) -> None:
        part = flat[c * CHUNK_ROWS : (c + 1) * CHUNK_ROWS]
        _fill_uniform(part, bound, seed, (PART_TABLE, table, c))

    workers = max(1, min(len(chunks), threads or torch.get_num_threads()))
    if workers == 1:
        for c in chunks:
            fill(c)
    else:  # numpy releases the GIL while filling, so threads scale
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fill, chunks))
    return weight


def linear_init(
    seed: int, part: int, layer: int, n_in: int, n_out: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``(n_out, n_in)`` and bias ``(n_out,)`` of one MLP layer, as float32."""
    rng = stream(seed, part, layer)
    weight = rng.standard_normal((n_out, n_in), dtype=np.float32)
    weight *= np.float32(math.sqrt(2.0 / (n_in + n_out)))
    bias = rng.standard_normal(n_out, dtype=np.float32)
    bias *= np.float32(math.sqrt(1.0 / n_out))
    return torch.from_numpy(weight), torch.from_numpy(bias)
