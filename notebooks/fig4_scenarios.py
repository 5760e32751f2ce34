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
# # Figure 4: where BLS helps and where it does not
#
# One bar per workload: the throughput of BLS at its best lag bound (named beside the
# bar, coloured as that series in every figure) divided by the throughput of the best
# synchronous series (mpi, gloo or bls L=0), medians over repetitions. Workloads are grouped
# into balanced, skewed (uneven access or placement, no injected delay) and delayed.
# The grey band is the ±5 % the claims table calls "no notable difference"; the black tick
# is the ideal speedup the theory gives the same BLS runs (`ideal_speedup`), i.e. how much
# there was to gain at all.

# %%
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from IPython.display import display
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bls_dlrm import plotting as bp
from bls_dlrm.claims import BALANCED_TOLERANCE

matplotlib.use("agg")

# %% tags=["parameters"]
tables_dir: str = "results/tables"  # folder with runs.parquet (written by `bls-dlrm tables`)
out_dir: str = "figures"  # the figure is written here as PDF and PNG
style: str = "paper"  # "paper" (3.3 in column) or "notebook"

# %%
FIGURE = "fig4_scenarios"
bp.set_style(style)
runs = bp.annotate_runs(bp.load_table(tables_dir, "runs"))
best = bp.best_bls(runs)
sync = bp.sync_baseline(runs, how="best")
classes = runs.groupby("workload")["scenario_class"].first()
rows = best[best["workload"].isin(sync.index)].copy()
rows["ratio"] = rows["throughput_sps"] / rows["workload"].map(sync).astype("float64")
rows["scenario_class"] = rows["workload"].map(classes)
rows["class_rank"] = rows["scenario_class"].map({c: i for i, c in enumerate(bp.CLASS_ORDER)})
rows = rows.sort_values(["class_rank", "delay_ms", "workload"]).reset_index(drop=True)
display(rows[["scenario_class", "workload", "series", "ratio", "ideal_speedup"]])
lacking = sorted(set(runs["workload"]) - set(rows["workload"]))
if lacking:
    print("left out (no BLS run or no synchronous run):", ", ".join(lacking))
print(bp.missing_note(bp.CLASS_ORDER, rows["scenario_class"], "scenario classes"))

# %%
height = max(0.45, 0.1 * len(rows) + 0.3)
fig, ax = plt.subplots(figsize=bp.figsize(height))
if rows.empty:
    bp.placeholder(ax, "no workload with both BLS and\na synchronous run in this sweep")
else:
    y = np.arange(len(rows))
    colours = bp.palette(rows["series"])
    ax.axvspan(1 - BALANCED_TOLERANCE, 1 + BALANCED_TOLERANCE, color="#e6e6e6", zorder=0)
    ax.axvline(1.0, color="#222222", lw=0.6, zorder=1)
    ax.barh(y, rows["ratio"], height=0.65, color=[colours[s] for s in rows["series"]], zorder=2)
    ax.plot(rows["ideal_speedup"], y, ls="none", marker="|", ms=8, mew=1.4, color="black", zorder=3)
    # The lag bound beside each bar, clear of the bar end and of the ideal tick.
    label_x = np.fmax(rows["ratio"], rows["ideal_speedup"].fillna(0)) + 0.02
    for yi, (x, s) in enumerate(zip(label_x, rows["series"], strict=True)):
        ax.text(x, yi, f" L={s.split('=', 1)[1]}", va="center", ha="left", fontsize="x-small")
    ax.set_yticks(y, rows["workload"])
    ax.invert_yaxis()
    # Class names at the first workload of each group, separators between groups.
    first = rows.groupby("scenario_class", sort=False).head(1)
    for idx, cls in zip(first.index, first["scenario_class"], strict=True):
        if idx > 0:
            ax.axhline(idx - 0.5, color="#999999", lw=0.5, ls="--")
        ax.text(
            1.0,
            idx - 0.45,
            cls,
            transform=ax.get_yaxis_transform(),
            ha="right",
            va="top",
            fontsize="x-small",
            color=bp.CLASS_COLORS[cls],
            style="italic",
        )
    xmax = np.nanmax([rows["ratio"].max(), rows["ideal_speedup"].max(), 1.2])
    ax.set_xlim(0, xmax * 1.15)
    ax.set_xlabel("Throughput, best-L BLS / best synchronous (x)")
    handles = [Patch(color=colours[s], label=s) for s in sorted(colours, key=bp.series_sort_key)]
    handles += [
        Line2D([], [], ls="none", marker="|", ms=8, mew=1.4, color="black", label="ideal"),
        Patch(color="#e6e6e6", label=f"±{BALANCED_TOLERANCE:.0%}"),
    ]
    ax.legend(
        handles=handles, ncol=min(len(handles), 4), loc="lower center", bbox_to_anchor=(0.5, 1.0)
    )
sns.despine(fig)
paths = bp.save_figure(fig, out_dir, FIGURE)
print("\n".join(map(str, paths)))
display(fig)
plt.close(fig)
