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
# # Figure 1: throughput against delay size
#
# How much throughput each collective keeps as one rank at a time is held back longer.
# The x axis is the injected delay per delayed rank and iteration; one line per series
# (a synchronous collective, or BLS with lag bound L). Points are medians over
# repetitions; bars span the repetitions (min to max) where there are several.
#
# The delay kind is the one the sweep varied most (`rotating` if it has as many sizes as
# any other): with one randomly chosen rank delayed per iteration, a lag bound can hide
# the delay, so this is where BLS and the synchronous collectives part ways. When the
# sweep has no size-0 run of that kind, the balanced workload stands in for delay 0.

# %%
import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import display

from bls_dlrm import plotting as bp

matplotlib.use("agg")

# %% tags=["parameters"]
tables_dir: str = "results/tables"  # folder with runs.parquet (written by `bls-dlrm tables`)
out_dir: str = "figures"  # the figure is written here as PDF and PNG
style: str = "paper"  # "paper" (3.3 in column) or "notebook"

# %%
FIGURE = "fig1_throughput_vs_delay"
bp.set_style(style)
runs = bp.annotate_runs(bp.load_table(tables_dir, "runs"))
kind = bp.primary_delay_kind(runs)
notes = []

if kind is None:
    data = runs.iloc[0:0]
    notes.append("no delayed runs in this sweep")
else:
    data = runs[(runs["delay_kind"] == kind) & (runs["scenario_class"] != "skewed")]
    if not (data["delay_ms"] == 0).any():
        quiet = runs[(runs["scenario_class"] == "balanced") & (runs["delay_kind"] == "none")]
        data = pd.concat([data, quiet.assign(delay_ms=0.0)], ignore_index=True)
    world_size = bp.most_common(data["world_size"])
    if data["world_size"].nunique() > 1:
        notes.append(f"showing P={world_size} ranks only")
    data = data[data["world_size"] == world_size]

series = sorted(data["series"].unique(), key=bp.series_sort_key)
wanted = ["mpi", "gloo", "bls L=0", "bls L=8"]
note = bp.missing_note(wanted, series)
if note:
    notes.append(note)
print(f"delay kind: {kind}; series: {', '.join(series) or 'none'}")
print("\n".join(notes))

summary = (
    data.groupby(["series", "delay_ms"])["throughput_sps"]
    .agg(["median", "min", "max", "count"])
    .reset_index()
)
display(summary)

# %%
fig, ax = plt.subplots(figsize=bp.figsize(0.72))
if data.empty:
    bp.placeholder(ax, "no delayed runs in this sweep")
else:
    sns.lineplot(
        data=data.assign(throughput_k=data["throughput_sps"] / 1e3),
        x="delay_ms",
        y="throughput_k",
        hue="series",
        hue_order=series,
        style="series",
        style_order=series,
        markers=bp.series_markers(series),
        dashes=False,
        palette=bp.palette(series),
        estimator="median",
        errorbar=("pi", 100),
        err_style="bars",
        err_kws={"capsize": 2, "elinewidth": 0.6},
        ax=ax,
    )
    ax.set_xlabel(f"Delay size (ms); {kind} delays, P={world_size} ranks")
    ax.set_ylabel("Throughput (k samples/s)")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=min(0, ax.get_xlim()[0]))
    ax.legend(title=None, ncol=min(len(series), 3), loc="lower center", bbox_to_anchor=(0.5, 1.0))
if notes:  # say on the figure what the sweep lacks, below the axis label
    ax.annotate(
        "; ".join(notes),
        xy=(0.5, 0),
        xycoords="axes fraction",
        xytext=(0, -34),
        textcoords="offset points",
        ha="center",
        va="top",
        fontsize="x-small",
        color="#666666",
    )
sns.despine(fig)
paths = bp.save_figure(fig, out_dir, FIGURE)
print("\n".join(map(str, paths)))
display(fig)
plt.close(fig)
