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
# # Figure 7 (simulation): validated on the measured runs, then at cluster scale
#
# A simulation (`bls_dlrm.analysis.simulate`), not a measurement. It extends the theory's ideal
# recurrence by two measured costs: a per-rank overhead per iteration (time outside the
# logged compute and delay, which no lag bound hides; calibrated per series on one
# workload, `calibration`) and an exchange time `x(P, n) = a + b(P-1) + c n (P-1)` (an
# exchange completes `x` after the last rank is ready for it), fitted by least squares on
# the sweep's own synchronous runs (or on `bls-dlrm bench-a2a` results, parameter
# `exchange_bench`).
#
# **Left, validation.** For every measured workload and BLS series: the speedup over the
# best synchronous series predicted from the synchronous runs' own per-rank work, against
# the measured speedup (geometric means over repetitions). The grey band is the 10% the
# protocol allows (`prediction_ratio` check); the calibration workload is in-sample, every
# other one out-of-sample; a stress scenario (more ranks than cores) is drawn hollow.
#
# **Middle and right, scale-out.** For P = 8 .. 1024 ranks, each rank's compute drawn from
# the calibration workload's measured per-rank work, the sweep's own delay schedules
# (rotating, random) generated for P ranks, the judged lag bounds of the protocol: the
# predicted speedup of BLS over the synchronous loop, and the serving capacity per rank
# (samples per second: the global batch over the predicted time per iteration; a
# closed-loop capacity, no queueing model). With independent per-rank delays (random) the
# synchronous loop waits for the slowest of P ranks every iteration, so its capacity falls
# as P grows (fan-out) while BLS keeps close to the mean. The drawn points are written to
# `figures/fig7_simulation.csv` (column `panel`).

# %%
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display
from matplotlib.lines import Line2D

from bls_dlrm import figures as bf
from bls_dlrm.analysis import simulate as sim

matplotlib.use("agg")

# %% tags=["parameters"]
tables_dir: str = "results/tables"  # folder with runs.parquet and iterations.parquet
out_dir: str = "figures"  # the figure is written here as PDF, PNG and CSV (drawn points)
style: str = "paper"  # "paper" (3.3 in column) or "notebook"
protocol: str = "config/protocol.yaml"  # judged lag bounds
calibration: str = "balanced"  # workload the per-series overheads are calibrated on
exchange_bench: str = ""  # bench-a2a JSON lines for the exchange cost ("": the sweep's logs)
max_ranks: int = 1024  # scale-out from 8 ranks to this, in powers of two
iterations: int = 300  # simulated iterations per scale-out run
seed: int = 0  # draws of the per-rank compute in the scale-out

# %%
FIGURE = "fig7_simulation"
ITERATION_COLUMNS = [
    "run_id", "collective", "lag_bound", "rank", "iteration", "warmup",
    "compute_s", "delay_s", "wait_s", "t_posted", "t_bottom", "t_completed",
]  # fmt: skip
bf.set_style(style)
spec = bf.figure_protocol(protocol)
runs = bf.annotate_runs(bf.load_table(tables_dir, "runs"))
its = bf.load_table(tables_dir, "iterations", columns=ITERATION_COLUMNS)

works = sim.work_matrices(its)
cost = sim.exchange_cost_from_sweep(runs, its)
source = "the sweep's synchronous runs"
if exchange_bench:
    cost = sim.ExchangeCost.fit(sim.bench_table(bf.project_path(exchange_bench)))
    source = f"bench-a2a ({exchange_bench})"
print(f"exchange cost ({cost.rows} rows from {source}): {cost.describe()}")
# The scale-out starts from the calibration workload with the most ranks (its per-rank
# work and overheads); the validation calibrates each setting on its own.
cal_all = runs[(runs["workload"] == calibration) | (runs["scenario"] == calibration)]
cal_id = (
    cal_all.sort_values("world_size", kind="stable")["workload"].iloc[-1] if len(cal_all) else ""
)
cal = runs[runs["workload"] == cal_id]
overhead = sim.calibrate_overhead(runs, its, cost, cal_id, works=works) if cal_id else {}
print(f"calibration workload of the scale-out: {cal_id or 'none'}")
print("its overhead per iteration (ms):", {k: round(v * 1e3, 3) for k, v in overhead.items()})

