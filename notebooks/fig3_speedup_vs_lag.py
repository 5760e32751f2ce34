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
# # Figure 3: speedup against lag bound, measured (with 95% intervals) and ideal
#
# For every unbalanced workload (delayed or skewed; every workload with BLS runs if the
# sweep has none): the speedup of BLS with lag bound L over the best synchronous series of
# the same workload (of mpi, gloo and bls L=0, the one with the highest median
# throughput), as a throughput ratio (= makespan ratio). Solid: the geometric mean of the
# per-repetition ratios, with its 95% bootstrap confidence interval over repetitions as
# error bars (`bls_dlrm.analysis.stats.ratio_ci`, paired by repetition; the confidence level and
# seed come from the protocol). Dashed: the ideal speedup the theory allows for that lag
# bound on the work the runs logged (`ideal_speedup`: bulk-synchronous makespan over the
# lag-bounded one, with a free exchange; see `bls_dlrm.theory`), median over repetitions.
# Dotted: the thresholds `config/protocol.yaml` sets for the claims judged on this figure.
#
# Stress scenarios (more ranks than cores) are not drawn: no claim is judged on them
# (Fig. 4 shows them apart). What the runs were is printed below, computed from the
# tables, and written under the figure; the plotted points are written to
# `figures/fig3_speedup_vs_lag.csv`.

# %%
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from IPython.display import Markdown, display
from matplotlib.lines import Line2D

from bls_dlrm import figures as bf

matplotlib.use("agg")

# %% tags=["parameters"]
tables_dir: str = "results/tables"  # folder with runs.parquet (written by `bls-dlrm tables`)
out_dir: str = "figures"  # the figure is written here as PDF, PNG and CSV (drawn points)
style: str = "paper"  # "paper" (3.3 in column) or "notebook"
baseline: str = "best"  # "best" (best synchronous series) or "mpi"
protocol: str = "config/protocol.yaml"  # thresholds and interval settings

# %%
FIGURE = "fig3_speedup_vs_lag"
bf.set_style(style)
spec = bf.figure_protocol(protocol)
settings = bf.interval_settings(spec)
runs = bf.annotate_runs(bf.load_table(tables_dir, "runs"))
candidates = runs[runs["scenario_class"] != "stress"]
shown_workloads = sorted(
    set(candidates.loc[candidates["scenario_class"].isin(("delayed", "skewed")), "workload"])
)
if not shown_workloads:
    print("no delayed or skewed workload; showing every workload")
    shown_workloads = sorted(set(candidates["workload"]))
shown = candidates[candidates["workload"].isin(shown_workloads)]
bls_series = sorted({s for s in shown["series"] if s.startswith("bls L=")}, key=bf.series_sort_key)
intervals = bf.speedup_intervals(shown, bls_series, how=baseline, **settings)
info = shown.groupby("workload").agg(
    delay_ms=("delay_ms", "first"), scenario_class=("scenario_class", "first")
)
drawn = intervals.assign(
    lag=[bf.lag_of(s) for s in intervals["series"]],
    scenario_class=intervals["workload"].map(info["scenario_class"]),
    delay_ms=intervals["workload"].map(info["delay_ms"]),
)
drawn = drawn.sort_values(["scenario_class", "delay_ms", "workload", "lag"]).reset_index(drop=True)
display(drawn)
missing = sorted(set(runs["workload"]) - set(drawn["workload"]))
if missing:
    print("not drawn (stress, or no BLS run or no synchronous baseline):", ", ".join(missing))
thresholds = [c for c in bf.protocol_claims(spec, FIGURE) if c.get("metric") == "throughput_ratio"]
print("thresholds from the protocol:", [(c["key"], c["threshold"]) for c in thresholds])
about = bf.caption(shown)
display(Markdown(f"**Runs drawn:** {about}"))

# %%
lags = sorted(drawn["lag"].dropna().unique())
position = {lag: i for i, lag in enumerate(lags)}
order = list(dict.fromkeys(drawn["workload"]))
colours = dict(zip(order, sns.color_palette("colorblind", len(order)), strict=True))
dodge = 0.22 / max(len(order), 1)

fig, ax = plt.subplots(figsize=bf.figsize(0.8))
if drawn.empty:
    bf.placeholder(ax, "no BLS runs with a synchronous\nbaseline in this sweep")
else:
    for k, workload in enumerate(order):
        part = drawn[drawn["workload"] == workload].sort_values("lag")
        x = np.array([position[lag] for lag in part["lag"]]) + (k - (len(order) - 1) / 2) * dodge
        c = colours[workload]
        err = np.vstack([part["speedup"] - part["low"], part["high"] - part["speedup"]])
        ax.errorbar(
            x,
            part["speedup"],
            yerr=np.nan_to_num(err, nan=0.0),
            color=c,
            marker="o",
            lw=1.2,
            capsize=2,
            elinewidth=0.7,
        )
        ax.plot(x, part["ideal_speedup"], color=c, marker="o", mfc="white", lw=0.9, ls="--")
    ax.axhline(1.0, color="#222222", lw=0.6)
    for claim in thresholds:
        t = claim["threshold"]
        for value in [t.get("value")] if t.get("op") != "within" else [t["low"], t["high"]]:
            ax.axhline(value, color="#888888", lw=0.6, ls=":")
            ax.text(
                len(lags) - 0.5,
                value,
                f"({claim['key']}) {bf.threshold_text(t)}",
                ha="right",
                va="bottom",
                fontsize="x-small",
                color="#666666",
            )
    ax.set_xticks(range(len(lags)), [str(int(lag)) for lag in lags])
    ax.set_xlim(-0.5, len(lags) - 0.5)
    ax.set_xlabel("Lag bound L (iterations)")
    ax.set_ylabel(f"Speedup over {'mpi' if baseline == 'mpi' else 'best synchronous'} (x)")
    values = [drawn["high"].max(), drawn["speedup"].max(), drawn["ideal_speedup"].max()]
    values += [c["threshold"].get("value", np.nan) for c in thresholds]
    lowest = np.nanmin([drawn["low"].min(), drawn["speedup"].min(), 1.0])
    ax.set_ylim(max(0.0, lowest - 0.15), np.nanmax(values) * 1.08)
    handles = [Line2D([], [], color=colours[w], marker="o", lw=1.2, label=w) for w in order]
    handles += [
        Line2D([], [], color="#444444", lw=1.2, label="measured, 95% CI"),
        Line2D([], [], color="#444444", lw=0.9, ls="--", mfc="white", label="ideal (theory)"),
    ]
    ax.legend(handles=handles, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0))
sns.despine(fig)
fig.tight_layout()
bf.footnote(fig, about)
paths = bf.save_figure(fig, out_dir, FIGURE)
paths.append(bf.save_drawn_data(drawn, out_dir, FIGURE))
print("\n".join(map(str, paths)))
display(fig)
plt.close(fig)
