"""Rank program of tests/test_torchrec.py: a TorchRec DLRM sharded on every series' group.

Each rank writes its own files into --out (never one stream for several ranks):

- ``rank{r}-{series}.npy``: the predictions of every batch of the series, in order;
  ``{series}`` is ``gloo``, ``mpisync`` or ``bls`` (TorchRec's own forward) or
  ``{backend}-L{L}`` (the pipelined loop with lag bound L);
- ``rank{r}-reference.npy``: the unsharded model on this rank's slice of every batch;
- ``rank{r}-full.npy``: the unsharded model on every whole batch (all ranks' samples);
- ``rank{r}-{series}.json``: per step start time (monotonic), waits, in-flight count;
- ``rank{r}-works.json``: how many ``torch.distributed`` Works the loop finds in each of
  the three awaitables of one batch (what it times as waiting);
- ``rank{r}-error.txt``: with ``--bad-keys``, the error of a KJT whose keys are not the
  tables' (then the same group runs one good batch, to show nothing was left posted).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import bls_dlrm.comm  # noqa: F401 - registers "bls" and "mpisync"
from bls_dlrm.comm import BLSOptions
from bls_dlrm.data import BatchStore
from bls_dlrm.torchrec.kjt import local_batch, to_kjt
from bls_dlrm.torchrec.model import build_dlrm, shard
from bls_dlrm.torchrec.pipeline import (
    PipelinedInference,
    _works,
    group_lag_bound,
    stock_forward,
)


def _group(backend: str, lag_bound: int):
    if backend == "gloo":
        return dist.new_group(backend="gloo")
    if backend == "bls":
        options = BLSOptions(lag_bound=group_lag_bound(lag_bound), timeout_s=60.0)
        return dist.new_group(backend="bls", pg_options=options)
    return dist.new_group(backend=backend)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--series", default="gloo,mpisync,bls,bls:0,bls:1,bls:4")
    p.add_argument("--plan", default="[[0, 1], [2, 3]]", help="JSON: table ids per rank")
    p.add_argument("--delay-rank", type=int, default=-1)
    p.add_argument("--delay-s", type=float, default=0.0)
    p.add_argument("--delay-steps", type=int, default=0)
    p.add_argument("--bad-keys", action="store_true")
    p.add_argument("--batches", type=int, default=0, help="cycle the dataset to N batches")
    args = p.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(args.out)
    store = BatchStore(args.data)
    model = build_dlrm(
        store.table_rows, store.num_dense, embedding_dim=8, bottom=(16,), top=(16,), seed=3
    )
    plan = json.loads(args.plan)
    batches = [local_batch(store, i, rank, world) for i in range(len(store))]
    if args.batches:
        batches = [batches[i % len(batches)] for i in range(args.batches)]
    delays = [0.0] * len(batches)
    if rank == args.delay_rank:
        delays[: args.delay_steps] = [args.delay_s] * args.delay_steps

    with torch.no_grad():
        ref = [torch.sigmoid(model(d, k)).reshape(-1) for d, k in batches]
        np.save(out / f"rank{rank}-reference.npy", torch.cat(ref).numpy())
        full = []
        for i in range(len(store)):
            dense, lengths, indices, _ = store.numpy_batch(i)
            kjt = to_kjt(lengths, np.asarray(indices), [f"f{t}" for t in range(lengths.shape[0])])
            full.append(torch.sigmoid(model(torch.from_numpy(np.array(dense)), kjt)).reshape(-1))
        np.save(out / f"rank{rank}-full.npy", torch.cat(full).numpy())

    if args.bad_keys:
        sharded = shard(model, _group("bls", 2), plan)
        dense, kjt = batches[0]
        renamed = to_kjt(
            kjt.lengths().reshape(len(kjt.keys()), -1).numpy(),
            kjt.values().numpy(),
            [*kjt.keys()[:-1], "wrong"],
        )
        try:
            PipelinedInference(sharded, 2).run([batches[1], (dense, renamed)])
        except ValueError as exc:
            (out / f"rank{rank}-error.txt").write_text(str(exc))
        got = {}
        PipelinedInference(sharded, 2).run(batches[:3], on_predictions=got.__setitem__)
        np.save(out / f"rank{rank}-after-error.npy", torch.cat([got[i] for i in range(3)]).numpy())
        return

    probe = shard(model, _group("bls", 0), plan).ebc
    with torch.no_grad():
        ctx = probe.create_context()
        first = probe.input_dist(ctx, batches[0][1])
        counts = [len(_works(first))]
        second = first.wait()
        counts.append(len(_works(second)))
        third = probe.compute_and_output_dist(ctx, second.wait())
        counts.append(len(_works(third)))
        third.wait()
    (out / f"rank{rank}-works.json").write_text(json.dumps(counts))

    for series in args.series.split(","):
        backend, _, lag = series.partition(":")
        sharded = shard(model, _group(backend, int(lag or 0)), plan)
        name = backend if not lag else f"{backend}-L{lag}"
        if not lag:
            preds = [stock_forward(sharded, d, k) for d, k in batches]
            records = []
        else:
            got = {}
            records = PipelinedInference(sharded, int(lag)).run(
                batches, delays=delays, on_predictions=got.__setitem__
            )
            assert sorted(got) == list(range(len(batches)))
            preds = [got[i] for i in range(len(batches))]
        np.save(out / f"rank{rank}-{name}.npy", torch.cat(preds).numpy())
        (out / f"rank{rank}-{name}.json").write_text(
            json.dumps(
                {
                    "start": [r.start for r in records],
                    "wait": [r.wait for r in records],
                    "in_flight": [r.in_flight for r in records],
                }
            )
        )
        dist.barrier()


if __name__ == "__main__":
    main()
