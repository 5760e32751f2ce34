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
# # Figure 6: query latency under offered load, and the capacity at the latency SLO
#
# Open-loop serving (`bls-dlrm serve`): queries arrive as a Poisson process at an offered
# rate, a batcher forms batches (up to a maximum number of samples or a maximum wait), and
# a batch starts no earlier than it closes. A query's latency runs from its arrival,
# queueing included, to its predictions on every rank holding part of it.
#
# One panel per serving workload: the p99 (solid) and p50 (dashed) query latency against
# the offered load, as a fraction of the synchronous series' calibrated closed-loop
# capacity (each launch calibrates gloo, mpi and bls L=0 and serves the fastest: "sync"),
# for the synchronous series and BLS; medians over repetitions, bars min to max. The
# horizontal line is the SLO; the markers on the top edge are each series' capacity at the
# SLO (highest offered rate whose p99 stays under it, bisected; median over repetitions),
# the dotted lines the theory's limits on the calibration's work (synchronous: 1 / mean of
# the per-iteration maximum work; unbounded lag: 1 / the largest per-rank mean work).
# The table below gives each capacity with BLS/sync ratios and their 95% bootstrap
# intervals over repetitions; the plotted points go to `figures/fig6_serving.csv`.

# %%
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display

from bls_dlrm import figures as bf
from bls_dlrm.analysis import stats

matplotlib.use("agg")

# %% tags=["parameters"]
tables_dir: str = "results/tables"  # folder with serving.parquet and capacity.parquet
out_dir: str = "figures"  # the figure is written here as PDF, PNG and CSV (drawn points)
style: str = "paper"  # "paper" (3.3 in column) or "notebook"
protocol: str = "config/protocol.yaml"  # interval settings

# %%
FIGURE = "fig6_serving"
SYNC = "sync"
bf.set_style(style)
settings = bf.interval_settings(bf.figure_protocol(protocol))
serving = bf.load_table(tables_dir, "serving")
capacity = bf.load_table(tables_dir, "capacity")
for column in ("workload", "repetition", "role", "load", "rate_qps", "reference_qps"):
    if column not in serving:  # a table without runs (a sweep with no serving load)
        serving[column] = pd.Series(dtype="float64")
serving["x"] = serving["rate_qps"] / serving["reference_qps"]
roles = sorted(set(serving["role"]), key=lambda r: (r != SYNC, bf.series_sort_key(r)))
bls_roles = [r for r in roles if r != SYNC and r.startswith("bls")]
workloads = sorted(serving["workload"].unique())
print("workloads:", workloads, "| roles:", roles)
print("synchronous series served (by repetition):")
display(serving.groupby(["workload", "repetition"])["reference"].first().unstack())

points = (
    serving.groupby(["workload", "role", "load"], as_index=False)
    .agg(
        x=("x", "median"),
        p50_ms=("p50_ms", "median"),
        p99_ms=("p99_ms", "median"),
        p99_min_ms=("p99_ms", "min"),
        p99_max_ms=("p99_ms", "max"),
        stable_share=("stable", "mean"),
        repetitions=("repetition", "nunique"),
    )
    .sort_values(["workload", "role", "x"])
)
points["kind"] = "latency"
display(points)


# %%
def capacity_ratios(cap: pd.DataFrame) -> pd.DataFrame:
    """Capacity at the SLO per workload and role (median over repetitions), and for each
    BLS role its ratio over sync paired by repetition, with a 95% bootstrap interval."""
    rows = []
    # A search that passed no probe gives an upper bound (its lowest failing rate): drawn
    # as that bound and counted, as the claims table does.
    below = cap.get("below_qps", np.nan)
    cap = cap.assign(
        capacity_qps=cap["capacity_qps"].astype("float64").fillna(below),
        upper_bound=cap["capacity_qps"].isna(),
    )
    for workload, df in cap.groupby("workload"):
        wide = df.pivot_table(index="repetition", columns="role", values="capacity_qps")
        ref = df.groupby("role")["reference_qps"].median()
        for role in wide.columns:
            row = {
                "workload": workload,
                "role": role,
                "capacity_qps": float(wide[role].median()),
                "x": float(wide[role].median() / ref.get(role, np.nan)),
                "ideal_sync_x": float((df["ideal_sync_qps"] / df["reference_qps"]).median()),
                "ideal_unbounded_x": float(
                    (df["ideal_unbounded_qps"] / df["reference_qps"]).median()
                ),
                "repetitions": int(wide[role].notna().sum()),
                "upper_bounds": int(df.loc[df["role"] == role, "upper_bound"].sum()),
            }
            if role != SYNC and SYNC in wide.columns:
                pair = wide[[role, SYNC]].dropna()
                pair = pair[(pair > 0).all(axis=1)]
                if len(pair):
                    point, low, high = stats.ratio_ci(
                        pair[role].to_numpy(), pair[SYNC].to_numpy(), **settings
                    )
                    row |= {"ratio": point, "low": low, "high": high}
            rows.append(row)
    return pd.DataFrame(rows)