valid = sim.validation_table(runs, its, cost, calibration=calibration, works=works)
if valid.empty:
    points = pd.DataFrame(
        columns=["workload", "series", "lag_bound", "stress", "calibration", "repetitions",
                 "predicted_speedup", "measured_speedup", "error"]
    )  # fmt: skip
else:
    points = (
        valid.groupby(["workload", "series"], sort=False)
        .agg(
            lag_bound=("lag_bound", "first"),
            ranks=("ranks", "first"),
            stress=("stress", "first"),
            calibration=("calibration", "first"),
            baseline=("baseline", "first"),
            repetitions=("rep", "size"),
            predicted_speedup=("predicted_speedup", lambda s: float(np.exp(np.log(s).mean()))),
            measured_speedup=("measured_speedup", lambda s: float(np.exp(np.log(s).mean()))),
        )
        .reset_index()
    )
    points["error"] = points["predicted_speedup"] / points["measured_speedup"] - 1.0
display(points)
if not points.empty:
    judged = points[~points["stress"].astype(bool)]
    print(f"largest |error| (bound placements): {judged['error'].abs().max():.1%}")

# %%
judged_lags = sorted(
    {int(lag) for c in spec.get("claims", []) for lag in c.get("lag_bounds", []) or []}
)
run_lags = sorted({lag for s in runs["series"] if (lag := bf.lag_of(s)) is not None and lag})
lags = judged_lags or run_lags[-1:]
schedules = sim.delay_specs(runs)
base = bf.best_synchronous(cal) if not cal.empty else None
ranks_axis = [p for p in (2**k for k in range(3, 21)) if p <= max_ranks]
scale = pd.DataFrame()
if base is not None and schedules and lags:
    keys = set(sim.run_key(cal[cal["series"] == base]))
    pool = its[sim.run_key(its).isin(keys)]
    if "warmup" in pool.columns:
        pool = pool[~pool["warmup"].astype(bool)]
    pool = pool["compute_s"].to_numpy()
    row = cal[cal["series"] == base].iloc[0]
    samples_per_rank = float(row["samples"]) / float(row["measured_iterations"]) / row["world_size"]
    n_at = sim.bytes_per_peer(cal[cal["series"] == base].iloc[:1]).iloc[0] * row["world_size"]

    def bytes_at(p: int) -> float:
        # same samples per rank (weak scaling); the tables spread over p ranks
        return float(n_at) * float(row["world_size"]) / p if np.isfinite(n_at) else 0.0

    parts = []
    for workload, delay in schedules.items():
        part = sim.scale_out(
            pool, delay, ranks_axis, lags,
            exchange_cost=cost, overhead=overhead, sync_series=base,
            iterations=iterations, samples_per_rank=samples_per_rank,
            bytes_per_peer_at=bytes_at, seed=seed,
        )  # fmt: skip
        part.insert(0, "workload", workload)
        parts.append(part)
    scale = pd.concat(parts, ignore_index=True)
    scale["sync_capacity_per_rank_sps"] = scale["sync_capacity_sps"] / scale["ranks"]
    scale["bls_capacity_per_rank_sps"] = scale["bls_capacity_sps"] / scale["ranks"]
    scale["sync_series"] = base
display(scale)
about = bf.caption(runs[runs["workload"].isin(points["workload"])]) if len(points) else ""
display(Markdown(f"**Measured runs validated:** {about}"))

# %%
w, _ = bf.figsize(0.75)
fig, axes = plt.subplots(1, 3, figsize=(2 * w, 0.72 * w))
ax = axes[0]
if points.empty:
    bf.placeholder(ax, "no workload with a BLS series (L > 0)\nand a synchronous series")
