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
# One bar per workload: the throughput of BLS at the lag bound the protocol judges
# (`config/protocol.yaml`: the lag bound of the claims drawn on this figure; the largest
# lag bound of the sweep if the protocol names none; never the best L picked after the
# runs) over the throughput of the best synchronous series of the same workload (of mpi,
# gloo and bls L=0, the one with the highest median throughput). The bar is the geometric
# mean of the per-repetition ratios; the error bar its 95% bootstrap confidence interval
# over repetitions (`bls_dlrm.analysis.stats.ratio_ci`). Workloads are grouped into balanced,
# skewed (uneven access or placement, no injected delay) and delayed; a stress scenario
# (more ranks than cores) is drawn apart, last, and no claim is judged on it.
#
# The grey band is the "no notable difference" band of claim (a) as the protocol sets it;
# the black tick is the ideal speedup the theory gives the same BLS runs
# (`ideal_speedup`, median), i.e. how much there was to gain at all. What the runs were is
# printed below, computed from the tables, and written under the figure; the plotted
# points are written to `figures/fig4_scenarios.csv`.

# %%
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from IPython.display import Markdown, display
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bls_dlrm import figures as bf

matplotlib.use("agg")

# %% tags=["parameters"]
tables_dir: str = "results/tables"  # folder with runs.parquet (written by `bls-dlrm tables`)
out_dir: str = "figures"  # the figure is written here as PDF, PNG and CSV (drawn points)
style: str = "paper"  # "paper" (3.3 in column) or "notebook"
protocol: str = "config/protocol.yaml"  # judged lag bound, band and interval settings
lag_bound: int = -1  # -1: the protocol's judged lag bound (else the sweep's largest)

# %%
FIGURE = "fig4_scenarios"
bf.set_style(style)
spec = bf.figure_protocol(protocol)
settings = bf.interval_settings(spec)
judged = bf.protocol_claims(spec, FIGURE, "throughput_ratio")
runs = bf.annotate_runs(bf.load_table(tables_dir, "runs"))
lags = sorted({lag for s in runs["series"] if (lag := bf.lag_of(s)) is not None and lag > 0})
protocol_lags = sorted({int(lag) for c in judged for lag in c.get("lag_bounds", [])})
if lag_bound >= 0:
    chosen_lag, source = lag_bound, "parameter"
elif protocol_lags:
    chosen_lag, source = protocol_lags[-1], "protocol"
else:
    chosen_lag, source = (lags[-1] if lags else None), "largest in the sweep"
print(f"lag bound shown: {chosen_lag} ({source}); lag bounds run: {lags}")
series = f"bls L={chosen_lag}"

drawn = bf.speedup_intervals(runs, [series], how="best", **settings)
info = runs.groupby("workload").agg(
    scenario_class=("scenario_class", "first"), delay_ms=("delay_ms", "first")
)
drawn["scenario_class"] = drawn["workload"].map(info["scenario_class"])
drawn["class_rank"] = drawn["scenario_class"].map({c: i for i, c in enumerate(bf.CLASS_ORDER)})
drawn["delay_ms"] = drawn["workload"].map(info["delay_ms"])
drawn = drawn.sort_values(["class_rank", "delay_ms", "workload"]).reset_index(drop=True)
drawn = drawn.rename(columns={"speedup": "ratio"})
display(drawn)
lacking = sorted(set(runs["workload"]) - set(drawn["workload"]))
if lacking:
    print(f"left out (no {series} run or no synchronous run):", ", ".join(lacking))
print(bf.missing_note(bf.CLASS_ORDER[:3], drawn["scenario_class"], "scenario classes"))
band = next(
    (c["threshold"] for c in judged if c["threshold"].get("op") == "within"),
    None,
)
print("band (claim a):", band)
about = bf.caption(runs[runs["workload"].isin(drawn["workload"])])
display(Markdown(f"**Runs drawn:** {about}"))

# %%
height = max(0.45, 0.1 * len(drawn) + 0.3)
fig, ax = plt.subplots(figsize=bf.figsize(height))
if drawn.empty:
    bf.placeholder(ax, f"no workload with both {series} and\na synchronous run in this sweep")
else:
    y = np.arange(len(drawn))
    colour = bf.palette([series])[series]
    if band is not None:
        ax.axvspan(band["low"], band["high"], color="#e6e6e6", zorder=0)
    ax.axvline(1.0, color="#222222", lw=0.6, zorder=1)
    stress = drawn["scenario_class"] == "stress"
    ax.barh(
        y,
        drawn["ratio"],
        height=0.65,
        color=[("#bdbdbd" if s else colour) for s in stress],
        hatch=None,
        zorder=2,
    )
    err = np.vstack([drawn["ratio"] - drawn["low"], drawn["high"] - drawn["ratio"]])
    ax.errorbar(
        drawn["ratio"],
        y,
        xerr=np.nan_to_num(err, nan=0.0),
        ls="none",
        color="#333333",
        elinewidth=0.7,
        capsize=2,
        zorder=3,
    )
    ax.plot(
        drawn["ideal_speedup"], y, ls="none", marker="|", ms=8, mew=1.4, color="black", zorder=4
    )
    ax.set_yticks(y, drawn["workload"])
    ax.invert_yaxis()
    # Class names at the first workload of each group, separators between groups.
    first = drawn.groupby("scenario_class", sort=False).head(1)
    for idx, cls in zip(first.index, first["scenario_class"], strict=True):
        if idx > 0:
            ax.axhline(idx - 0.5, color="#999999", lw=0.5, ls="--")
        label = "stress (no claim)" if cls == "stress" else cls
        ax.text(
            1.0,
            idx - 0.45,
            label,
            transform=ax.get_yaxis_transform(),
            ha="right",
            va="top",
            fontsize="x-small",
            color=bf.CLASS_COLORS.get(cls, "#666666"),
            style="italic",
        )
    xmax = np.nanmax([drawn["high"].max(), drawn["ratio"].max(), drawn["ideal_speedup"].max()])
    ax.set_xlim(0, max(xmax, 1.2) * 1.1)
    ax.set_xlabel(f"Throughput, {series} / best synchronous (x)")
    handles = [
        Patch(color=colour, label=series),
        Line2D([], [], color="#333333", lw=0.7, label="95% CI"),
        Line2D([], [], ls="none", marker="|", ms=8, mew=1.4, color="black", label="ideal"),
    ]
    if band is not None:
        handles.append(Patch(color="#e6e6e6", label=f"(a) {bf.threshold_text(band)}"))
    ax.legend(
        handles=handles, ncol=min(len(handles), 4), loc="lower center", bbox_to_anchor=(0.5, 1.0)
    )
sns.despine(fig)
fig.tight_layout()
bf.footnote(fig, f"BLS lag bound L={chosen_lag} ({source}). {about}")
paths = bf.save_figure(fig, out_dir, FIGURE)
paths.append(bf.save_drawn_data(drawn.drop(columns="class_rank"), out_dir, FIGURE))
print("\n".join(map(str, paths)))
display(fig)
plt.close(fig)
