"""Run every collective x lag bound x plan on the same data in one launch.

argv: dataset_dir out_root. Writes out_root/<plan>/<collective>-<L>/preds_rank{r}.npy.
"""

import sys
from pathlib import Path

from bls_dlrm.infer import RunConfig, run

dataset, out_root = sys.argv[1], Path(sys.argv[2])
cases = [("gloo", 0), ("mpi", 0)] + [("bls", lag) for lag in (0, 1, 2, 4, 8)]
for plan in ("contiguous", "balanced", "unbalanced"):
    for collective, lag in cases:
        cfg = RunConfig.from_dict(
            {
                "dataset": dataset,
                "model": {"name": "tiny"},
                "plan": plan,
                "collective": collective,
                "lag_bound": lag,
                "delay": {"kind": "rotating", "size_s": 0.002, "seed": 3},
                "warmup": 1,
                "iterations": 5,
                "timeout_s": 60,
                "verify_data": False,
            }
        )
        name = f"{collective}-{lag}"
        run(cfg, out_root / plan / name / "logs", predictions_out=out_root / plan / name)