else:
    hi = float(np.nanmax([points["predicted_speedup"].max(), points["measured_speedup"].max()]))
    lo = float(np.nanmin([points["predicted_speedup"].min(), points["measured_speedup"].min()]))
    lo, hi = min(lo, 1.0) * 0.95, hi * 1.08
    xs = np.linspace(lo, hi, 50)
    ax.fill_between(xs, 0.9 * xs, 1.1 * xs, color="#e6e6e6", zorder=0, label="within 10%")
    ax.plot(xs, xs, color="#222222", lw=0.6, zorder=1)
    for _, p in points.iterrows():
        colour = bf.bls_color(int(p["lag_bound"]))
        ax.plot(
            p["measured_speedup"], p["predicted_speedup"], ls="none",
            marker="s" if p["calibration"] else "o", ms=4,
            mfc="none" if p["stress"] else colour, mec=colour, zorder=3,
        )  # fmt: skip
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("Measured speedup (x)")
    ax.set_ylabel("Simulated speedup (x)")
    handles = [
        Line2D([], [], ls="none", marker="o", ms=4, color=bf.bls_color(int(lag)), label=f"L={lag}")
        for lag in sorted(points["lag_bound"].unique())
    ]
    handles.append(
        Line2D([], [], ls="none", marker="s", ms=4, mfc="none", mec="#666666", label="calibration")
    )
    if points["stress"].any():
        handles.append(
            Line2D([], [], ls="none", marker="o", ms=4, mfc="none", mec="#666666", label="stress")
        )
    ax.legend(handles=handles, fontsize="x-small", loc="upper left")
ax.set_title("simulation vs measured", fontsize="small")

colours = dict(zip(schedules, sns.color_palette("deep", max(len(schedules), 1)), strict=False))
styles = dict(zip(lags, ["-", "--", ":", "-."] * 4, strict=False))
for ax, what in ((axes[1], "speedup"), (axes[2], "capacity")):
    if scale.empty:
        bf.placeholder(ax, "no rotating or random delay schedule\nor no calibration runs")
        continue
    for workload, part in scale.groupby("workload", sort=False):
        for lag, line in part.groupby("lag_bound"):
            y = (
                line["predicted_speedup"]
                if what == "speedup"
                else line["bls_capacity_per_rank_sps"]
            )
            ax.plot(line["ranks"], y, color=colours[workload], ls=styles[lag], lw=1.1)
        if what == "capacity":
            first = part[part["lag_bound"] == lags[0]]
            ax.plot(
                first["ranks"], first["sync_capacity_per_rank_sps"],
                color=colours[workload], ls="none", marker="x", ms=3,
            )  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("Ranks P")
    if what == "speedup":
        ax.axhline(1.0, color="#222222", lw=0.6)
        ax.set_ylabel("Simulated speedup over sync (x)")
        ax.set_title("simulation: speedup", fontsize="small")
    else:
        ax.set_ylim(bottom=0)
        ax.set_ylabel("Simulated capacity per rank (samples/s)")
        ax.set_title("simulation: capacity", fontsize="small")
if not scale.empty:
    handles = [Line2D([], [], color=colours[k], lw=1.1, label=k) for k in schedules]
    handles += [Line2D([], [], color="#444444", ls=styles[lag], label=f"L={lag}") for lag in lags]
    handles.append(Line2D([], [], color="#444444", ls="none", marker="x", ms=3, label="sync"))
    axes[2].legend(handles=handles, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
sns.despine(fig)
fig.tight_layout()
note = (
    f"Simulation (bls_dlrm.analysis.simulate), not measurement. Exchange cost from {source}: "
    f"{cost.describe()}; per-series overheads calibrated on '{calibration}'. "
    f"Scale-out: compute drawn from the '{cal_id}' runs of {base}, delay schedules of "
    f"the sweep, lag bounds {', '.join(map(str, lags))} (protocol), sync = {base}. "
    f"Validated runs: {about}"
)
bf.footnote(fig, note)
drawn = pd.concat(
    [points.assign(panel="validation"), scale.assign(panel="scale-out")], ignore_index=True
)
paths = bf.save_figure(fig, out_dir, FIGURE)
paths.append(bf.save_drawn_data(drawn, out_dir, FIGURE))
print("\n".join(map(str, paths)))
display(fig)
plt.close(fig)
