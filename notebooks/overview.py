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
# # Overview of a sweep
#
# A starting point for slicing the results another way: loads the three tables of a
# sweep, labels every run with its series (collective and lag bound), workload and
# scenario class exactly as the figures and the claims table do (`bls_dlrm.figures`),
# and prints the summaries the figures are drawn from. Nothing is written unless
# `out_dir` is set.
#
# Open it in JupyterLab from `notebooks/` (paths are resolved from the project root), or
# run `snakemake results/notebooks/overview.ipynb`.

# %%
import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import display

from bls_dlrm import figures as bf
from bls_dlrm.analysis.claims import evaluate
from bls_dlrm.analysis.machine import machine_info, sweep_info

matplotlib.use("agg")
pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 30)

# %% tags=["parameters"]
tables_dir: str = "results/tables"  # folder with runs, per_iteration and iterations .parquet
out_dir: str = ""  # empty: write nothing; else a folder for overview_speedup.{pdf,png}
style: str = "notebook"  # "paper" (3.3 in column) or "notebook"

# %%
bf.set_style(style)
runs = bf.annotate_runs(bf.load_table(tables_dir, "runs"))
per_iteration = bf.attach_labels(bf.load_table(tables_dir, "per_iteration"), runs)
print(
    f"{len(runs)} runs, {len(per_iteration)} measured iterations, "
    f"{runs['workload'].nunique()} workloads"
)
display(pd.Series(sweep_info(runs), name="sweep").to_frame())
display(pd.Series(machine_info(runs), name="machine").to_frame())
print(bf.caption(runs))

# %% [markdown]
# ## Runs per workload and series
# Repetitions per cell; an empty cell is a combination the sweep did not run.

# %%
order = sorted(runs["series"].unique(), key=bf.series_sort_key)
counts = runs.pivot_table(
    index=["scenario_class", "workload"], columns="series", values="run_id", aggfunc="count"
)
display(counts.reindex(columns=order))

# %% [markdown]
# ## Medians per workload and series

# %%
runs = bf.with_speedup(runs, how="best")
for metric, scale, unit in [
    ("throughput_sps", 1e-3, "k samples/s"),
    ("speedup", 1.0, "x over the best synchronous series"),
    ("ideal_speedup", 1.0, "x, theory"),
    ("ideal_efficiency", 1.0, "ideal / measured makespan"),
    ("latency_p50_s", 1e3, "ms"),
    ("latency_p99_s", 1e3, "ms"),
    ("wait_share", 1.0, "of rank time"),
    ("lag_max", 1.0, "iterations"),
]:
    if metric not in runs.columns:
        print(f"{metric}: not in this table")
        continue
    table = (
        runs.pivot_table(index="workload", columns="series", values=metric, aggfunc="median")
        * scale
    )
    print(f"\n{metric} ({unit})")
    display(table.reindex(columns=order).round(3))

# %% [markdown]
# ## The claims, as `results/claims.md` states them

# %%
claims = evaluate(runs, per_iteration)
display(
    pd.DataFrame(
        [
            {
                "claim": f"{getattr(c, 'label', f'({c.key})')} {c.claim}",
                "measured": c.measured,
                "verdict": c.verdict,
            }
            for c in claims
        ]
    )
)

# %% [markdown]
# ## Speedup over the best synchronous series, every workload and series
# Medians of per-run ratios; the figures give 95% intervals (`bf.speedup_intervals`).

# %%
heat = runs.pivot_table(
    index="workload", columns="series", values="speedup", aggfunc="median"
).reindex(columns=order)
fig, ax = plt.subplots(figsize=bf.figsize(0.25 + 0.08 * max(len(heat), 1)))
if heat.empty or heat.isna().all().all():
    bf.placeholder(ax, "no workload with a synchronous baseline")
else:
    sns.heatmap(heat, annot=True, fmt=".2f", center=1.0, cmap="vlag_r", cbar=False, ax=ax)
    ax.set_xlabel("")
    ax.set_ylabel("")
if out_dir:
    print(bf.save_figure(fig, out_dir, "overview_speedup"))
display(fig)
plt.close(fig)

# %% [markdown]
# ## Per-iteration latency over the run
# One line per series for the delayed workload the figures show in detail.

# %%
focus = bf.pick_delayed_workload(runs) or (runs["workload"].iloc[0] if len(runs) else None)
data = per_iteration[per_iteration["workload"] == focus]
fig, ax = plt.subplots(figsize=bf.figsize(0.5))
if data.empty:
    bf.placeholder(ax, "no iterations")
else:
    present = sorted(data["series"].unique(), key=bf.series_sort_key)
    sns.lineplot(
        data=data.assign(latency_ms=data["latency_s"] * 1e3),
        x="iteration",
        y="latency_ms",
        hue="series",
        hue_order=present,
        palette=bf.palette(present),
        estimator="median",
        errorbar=None,
        ax=ax,
    )
    ax.set_title(str(focus))
    ax.set_xlabel("Iteration")
    ax.set_ylabel("Latency (ms)")
display(fig)
plt.close(fig)
