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
# # Figure 1: throughput against delay size, measured and ideal
#
# How much throughput each collective keeps as one rank at a time is held back longer.
# The x axis is the injected delay per delayed rank and iteration; one line per series
# (a synchronous collective, or BLS with lag bound L). Points are medians over
# repetitions; bars span the repetitions (min to max).
#
# The dashed black line is the ideal bound of the theory for the largest lag bound: the
# best synchronous series' median throughput times the ideal speedup the theory gives
# that BLS series on the work its runs logged (`ideal_speedup`, a free exchange; see
# `bls_dlrm.theory`). A measured BLS line close to it masks the delays; no series can
# exceed it except by noise.
#
# The delay kind is the one the sweep varied most (`rotating` if it has as many sizes as
# any other): with one randomly chosen rank delayed per iteration, a lag bound can hide
# the delay, so this is where BLS and the synchronous collectives part ways. When the
# sweep has no size-0 run of that kind, the balanced workload stands in for delay 0.
# Stress scenarios (more ranks than cores) are left out. What the runs were (ranks,
# placement, repetitions, iterations, data, delays) is printed below, computed from the
# tables, and written under the figure. The plotted points are written to
# `figures/fig1_throughput_vs_delay.csv`.

# %%
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display

from bls_dlrm import figures as bf

matplotlib.use("agg")

# %% tags=["parameters"]
tables_dir: str = "results/tables"  # folder with runs.parquet (written by `bls-dlrm tables`)
out_dir: str = "figures"  # the figure is written here as PDF, PNG and CSV (drawn points)
style: str = "paper"  # "paper" (3.3 in column) or "notebook"

# %%
FIGURE = "fig1_throughput_vs_delay"
bf.set_style(style)
runs = bf.annotate_runs(bf.load_table(tables_dir, "runs"))
kind = bf.primary_delay_kind(runs)
notes = []

if kind is None:
    data = runs.iloc[0:0]
    notes.append("no delayed runs in this sweep")
else:
    data = runs[(runs["delay_kind"] == kind) & (runs["scenario_class"] == "delayed")]
    if not (data["delay_ms"] == 0).any():
        quiet = runs[(runs["scenario_class"] == "balanced") & (runs["delay_kind"] == "none")]
        data = pd.concat([data, quiet.assign(delay_ms=0.0)], ignore_index=True)
    world_size = bf.most_common(data["world_size"])
    if data["world_size"].nunique() > 1:
        notes.append(f"showing P={world_size} ranks only")
    data = data[data["world_size"] == world_size]

series = sorted(data["series"].unique(), key=bf.series_sort_key)
wanted = ["mpi", "gloo", "bls L=0", "bls L=8"]
note = bf.missing_note(wanted, series)
if note:
    notes.append(note)
print(f"delay kind: {kind}; series: {', '.join(series) or 'none'}")
print("\n".join(notes))

# %% [markdown]
# ## The drawn points
# Measured: median, min and max throughput over repetitions per series and delay size.
# Ideal: per delayed workload, best synchronous median throughput x median `ideal_speedup`
# of the largest lag bound's runs.

# %%
measured = (
    data.groupby(["series", "delay_ms"])["throughput_sps"]
    .agg(throughput_sps="median", low_sps="min", high_sps="max", runs="count")
    .reset_index()
)
measured.insert(0, "kind", "measured")

bls_lags = sorted(lag for s in series if (lag := bf.lag_of(s)) is not None and lag > 0)
ideal = pd.DataFrame(columns=measured.columns)
if bls_lags and not data.empty:
    top = f"bls L={bls_lags[-1]}"
    base = bf.sync_baseline(data, how="best")
    part = data[data["series"] == top]
    per_workload = part.groupby("workload").agg(
        delay_ms=("delay_ms", "first"), ideal_speedup=("ideal_speedup", "median")
    )
    per_workload = per_workload[per_workload.index.isin(base.index)]
    if not per_workload.empty:
        ideal = pd.DataFrame(
            {
                "kind": "ideal",
                "series": top,
                "delay_ms": per_workload["delay_ms"].to_numpy(),
                "throughput_sps": (
                    base.reindex(per_workload.index) * per_workload["ideal_speedup"]
                ).to_numpy(),
                "low_sps": np.nan,
                "high_sps": np.nan,
                "runs": part.groupby("workload").size().reindex(per_workload.index).to_numpy(),
            }
        ).sort_values("delay_ms")
drawn = pd.concat([measured, ideal], ignore_index=True)
drawn["runs"] = drawn["runs"].astype("int64")
display(drawn)
about = bf.caption(data)
display(Markdown(f"**Runs drawn:** {about}"))

# %%
fig, ax = plt.subplots(figsize=bf.figsize(0.72))
if drawn.empty:
    bf.placeholder(ax, "no delayed runs in this sweep")
else:
    colours, markers = bf.palette(series), bf.series_markers(series)
    for s in series:
        part = measured[measured["series"] == s].sort_values("delay_ms")
        k = part["throughput_sps"] / 1e3
        ax.errorbar(
            part["delay_ms"],
            k,
            yerr=[k - part["low_sps"] / 1e3, part["high_sps"] / 1e3 - k],
            color=colours[s],
            marker=markers[s],
            capsize=2,
            elinewidth=0.6,
            label=s,
        )
    if not ideal.empty:
        ax.plot(
            ideal["delay_ms"],
            ideal["throughput_sps"] / 1e3,
            color="black",
            ls="--",
            lw=0.9,
            marker="x",
            zorder=5,
            label=f"ideal, {ideal['series'].iloc[0]} (theory)",
        )
    ax.set_xlabel(f"Delay size (ms); {kind} delays, P={world_size} ranks")
    ax.set_ylabel("Throughput (k samples/s)")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=min(0, ax.get_xlim()[0]))
    ax.legend(title=None, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0))
sns.despine(fig)
bf.footnote(fig, " ".join([about, *(n[0].upper() + n[1:] + "." for n in notes)]))
paths = bf.save_figure(fig, out_dir, FIGURE)
paths.append(bf.save_drawn_data(drawn, out_dir, FIGURE))
print("\n".join(map(str, paths)))
display(fig)
plt.close(fig)
