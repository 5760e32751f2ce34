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
# # Figure 5: where each rank's time goes
#
# For one delayed workload (by default the largest delay of the kind the sweep varied
# most), each rank's time per measured iteration split into local compute, injected
# delay and blocked wait (time spent inside the exchange waiting for peers), as logged.
# "Other" is the rest of the rank's wall time (from its first start to its last
# prediction): exchange calls that did not block, bookkeeping, scheduling. Left: the
# best synchronous series of the workload (of mpi, gloo and bls L=0, the one with the
# highest median throughput, as in every other figure); right: BLS with the largest lag
# bound the workload was run with. When a series has several repetitions, the run with
# the median makespan is shown (one run, so no interval). Stress scenarios (more ranks
# than cores) are not chosen automatically. What the runs were is printed below, computed
# from the tables, and written under the figure; the plotted bars are written to
# `figures/fig5_breakdown.csv`.

# %%
import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display
from matplotlib.patches import Patch

from bls_dlrm import figures as bf

matplotlib.use("agg")

# %% tags=["parameters"]
tables_dir: str = "results/tables"  # folder with runs.parquet and iterations.parquet
out_dir: str = "figures"  # the figure is written here as PDF, PNG and CSV (drawn bars)
style: str = "paper"  # "paper" (3.3 in column) or "notebook"
workload: str = ""  # empty: choose automatically; or the name of a workload

# %%
FIGURE = "fig5_breakdown"
bf.set_style(style)
runs = bf.annotate_runs(bf.load_table(tables_dir, "runs"))
if not workload:
    workload = bf.pick_delayed_workload(runs)
chosen = runs[runs["workload"] == workload]
present = sorted(chosen["series"].unique(), key=bf.series_sort_key)
sync_series = bf.baseline_series(chosen, how="best").get(workload)
bls_series = [s for s in present if s.startswith("bls L=") and s not in bf.SYNC_SERIES]
panels = [s for s in (sync_series, bls_series[-1] if bls_series else None) if s is not None]
print(f"workload: {workload}; series: {', '.join(present) or 'none'}; shown: {panels}")
picked = {s: bf.representative_run(chosen[chosen["series"] == s]) for s in panels}

columns = ["run_id", "rank", "iteration", "t_start", "t_done", "compute_s", "delay_s", "wait_s"]
iterations = bf.load_table(tables_dir, "iterations", columns)
iterations = iterations[iterations["run_id"].isin([r["run_id"] for r in picked.values()])]

COMPONENTS = {"compute": "compute_s", "injected delay": "delay_s", "blocked wait": "wait_s"}
per_rank = []
for s, run in picked.items():
    it = iterations[iterations["run_id"] == run["run_id"]]
    g = it.groupby("rank")
    n = g["iteration"].count()
    part = pd.DataFrame({name: g[col].sum() / n * 1e3 for name, col in COMPONENTS.items()})
    wall = (g["t_done"].max() - g["t_start"].min()) / n * 1e3
    part["other"] = (wall - part.sum(axis=1)).clip(lower=0)
    part["series"] = s
    part["ms_per_iteration"] = run["makespan_s"] / run["measured_iterations"] * 1e3
    part["run_id"] = run["run_id"]
    per_rank.append(part.reset_index())
columns = ["series", "run_id", "rank", *COMPONENTS, "other", "ms_per_iteration"]
per_rank = (
    pd.concat(per_rank, ignore_index=True)[columns] if per_rank else pd.DataFrame(columns=columns)
)
display(per_rank)
about = bf.caption(chosen[chosen["series"].isin(panels)])
display(Markdown(f"**Runs drawn** (one per series shown, of these): {about}"))

# %%
names = [*COMPONENTS, "other"]
fig, axes = plt.subplots(
    1, max(len(panels), 1), figsize=bf.figsize(0.6), sharex=True, sharey=True, squeeze=False
)
if not panels:
    bf.placeholder(axes[0][0], "no delayed workload in this sweep")
for ax, s in zip(axes[0], panels, strict=False):
    data = per_rank[per_rank["series"] == s].sort_values("rank")
    left = pd.Series(0.0, index=data.index)
    for name in names:
        ax.barh(
            data["rank"],
            data[name],
            left=left,
            height=0.7,
            color=bf.COMPONENT_COLORS[name],
            label=name,
        )
        left = left + data[name]
    per_it = data["ms_per_iteration"].iloc[0]
    ax.axvline(per_it, color="#222222", lw=0.6, ls="--")
    ax.set_title(f"{s}: {per_it:.3g} ms/iteration", fontsize="small", color=bf.palette([s])[s])
    ax.set_xlabel("Time per iteration (ms)")
axes[0][0].set_ylabel("Rank")
if panels:
    ranks = sorted(per_rank["rank"].unique())
    axes[0][0].set_yticks(ranks, [str(r) for r in ranks])
    axes[0][0].invert_yaxis()
    handles = [Patch(color=bf.COMPONENT_COLORS[n], label=n) for n in names]
    fig.legend(
        handles=handles,
        ncol=4,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        handlelength=1.0,
        columnspacing=0.8,
        title=f"workload: {workload}",
    )
if len(panels) < 2:
    print(f"only {panels or 'nothing'} to show: the workload lacks a synchronous or a BLS run")
sns.despine(fig)
fig.tight_layout()
bf.footnote(fig, f"Median-makespan run of each series shown. {about}")
paths = bf.save_figure(fig, out_dir, FIGURE)
paths.append(bf.save_drawn_data(per_rank, out_dir, FIGURE))
print("\n".join(map(str, paths)))
display(fig)
plt.close(fig)
