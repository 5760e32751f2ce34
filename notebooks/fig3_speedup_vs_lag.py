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
# # Figure 3: speedup against lag bound, measured and ideal
#
# For every delayed workload (or every workload with BLS runs, if the sweep delayed
# none): the speedup of BLS with lag bound L over the synchronous baseline of the same
# workload (`mpi`; the better of mpi and gloo if mpi is missing), as throughput ratio =
# makespan ratio, median over repetitions (solid). Beside it (dashed), the ideal speedup
# the theory allows for that lag bound on the work the run logged (`ideal_speedup`:
# bulk-synchronous makespan over the lag-bounded one, with a free exchange; see
# `bls_dlrm.theory`). The dotted line at 1.8x is the speedup the paper's abstract quotes.

# %%
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from IPython.display import display
from matplotlib.lines import Line2D

from bls_dlrm import plotting as bp
from bls_dlrm.claims import SPEEDUP_CLAIM

matplotlib.use("agg")

# %% tags=["parameters"]
tables_dir: str = "results/tables"  # folder with runs.parquet (written by `bls-dlrm tables`)
out_dir: str = "figures"  # the figure is written here as PDF and PNG
style: str = "paper"  # "paper" (3.3 in column) or "notebook"
baseline: str = "mpi"  # "mpi" or "best" (the better of mpi and gloo)

# %%
FIGURE = "fig3_speedup_vs_lag"
bp.set_style(style)
runs = bp.with_speedup(bp.annotate_runs(bp.load_table(tables_dir, "runs")), how=baseline)
bls = runs[(runs["collective"] == "bls") & runs["speedup"].notna()].copy()
bls["lag"] = bls["lag_bound"].fillna(0).astype(int)
shown = bls[bls["scenario_class"] == "delayed"]
if shown.empty:
    print("no delayed workload with BLS and a synchronous baseline; showing all workloads")
    shown = bls
summary = (
    shown.groupby(["workload", "lag"])
    .agg(
        speedup=("speedup", "median"),
        ideal=("ideal_speedup", "median"),
        runs=("run_id", "count"),
        delay_ms=("delay_ms", "first"),
    )
    .reset_index()
)
display(summary)
missing = sorted(set(runs["workload"]) - set(bls["workload"]))
if missing:
    print("no BLS run or no synchronous baseline for:", ", ".join(missing))

# %%
lags = sorted(summary["lag"].unique())
position = {lag: i for i, lag in enumerate(lags)}
order = summary.groupby("workload")["delay_ms"].first().sort_values(kind="stable").index.tolist()
colours = dict(zip(order, sns.color_palette("colorblind", len(order)), strict=True))

fig, ax = plt.subplots(figsize=bp.figsize(0.72))
if summary.empty:
    bp.placeholder(ax, "no BLS runs with a synchronous\nbaseline in this sweep")
else:
    for workload in order:
        part = summary[summary["workload"] == workload].sort_values("lag")
        x = np.array([position[lag] for lag in part["lag"]])
        c = colours[workload]
        ax.plot(x, part["speedup"], color=c, marker="o", lw=1.2)
        ax.plot(x, part["ideal"], color=c, marker="o", mfc="white", lw=0.9, ls="--")
    ax.axhline(1.0, color="#222222", lw=0.6)
    ax.axhline(SPEEDUP_CLAIM, color="#888888", lw=0.6, ls=":")
    ax.text(
        0,
        SPEEDUP_CLAIM,
        f" {SPEEDUP_CLAIM:g}x (paper)",
        ha="left",
        va="bottom",
        fontsize="small",
        color="#666666",
    )
    ax.set_xticks(range(len(lags)), [str(lag) for lag in lags])
    ax.set_xlabel("Lag bound L (iterations)")
    ax.set_ylabel(f"Speedup over {baseline if baseline == 'mpi' else 'best sync'} (x)")
    top = np.nanmax([summary["speedup"].max(), summary["ideal"].max(), SPEEDUP_CLAIM])
    ax.set_ylim(0, top * 1.1)
    handles = [Line2D([], [], color=colours[w], marker="o", lw=1.2, label=w) for w in order]
    handles += [
        Line2D([], [], color="#444444", lw=1.2, label="measured"),
        Line2D([], [], color="#444444", lw=0.9, ls="--", mfc="white", label="ideal (theory)"),
    ]
    ax.legend(handles=handles, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0))
sns.despine(fig)
paths = bp.save_figure(fig, out_dir, FIGURE)
print("\n".join(map(str, paths)))
display(fig)
plt.close(fig)
