"""Single-process DLRM inference throughput: the model alone and from a dataset on disk.

The distributed runs only show the exchange's effect if the model itself is not the
bottleneck by accident, so its speed is measured on its own: (a) the forward on batches
already in memory as tensors, (b) end to end, reading each batch from a ``BatchStore``
(memory-mapped files, conversion to tensors included). Both are timed in the same process,
repetitions alternating between (a) and (b) so that a noisy shared machine affects them
alike; we report medians. A third variant, (c), runs the same weights through the forward
as the reference DLRM code writes it (``nn.Sequential`` MLPs, an embedding-bag module call
per table, ``torch.cat`` of the vectors, the lower triangle gathered with two index lists),
the baseline of the design's "at least as fast as the reference" target; the ratio of (a)
to (c) is measured side by side.

Wall-clock throughput is what the targets speak of; on a shared machine it also measures
the neighbours, so every variant is reported per CPU-second of this process as well
(``*_per_cpu_s``), which preemption does not inflate.

Run: ``python -m bls_dlrm.harness.bench_model --pooling 1`` (prints one JSON object).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bls_dlrm.data import BatchStore, generate_synthetic
from bls_dlrm.model import DLRM, SparseBatch, get_config

__all__ = ["bench_single_process", "reference_style_forward"]


def reference_style_forward(model: DLRM):
    """``f(dense, sparse)`` computing ``model``'s predictions the reference DLRM's way.

    Same weights and the same maths, so the predictions agree with ``model`` to float
    tolerance; only the way the ops are strung together differs (it allocates every
    activation afresh and gathers the triangle with advanced indexing).
    """
    dense_model, tables = model.dense, model.embeddings.tables

    def sequential(layers: nn.ModuleList, last: nn.Module) -> nn.Sequential:
        mods: list[nn.Module] = []
        for k, layer in enumerate(layers):
            mods += [layer, last if k == len(layers) - 1 else nn.ReLU()]
        return nn.Sequential(*mods)

    bottom = sequential(dense_model.bottom_layers, nn.ReLU())
    top = sequential(dense_model.top_layers, nn.Sigmoid())
    n = model.config.num_tables + 1
    li = torch.tensor([i for i in range(n) for j in range(i)])
    lj = torch.tensor([j for i in range(n) for j in range(i)])

    def forward(dense: torch.Tensor, sparse: SparseBatch) -> torch.Tensor:
        x = bottom(dense)
        ly = [table(*sparse.table(t)) for t, table in enumerate(tables)]
        vectors = torch.cat([x, *ly], dim=1).view(x.shape[0], -1, x.shape[1])
        gram = torch.bmm(vectors, torch.transpose(vectors, 1, 2))
        return top(torch.cat([x, gram[:, li, lj]], dim=1)).view(-1)

    return forward


def bench_single_process(
    config_name: str = "kaggle",
    max_rows: int | None = 100_000,
    batch_size: int = 2048,
    pooling: int = 1,
    batches: int = 16,
    threads: int = 1,
    *,
    repeats: int = 7,
    warmup: int = 1,
    index_dist: str = "uniform",
    seed: int = 0,
) -> dict[str, Any]:
    """Samples per second of DLRM inference, model only and end to end (medians).

    ``pooling`` indices per sample and table (fixed), ``batches`` batches per timed
    repetition, ``threads`` torch intra-op threads. Returns the settings, the medians
    (``model_samples_per_s``, ``end_to_end_samples_per_s``) and every repetition's value.
    """
    config = get_config(config_name, max_rows=max_rows, seed=seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_model_") as tmp:
            path = generate_synthetic(
                Path(tmp) / "data",
                config,
                batches,
                batch_size,
                seed,
                index_dist=index_dist,
                pooling="fixed",
                pooling_k=pooling,
                progress=False,
            )
            BatchStore(path, expect_config=config)  # verify the checksums once ...
            store = BatchStore(path, expect_config=config, verify=False)  # ... then skip
            in_memory = [
                (b.dense.clone(), SparseBatch(b.sparse.indices.clone(), b.sparse.offsets.clone()))
                for b in store
            ]
            model = DLRM(config)

            def model_only() -> None:
                for dense, sparse in in_memory:
                    model(dense, sparse)

            reference = reference_style_forward(model)

            def reference_style() -> None:
                for dense, sparse in in_memory:
                    reference(dense, sparse)

            def end_to_end() -> None:
                for i in range(len(store)):
                    batch = store.batch(i)
                    model(batch.dense, batch.sparse)

            samples = batches * batch_size
            variants = {
                "model": model_only,
                "end_to_end": end_to_end,
                "reference_style": reference_style,
            }
            runs: dict[str, list[float]] = {name: [] for name in variants}
            cpu_runs: dict[str, list[float]] = {name: [] for name in variants}
            ratios: list[float] = []
            with torch.inference_mode():
                dense, sparse = in_memory[0]
                torch.testing.assert_close(  # the baseline computes the same predictions
                    reference(dense, sparse), model(dense, sparse), rtol=1e-5, atol=1e-6
                )
                for rep in range(warmup + repeats):
                    for name, fn in variants.items():
                        start, cpu_start = time.perf_counter(), time.process_time()
                        fn()
                        elapsed = time.perf_counter() - start
                        cpu = time.process_time() - cpu_start
                        if rep >= warmup:
                            runs[name].append(samples / elapsed)
                            cpu_runs[name].append(samples / max(cpu, 1e-9))
                    if rep >= warmup:
                        ratios.append(runs["model"][-1] / runs["reference_style"][-1])
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "config": config_name,
        "max_rows": max_rows,
        "batch_size": batch_size,
        "pooling": pooling,
        "index_dist": index_dist,
        "batches": batches,
        "threads": threads,
        "repeats": repeats,
        "model_samples_per_s": statistics.median(runs["model"]),
        "end_to_end_samples_per_s": statistics.median(runs["end_to_end"]),
        "reference_style_samples_per_s": statistics.median(runs["reference_style"]),
        "speedup_over_reference_style": statistics.median(ratios),
        **{f"{name}_samples_per_cpu_s": statistics.median(v) for name, v in cpu_runs.items()},
        "model_runs": runs["model"],
        "end_to_end_runs": runs["end_to_end"],
        "reference_style_runs": runs["reference_style"],
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="kaggle")
    parser.add_argument("--max-rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--pooling", type=int, default=1)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--index-dist", default="uniform")
    args = parser.parse_args(argv)
    result = bench_single_process(
        args.config,
        args.max_rows,
        args.batch_size,
        args.pooling,
        args.batches,
        args.threads,
        repeats=args.repeats,
        index_dist=args.index_dist,
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