caps = capacity_ratios(capacity) if not capacity.empty else pd.DataFrame()
if not caps.empty:
    caps["kind"] = "capacity"
    display(Markdown(caps.drop(columns="kind").to_markdown(index=False, floatfmt=".3g")))
slo = float(capacity["slo_ms"].iloc[0]) if not capacity.empty else None
pct = float(capacity["percentile"].iloc[0]) if not capacity.empty else 99.0
print(f"SLO: p{pct:g} <= {slo} ms")

# %%
colours = {SYNC: bf.SYNC_COLORS["mpi"]} | {r: bf.bls_color(bf.lag_of(r) or 0) for r in bls_roles}
n = max(len(workloads), 1)
fig, axes = plt.subplots(
    1, n, figsize=(bf.figsize(0.8)[0], bf.figsize(0.8)[1]), sharey=True, squeeze=False
)
axes = axes[0]
if serving.empty:
    bf.placeholder(axes[0], "no serving runs in this sweep")
for ax, workload in zip(axes, workloads, strict=False):
    for role in roles:
        d = points[(points["workload"] == workload) & (points["role"] == role)]
        if d.empty:
            continue
        colour = colours.get(role, "#777777")
        err = np.vstack([d["p99_ms"] - d["p99_min_ms"], d["p99_max_ms"] - d["p99_ms"]])
        ax.errorbar(
            d["x"],
            d["p99_ms"],
            yerr=err,
            color=colour,
            marker="o",
            ms=3,
            lw=1.0,
            capsize=1.5,
            label=f"{role} p{pct:g}",
        )
        ax.plot(d["x"], d["p50_ms"], color=colour, ls="--", lw=0.8, label=f"{role} p50")
        c = caps[(caps["workload"] == workload) & (caps["role"] == role)] if len(caps) else d[:0]
        if len(c) and np.isfinite(c["x"].iloc[0]):
            ax.plot(
                c["x"].iloc[0],
                1.0,
                marker="v",
                color=colour,
                ms=5,
                clip_on=False,
                transform=ax.get_xaxis_transform(),
            )
    if len(caps):
        w = caps[caps["workload"] == workload]
        if len(w):
            ax.axvline(w["ideal_sync_x"].iloc[0], color=colours[SYNC], ls=":", lw=0.8)
            if bls_roles:
                ax.axvline(
                    w["ideal_unbounded_x"].iloc[0], color=colours[bls_roles[-1]], ls=":", lw=0.8
                )
    if slo is not None:
        ax.axhline(slo, color="#c44e52", lw=0.8)
    ax.set_yscale("log")
    ax.set_title(workload, fontsize="small")
axes[0].set_ylabel("query latency (ms)")
axes[len(axes) // 2].set_xlabel("offered load / sync capacity")  # once, under the middle panel
if not serving.empty:
    bf.set_plain_log_axis(axes[0], "y")  # shared y: plain ms ticks on every panel
if not serving.empty:
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        ncol=min(len(labels), 4),
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        fontsize="x-small",
    )
sns.despine(fig)
fig.tight_layout()
reps = int(serving["repetition"].nunique()) if not serving.empty else 0
ranks = sorted(serving["ranks"].dropna().unique()) if not serving.empty else []
note = (
    f"Open loop, Poisson arrivals; {reps} repetition(s), {', '.join(map(str, ranks))} ranks "
    f"bound one per core; synthetic data and injected delays. Red line: SLO p{pct:g} "
    f"{slo} ms; triangles: capacity at the SLO; dotted: theory's capacity limits."
)
bf.footnote(fig, note)
paths = bf.save_figure(fig, out_dir, FIGURE)
drawn = pd.concat([points, caps], ignore_index=True) if len(caps) else points
paths.append(bf.save_drawn_data(drawn, out_dir, FIGURE))
print("\n".join(map(str, paths)))
display(fig)
plt.close(fig)
