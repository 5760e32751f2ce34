"""Run every series (collective x lag bound) for every plan on the same data, one launch.

argv: dataset_dir out_root series... Writes out_root/<plan>/logs/<label>/rank{r}.jsonl and
out_root/<plan>/preds/<label>/preds_rank{r}.npy: one call of ``run`` per plan, all series
on their own process groups, in a shuffled order.
"""

import sys
from pathlib import Path

from bls_dlrm.run.config import RunConfig
from bls_dlrm.run.infer import run

dataset, out_root, series = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
for k, plan in enumerate(("contiguous", "balanced", "unbalanced", "hot")):
    cfg = RunConfig.from_dict(
        {
            "dataset": dataset,
            "model": {"name": "tiny"},
            "plan": plan,
            "series": series,
            "shuffle_seed": 7,
            "repetition": k,
            "delay": {"kind": "rotating", "size_s": 0.002, "seed": 3},
            "warmup": 1,
            "iterations": 5,
            "timeout_s": 60,
            "verify_data": False,
        }
    )
    run(cfg, out_root / plan / "logs", predictions_out=out_root / plan / "preds")
