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
# # Figure 2: per-iteration latency
#
# The distribution (empirical CDF) of the latency of every measured iteration, per
# series. An iteration's latency is the longest time any rank spent on it, from the start
# of its lookups to its predictions (`per_iteration.latency_s`). Left: a workload without
# delays; right: the delayed workload with the largest delay of the kind the sweep varied
# most. Repetitions are pooled. Dotted lines mark the 50th, 95th and 99th percentiles;
# the numbers are printed below each panel's data.

# %%
import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import seaborn as sns
from IPython.display import display

from bls_dlrm import plotting as bp

matplotlib.use("agg")

# %% tags=["parameters"]
tables_dir: str = "results/tables"  # folder with runs.parquet and per_iteration.parquet
out_dir: str = "figures"  # the figure is written here as PDF and PNG
style: str = "paper"  # "paper" (3.3 in column) or "notebook"
workloads: list = []  # empty: automatic; or [no-delay workload, delayed workload]

# %%
FIGURE = "fig2_latency"
bp.set_style(style)
runs = bp.annotate_runs(bp.load_table(tables_dir, "runs"))
per_iteration = bp.attach_labels(
    bp.load_table(tables_dir, "per_iteration", ["run_id", "iteration", "latency_s"]), runs
)
per_iteration["latency_ms"] = per_iteration["latency_s"] * 1e3

if not workloads:
    delayed = bp.pick_delayed_workload(runs)
    quiet = bp.pick_reference_workload(runs, like=delayed)
    panels = [("no delay", quiet), ("delayed", delayed)]
    for title, w in panels:
        if w is None:
            print(f"this sweep has no {title} workload")
else:
    panels = [(str(w), w) for w in workloads]
print("panels:", panels)

# %%
PERCENTILES = (50, 95, 99)
series = sorted(per_iteration["series"].unique(), key=bp.series_sort_key)
colours = bp.palette(series)
table = (
    per_iteration.groupby(["workload", "series"])["latency_ms"]
    .describe(percentiles=[p / 100 for p in PERCENTILES])
    .reset_index()
)
display(table)

# %%
fig, axes = plt.subplots(
    1, len(panels), figsize=bp.figsize(0.62), sharex=True, sharey=True, squeeze=False
)
handles = {}
for ax, (title, workload) in zip(axes[0], panels, strict=True):
    data = per_iteration[per_iteration["workload"] == workload]
    if workload is None or data.empty:
        bp.placeholder(ax, f"nothing to show\n({title})")
        ax.set_title(title)
        continue
    present = sorted(data["series"].unique(), key=bp.series_sort_key)
    for s in present:
        ax.ecdf(data.loc[data["series"] == s, "latency_ms"], color=colours[s], label=s, lw=1.1)
    for p in PERCENTILES:
        ax.axhline(p / 100, color="#bbbbbb", lw=0.5, ls=":", zorder=0)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(mticker.NullFormatter())
    ax.set_title(f"{title}: {workload}", fontsize="small")
    ax.set_xlabel("Iteration latency (ms)")
    note = bp.missing_note(["mpi", "bls L=0"], present)
    if note:
        print(workload, note)
    for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
        handles.setdefault(lab, h)
axes[0][0].set_ylabel("Fraction of iterations")
axes[0][0].set_ylim(0, 1.02)
ordered = sorted(handles, key=bp.series_sort_key)
if ordered:
    fig.legend(
        [handles[s] for s in ordered],
        ordered,
        ncol=min(len(ordered), 3),
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
    )
sns.despine(fig)
fig.tight_layout()
paths = bp.save_figure(fig, out_dir, FIGURE)
print("\n".join(map(str, paths)))
display(fig)
plt.close(fig)
