# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Figure 8: BLS inside TorchRec
#
# The main sweep's balanced, rotating-2.5x and skew-pooling workloads through TorchRec's
# sharded DLRM (`DistributedModelParallel`, table-wise, 2 ranks bound one per core), as
# `bls-dlrm bench-torchrec` measured them (`snakemake --cores 2 torchrec`). Left: the
# throughput of every series over the best synchronous TorchRec series of the workload
# (its own forward over gloo or over mpisync, the higher median), the geometric mean of
# the per-repetition ratios with its 95% bootstrap interval (`bls_dlrm.analysis.stats.ratio_ci`);
# the black tick on a pipelined BLS bar is the ideal speedup the theory gives its lag bound
# on the same run's measured work (`bls_dlrm.theory.ideal_speedup`). Right:
# where the pipelined loop waits, per step and exchange (KJT splits, KJT lengths and
# values, pooled embeddings), median over repetitions, mean over ranks and steps: time the
# BLS loop spends waiting for a peer that it could not mask. The plotted points are
# written to `figures/fig8_torchrec.csv`.

# %%
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

matplotlib.use("agg")

# %% tags=["parameters"]
torchrec_dir: str = "results/torchrec"  # torchrec.csv and torchrec_runs.csv (bench-torchrec)
out_dir: str = "figures"  # the figure is written here as PDF, PNG and CSV (drawn points)
style: str = "paper"  # "paper" (3.3 in column per panel) or "notebook"

# %%
FIGURE = "fig8_torchrec"
summary = pd.read_csv(Path(torchrec_dir) / "torchrec.csv")
runs = pd.read_csv(Path(torchrec_dir) / "torchrec_runs.csv")
workloads = list(dict.fromkeys(summary["workload"]))
series = list(dict.fromkeys(summary["series"]))
width = 3.3 if style == "paper" else 5.0
plt.rcParams.update({"font.size": 7 if style == "paper" else 10})

# %%
SYNC = ("gloo", "mpisync")  # TorchRec's own forward: the synchronous choices on CPU
rows = []
for w in workloads:
    part = summary[summary.workload == w].set_index("series")
    present = [b for b in SYNC if b in part.index]
    best = max(present, key=lambda b: part.loc[b, "throughput_median"])
    for s in series:
        if s not in part.index:
            continue
        r = part.loc[s]
        if s == best:
            ratio = low = high = 1.0
        else:
            ratio, low, high = (r.get(f"vs_{best}{k}", np.nan) for k in ("", "_low", "_high"))
        rows.append(
            {
                "workload": w,
                "series": s,
                "baseline": best,
                "throughput_median": r["throughput_median"],
                "vs_best_sync": ratio,
                "vs_best_sync_low": low,
                "vs_best_sync_high": high,
                "ideal_speedup": r.get("ideal_speedup", np.nan),
                "wait_splits_ms": r.get("wait_splits_ms_mean", np.nan),
                "wait_tensors_ms": r.get("wait_tensors_ms_mean", np.nan),
                "wait_output_ms": r.get("wait_output_ms_mean", np.nan),
                "max_steps_ahead": r.get("max_steps_ahead", np.nan),
            }
        )
drawn = pd.DataFrame(rows)

# %%
fig, (ax, bx) = plt.subplots(1, 2, figsize=(2 * width, 0.75 * width))
colors = plt.cm.viridis(np.linspace(0.1, 0.9, len(series)))
step = 0.8 / len(series)
x = np.arange(len(workloads))
for k, s in enumerate(series):
    part = drawn[drawn.series == s].set_index("workload").reindex(workloads)
    pos = x - 0.4 + step * (k + 0.5)
    v = part.vs_best_sync
    err = np.array([v - part.vs_best_sync_low, part.vs_best_sync_high - v], dtype=float)
    ax.bar(pos, v, step, yerr=err, color=colors[k], label=s, capsize=1.5)
    ax.scatter(pos, part.ideal_speedup, marker="_", s=80, color="black", zorder=3)
ax.axhline(1.0, color="grey", lw=0.6)
ax.set_xticks(x, workloads)
ax.set_ylabel("throughput / best synchronous TorchRec")
ax.legend(fontsize="small", ncol=2, frameon=False)
ax.set_title("(a) throughput (tick: ideal)")

piped = drawn[drawn.series.str.contains(":")]
labels = [f"{w}\n{s}" for w, s in zip(piped.workload, piped.series, strict=True)]
bottom = np.zeros(len(piped))
for col, name in (("wait_splits_ms", "KJT splits"), ("wait_tensors_ms", "KJT tensors"),
                  ("wait_output_ms", "pooled embeddings")):  # fmt: skip
    values = piped[col].to_numpy(dtype=float)
    bx.bar(np.arange(len(piped)), values, 0.7, bottom=bottom, label=name)
    bottom += values
bx.set_xticks(np.arange(len(piped)), labels, rotation=90, fontsize="x-small")
bx.set_ylabel("wait per step (ms)")
bx.legend(fontsize="small", frameon=False)
bx.set_title("(b) where the pipelined loop waits")
fig.tight_layout()
out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
for ext in ("pdf", "png"):
    fig.savefig(out / f"{FIGURE}.{ext}", dpi=200)
drawn.to_csv(out / f"{FIGURE}.csv", index=False)

# %%
lines = []
for w in workloads:
    part = drawn[drawn.workload == w].set_index("series")
    if "bls:8" in part.index:
        b = part.loc["bls:8"]
        lines.append(
            f"- {w}: bls L=8 {b.vs_best_sync:.2f}x TorchRec over {b.baseline} "
            f"[{b.vs_best_sync_low:.2f}, {b.vs_best_sync_high:.2f}], "
            f"ideal {b.ideal_speedup:.2f}x; "
            f"steps ahead at most {int(b.max_steps_ahead)}"
        )
display(Markdown("\n".join(lines) or "no bls L=8 series in the report"))
