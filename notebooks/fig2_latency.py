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
# # Figure 2: batch latency in the closed loop
#
# The distribution (empirical CDF) of the batch latency of every measured iteration, per
# series: the longest time any rank spent on a batch, from the start of its lookups to its
# predictions (`per_iteration.latency_s`). Left: a workload without delays; right: the
# delayed workload with the largest delay of the kind the sweep varied most. Repetitions
# are pooled. Dotted lines mark the 50th, 95th and 99th percentiles; the x axis is
# logarithmic, labelled in plain milliseconds.
#
# What this is, and what it is not: the runs are a closed loop (every rank starts its next
# batch as soon as it may). A lag bound L lets a fast rank start up to L batches ahead of
# the slowest one and wait for their data later, so with L in flight batches each batch's
# latency grows with L (Little's law) even while throughput rises. This figure shows that
# cost; it is not the latency of queries under an offered load, which the open-loop
# serving experiment measures. Stress scenarios (more ranks than cores) are not chosen
# automatically. What the runs were is printed below, computed from the tables, and
# written under the figure; the plotted points are written to `figures/fig2_latency.csv`.

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
tables_dir: str = "results/tables"  # folder with runs.parquet and per_iteration.parquet
out_dir: str = "figures"  # the figure is written here as PDF, PNG and CSV (drawn points)
style: str = "paper"  # "paper" (3.3 in column) or "notebook"
workloads: list = []  # empty: automatic; or [no-delay workload, delayed workload]

# %%
FIGURE = "fig2_latency"
bf.set_style(style)
runs = bf.annotate_runs(bf.load_table(tables_dir, "runs"))
per_iteration = bf.attach_labels(
    bf.load_table(tables_dir, "per_iteration", ["run_id", "iteration", "latency_s"]), runs
)
per_iteration["latency_ms"] = per_iteration["latency_s"] * 1e3

if not workloads:
    delayed = bf.pick_delayed_workload(runs)
    quiet = bf.pick_reference_workload(runs, like=delayed)
    panels = [("no delay", quiet), ("delayed", delayed)]
    for title, w in panels:
        if w is None:
            print(f"this sweep has no {title} workload")
else:
    panels = [(str(w), w) for w in workloads]
print("panels:", panels)

# %% [markdown]
# ## The drawn points
# Every measured iteration of every run of a panel's workload, per series: its latency and
# its height on the CDF (rank / count, pooled over repetitions).

# %%
PERCENTILES = (50, 95, 99)
parts = []
for title, workload in panels:
    data = per_iteration[per_iteration["workload"] == workload]
    for s, group in data.groupby("series"):
        values = np.sort(group["latency_ms"].to_numpy())
        parts.append(
            pd.DataFrame(
                {
                    "panel": title,
                    "workload": workload,
                    "series": s,
                    "latency_ms": values,
                    "fraction": np.arange(1, len(values) + 1) / len(values),
                }
            )
        )
columns = ["panel", "workload", "series", "latency_ms", "fraction"]
drawn = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
table = (
    drawn.groupby(["workload", "series"])["latency_ms"]
    .describe(percentiles=[p / 100 for p in PERCENTILES])
    .reset_index()
)
display(table)
shown_runs = runs[runs["workload"].isin([w for _, w in panels])]
about = bf.caption(shown_runs)
display(Markdown(f"**Runs drawn:** {about}"))

# %%
series = sorted(drawn["series"].unique(), key=bf.series_sort_key)
colours = bf.palette(series)
fig, axes = plt.subplots(
    1, len(panels), figsize=bf.figsize(0.62), sharex=True, sharey=True, squeeze=False
)
handles = {}
for ax, (title, workload) in zip(axes[0], panels, strict=True):
    data = drawn[drawn["panel"] == title]
    if workload is None or data.empty:
        bf.placeholder(ax, f"nothing to show\n({title})")
        ax.set_title(title)
        continue
    present = sorted(data["series"].unique(), key=bf.series_sort_key)
    for s in present:
        part = data[data["series"] == s]
        (line,) = ax.step(
            part["latency_ms"], part["fraction"], where="post", color=colours[s], lw=1.1
        )
        handles.setdefault(s, line)
    for p in PERCENTILES:
        ax.axhline(p / 100, color="#bbbbbb", lw=0.5, ls=":", zorder=0)
    ax.set_xscale("log")
    ax.set_title(f"{title}: {workload}", fontsize="small")
    ax.set_xlabel("Batch latency (ms)")
    note = bf.missing_note(["mpi", "bls L=0"], present)
    if note:
        print(workload, note)
axes[0][0].set_ylabel("Fraction of iterations")
axes[0][0].set_ylim(0, 1.02)
if not drawn.empty:
    low, high = drawn["latency_ms"].min(), drawn["latency_ms"].max()
    axes[0][0].set_xlim(low / 1.1, high * 1.1)  # shared: one range, set once
    ticks = bf.set_plain_log_axis(axes[0][0], "x")
    print("x ticks (ms):", ", ".join(bf.plain_number(t) for t in ticks))
ordered = sorted(handles, key=bf.series_sort_key)
if ordered:
    fig.legend(
        [handles[s] for s in ordered],
        ordered,
        ncol=min(len(ordered), 4),
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
    )
sns.despine(fig)
fig.tight_layout()
bf.footnote(
    fig,
    f"{about} Closed loop: batch latency grows with the lag bound (Little's law); "
    "query latency under load is the open-loop experiment's.",
)
paths = bf.save_figure(fig, out_dir, FIGURE)
paths.append(bf.save_drawn_data(drawn, out_dir, FIGURE))
print("\n".join(map(str, paths)))
display(fig)
plt.close(fig)
