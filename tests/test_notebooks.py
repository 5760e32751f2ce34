"""Every figure notebook runs under papermill and writes its figure, on two sweeps:

- ``full``: tables made here in memory, with every series (mpi, gloo, bls L=0/1/2/4/8),
  three repetitions, the default sweep's workloads on 2 ranks and the 4-rank
  "oversubscribed" stress scenario, so each drawing path runs;
- ``fixture``: tables built by :func:`bls_dlrm.analysis.collect.collect` from the stored logs in
  ``tests/data/runs`` (complete runs only): the real table schema, and a sweep that lacks
  most series, so each "plot what exists" path runs.

Notebooks are started as subprocesses of this interpreter (``python -m papermill -k
python3``), two at a time, once per module; each test then checks one output.

Each figure also writes the points it draws (``<figure>.csv``); the ``test_fig*_draws``
tests recompute those points from the full sweep's tables here, independently of the
notebooks and of :mod:`bls_dlrm.figures`, so a notebook that draws a placeholder, the
wrong workload or the wrong column fails.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
FIXTURE_RUNS = Path(__file__).resolve().parent / "data" / "runs"
FIGURES = [
    "fig1_throughput_vs_delay",
    "fig2_latency",
    "fig3_speedup_vs_lag",
    "fig4_scenarios",
    "fig5_breakdown",
    "fig7_simulation",
]
SWEEPS = ("full", "fixture")
TIMEOUT_S = 240

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------------------
# A complete small sweep, as tables


#: The made-up sweep: workload -> (delay kind, delay size in s, table plan, ranks, tags).
#: Named as the default sweep's workloads; "oversubscribed" is its labeled stress scenario.
WORKLOADS = {
    "balanced": ("none", 0.0, "contiguous", 2, {}),
    "rotating-2.5x": ("rotating", 0.025, "contiguous", 2, {}),
    "rotating-8x": ("rotating", 0.080, "contiguous", 2, {}),
    "random": ("random", 0.010, "contiguous", 2, {}),
    "straggler": ("straggler", 0.010, "contiguous", 2, {}),
    "unbalanced": ("none", 0.0, "unbalanced", 2, {}),
    "skew-pooling": ("none", 0.0, "contiguous", 2, {"pooling": "heavy"}),
    "oversubscribed": ("none", 0.0, "contiguous", 4, {}),
}
SERIES = [("mpi", None), ("gloo", None), *(("bls", lag) for lag in (0, 1, 2, 4, 8))]
REPETITIONS, ITERATIONS, WARMUP, BATCH = 3, 8, 2, 1024


def _full_tables(out: Path) -> None:
    """Write runs/per_iteration/iterations.parquet of a made-up sweep with every series."""
    rng = np.random.default_rng(0)
    it_rows, pi_rows, run_rows = [], [], []
    for scenario, (kind, size, plan, ranks, tags) in WORKLOADS.items():
        for collective, lag in SERIES:
            for rep in range(REPETITIONS):
                run_id = f"{scenario}/{collective}-{lag}/rep{rep}"
                params = {
                    "collective": collective,
                    "lag_bound": lag,
                    "world_size": ranks,
                    "config.dataset": "data/synthetic/kaggle-50k-s0",
                    "config.plan": plan,
                    "config.iterations": ITERATIONS,
                    "config.warmup": WARMUP,
                    "config.delay.kind": kind,
                    "config.delay.size_s": size,
                    "config.delay.mode": "busy",
                    "config.repetition": rep,
                    "config.tags.scenario": scenario,
                    "config.tags.rep": rep,
                    "config.tags.pooling": tags.get("pooling", "fixed"),
                }
                work = 0.01 + rng.uniform(0, 0.002, (ranks, ITERATIONS))
                if plan == "unbalanced":
                    work[0] += 0.004
                if "pooling" in tags:
                    work[rng.integers(0, ranks, ITERATIONS), np.arange(ITERATIONS)] += 0.006
                delay = np.zeros((ranks, ITERATIONS))
                if kind == "rotating":
                    delay[rng.integers(0, ranks, ITERATIONS), np.arange(ITERATIONS)] = size
                elif kind == "straggler":
                    delay[-1] = size
                elif kind == "random":
                    delay = np.where(rng.uniform(size=delay.shape) < 0.25, size, 0.0)
                step = (work + delay).max(axis=0)
                if collective == "bls" and lag:  # some of the delay is hidden
                    step = (work + delay).mean(axis=0) + 0.002 / lag
                step = step * rng.uniform(0.97, 1.03)  # noise of the repetition
                t_start = np.concatenate([[0.0], np.cumsum(step)[:-1]])
                latency = step * (1 + (lag or 0))
                for r in range(ranks):
                    for i in range(ITERATIONS):
                        it_rows.append(
                            {
                                "run_id": run_id,
                                "rank": r,
                                "iteration": i,
                                "t_start": t_start[i],
                                "t_done": t_start[i] + step[i],
                                "compute_s": work[r, i],
                                "delay_s": delay[r, i],
                                "wait_s": max(step[i] - work[r, i] - delay[r, i], 0.0),
                                "latency_s": step[i],
                                **params,
                            }
                        )
                for i in range(ITERATIONS):
                    pi_rows.append(
                        {
                            "run_id": run_id,
                            "iteration": i,
                            "latency_s": latency[i] * rng.uniform(0.9, 1.1),
                            "iteration_time_s": step[i],
                            **params,
                        }
                    )
                makespan = float(step.sum())
                sync = float((work + delay).max(axis=0).sum())
                ideal = float((work + delay).sum(axis=1).max()) if lag else sync
                run_rows.append(
                    {
                        "run_id": run_id,
                        **params,
                        "binding": "core",
                        "cores_per_rank": 1,
                        "samples": BATCH * ITERATIONS,
                        "measured_iterations": ITERATIONS,
                        "makespan_s": makespan,
                        "throughput_sps": BATCH * ITERATIONS / makespan,
                        "latency_p50_s": float(np.median(latency)),
                        "latency_p95_s": float(np.percentile(latency, 95)),
                        "latency_p99_s": float(np.percentile(latency, 99)),
                        "iteration_time_p99_s": float(np.percentile(step, 99)),
                        "iteration_time_p50_s": float(np.median(step)),
                        "ideal_makespan_s": ideal,
                        "ideal_makespan_sync_s": sync,
                        "ideal_speedup": sync / ideal,
                        "ideal_efficiency": ideal / makespan,
                        "wait_share": 0.1,
                        "lag_max": lag or 0,
                        "predictions_checksum": f"sum-{scenario}",
                    }
                )
    out.mkdir(parents=True)
    for name, rows in (("iterations", it_rows), ("per_iteration", pi_rows), ("runs", run_rows)):
        df = pd.DataFrame(rows)
        df["lag_bound"] = df["lag_bound"].astype("Int64")
        df.to_parquet(out / f"{name}.parquet", index=False)


def _fixture_tables(out: Path) -> None:
    from bls_dlrm.analysis.collect import collect

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the stored killed run is skipped
        collect(FIXTURE_RUNS, out, skip_incomplete=True, progress=False)


# --------------------------------------------------------------------------------------
# Running the notebooks


def _execute(source: Path, work: Path, tables: Path, figures: Path) -> subprocess.CompletedProcess:
    import jupytext

    work.mkdir(parents=True, exist_ok=True)
    notebook = work / f"{source.stem}.ipynb"
    jupytext.write(jupytext.read(source), notebook)
    argv = [
        sys.executable,
        "-m",
        "papermill",
        str(notebook),
        str(work / f"{source.stem}.out.ipynb"),
    ]
    argv += ["-k", "python3", "--no-progress-bar", "-p", "tables_dir", str(tables)]
    argv += ["-p", "out_dir", str(figures)]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT, check=False
    )


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """{(sweep, notebook): (completed process, figures folder)} for every pair."""
    base = tmp_path_factory.mktemp("notebooks")
    tables = {"full": base / "full" / "tables", "fixture": base / "fixture" / "tables"}
    _full_tables(tables["full"])
    _fixture_tables(tables["fixture"])
    jobs = {
        (sweep, name): (
            NOTEBOOKS / f"{name}.py",
            base / sweep / "nb",
            tables[sweep],
            base / sweep / "figures",
        )
        for sweep in SWEEPS
        for name in [*FIGURES, "overview"]
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(_execute, *args) for key, args in jobs.items()}
        return {key: (f.result(), jobs[key][3]) for key, f in futures.items()}


def _fail_message(result: subprocess.CompletedProcess) -> str:
    return f"papermill exited {result.returncode}\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("sweep", SWEEPS)
@pytest.mark.parametrize("name", FIGURES)
def test_figure_written(executed, sweep, name):
    result, figures = executed[(sweep, name)]
    assert result.returncode == 0, _fail_message(result)
    pdf, png = figures / f"{name}.pdf", figures / f"{name}.png"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.stat().st_size > 1000 and png.stat().st_size > 1000
    assert (figures / f"{name}.csv").is_file()
    leftovers = [p.name for p in figures.iterdir() if p.name.startswith(".")]
    assert not leftovers  # no temporary files from save_figure


@pytest.mark.parametrize("sweep", SWEEPS)
def test_overview_runs(executed, sweep):
    result, figures = executed[(sweep, "overview")]
    assert result.returncode == 0, _fail_message(result)
    # Given an out_dir, the overview writes its one figure and nothing else.
    assert sorted(p.name for p in figures.glob("overview*")) == [
        "overview_speedup.pdf",
        "overview_speedup.png",
    ]


def test_parameters_cell_holds_only_inputs():
    import jupytext

    for name in [*FIGURES, "overview", "fig6_serving"]:
        nb = jupytext.read(NOTEBOOKS / f"{name}.py")
        cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(cells) == 1, name
        names = [line.split(":")[0] for line in cells[0].source.splitlines() if line.strip()]
        assert {"tables_dir", "out_dir", "style"} <= set(names), name
        assert all(n.isidentifier() for n in names), name  # plain assignments only


# --------------------------------------------------------------------------------------
# The drawn data, recomputed from the full sweep's tables

from bls_dlrm.series import SYNC_SERIES as SYNC  # noqa: E402


@pytest.fixture(scope="module")
def full_tables(executed, tmp_path_factory):
    """The full sweep's runs table with plain labels (series, scenario)."""
    folder = next(iter(executed.values()))[1].parent.parent / "full" / "tables"
    runs = pd.read_parquet(folder / "runs.parquet")
    runs["series"] = [
        c if c != "bls" else f"bls L={int(lag)}"
        for c, lag in zip(runs["collective"], runs["lag_bound"], strict=True)
    ]
    runs["scenario"] = runs["config.tags.scenario"]
    return folder, runs


def _drawn(executed, name: str) -> pd.DataFrame:
    result, figures = executed[("full", name)]
    assert result.returncode == 0, _fail_message(result)
    return pd.read_csv(figures / f"{name}.csv")


def _series_values(runs, scenario, series, column="throughput_sps"):
    part = runs[(runs["scenario"] == scenario) & (runs["series"] == series)]
    return part.sort_values("config.repetition")[column].to_numpy()


def _best_sync(runs, scenario):
    """The baseline rule of claims and figures (bls_dlrm.analysis.compare)."""
    from bls_dlrm.analysis.compare import best_synchronous

    return best_synchronous(runs[runs["scenario"] == scenario], SYNC)


def _protocol():
    import yaml

    path = ROOT / "config" / "protocol.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def _interval(num, den):
    from bls_dlrm.analysis.stats import ratio_ci

    stats = _protocol().get("statistics", {})
    kwargs = {"confidence": stats.get("confidence", 0.95), "seed": stats.get("seed", 0)}
    if "n_resamples" in stats:
        kwargs["n_resamples"] = stats["n_resamples"]
    return ratio_ci(num, den, paired=True, **kwargs)


def _check_ratio(row, runs, scenario, series):
    """A drawn ratio row: baseline, geometric mean of per-repetition ratios, interval."""
    base = _best_sync(runs, scenario)
    assert row["baseline"] == base, (scenario, series)
    num = _series_values(runs, scenario, series)
    den = _series_values(runs, scenario, base)
    assert len(num) == len(den) == REPETITIONS
    point = float(np.exp(np.mean(np.log(num / den))))
    ratio = row["ratio"] if "ratio" in row else row["speedup"]
    assert ratio == pytest.approx(point, rel=1e-8), (scenario, series)
    _, low, high = _interval(num, den)
    assert (row["low"], row["high"]) == pytest.approx((low, high), rel=1e-8)
    assert row["low"] <= ratio <= row["high"]
    ideal = np.median(_series_values(runs, scenario, series, "ideal_speedup"))
    assert row["ideal_speedup"] == pytest.approx(ideal, rel=1e-8)


def test_fig1_draws_medians_and_ideal(executed, full_tables):
    _, runs = full_tables
    drawn = _drawn(executed, "fig1_throughput_vs_delay")
    measured = drawn[drawn["kind"] == "measured"]
    # rotating is the delay kind with the most sizes; the balanced workload stands in for 0.
    by_delay = {0.0: "balanced", 25.0: "rotating-2.5x", 80.0: "rotating-8x"}
    series = set(runs["series"])
    assert {(s, d) for s, d in zip(measured["series"], measured["delay_ms"], strict=True)} == {
        (s, d) for s in series for d in by_delay
    }
    for _, row in measured.iterrows():
        values = _series_values(runs, by_delay[row["delay_ms"]], row["series"])
        assert row["throughput_sps"] == pytest.approx(np.median(values), rel=1e-8)
        assert (row["low_sps"], row["high_sps"]) == pytest.approx((values.min(), values.max()))
        assert row["runs"] == REPETITIONS
    ideal = drawn[drawn["kind"] == "ideal"].set_index("delay_ms")
    assert set(ideal["series"]) == {"bls L=8"} and set(ideal.index) == set(by_delay)
    for delay, scenario in by_delay.items():
        base = np.median(_series_values(runs, scenario, _best_sync(runs, scenario)))
        factor = np.median(_series_values(runs, scenario, "bls L=8", "ideal_speedup"))
        assert ideal.loc[delay, "throughput_sps"] == pytest.approx(base * factor, rel=1e-8)


def test_fig2_draws_every_iteration_latency(executed, full_tables):
    folder, runs = full_tables
    drawn = _drawn(executed, "fig2_latency")
    per_iteration = pd.read_parquet(folder / "per_iteration.parquet")
    per_iteration = per_iteration.merge(runs[["run_id", "scenario", "series"]], on="run_id")
    # No-delay panel: balanced; delayed panel: the largest rotating delay.
    assert set(drawn["workload"]) == {"balanced", "rotating-8x"}
    for (scenario, series), part in drawn.groupby(["workload", "series"]):
        expected = per_iteration[
            (per_iteration["scenario"] == scenario) & (per_iteration["series"] == series)
        ]["latency_s"]
        assert len(part) == len(expected) == REPETITIONS * ITERATIONS
        np.testing.assert_allclose(part["latency_ms"], np.sort(expected) * 1e3, rtol=1e-8)
        np.testing.assert_allclose(part["fraction"], np.arange(1, len(part) + 1) / len(part))
    assert drawn.groupby("workload")["series"].nunique().eq(len(SERIES)).all()


def test_fig3_draws_speedups_with_intervals(executed, full_tables):
    _, runs = full_tables
    drawn = _drawn(executed, "fig3_speedup_vs_lag")
    unbalanced = [w for w in WORKLOADS if w not in ("balanced", "oversubscribed")]
    bls = [f"bls L={lag}" for lag in (0, 1, 2, 4, 8)]
    assert sorted(zip(drawn["workload"], drawn["series"], strict=True)) == sorted(
        (w, s) for w in unbalanced for s in bls
    )
    for _, row in drawn.iterrows():
        _check_ratio(row, runs, row["workload"], row["series"])
        assert row["lag"] == int(row["series"].split("=")[1])


def test_fig4_draws_judged_lag_bound_with_intervals(executed, full_tables):
    _, runs = full_tables
    drawn = _drawn(executed, "fig4_scenarios")
    claims = [
        c
        for c in _protocol().get("claims", [])
        if c.get("figure") == "fig4_scenarios" and c.get("metric") == "throughput_ratio"
    ]
    lag = max((lb for c in claims for lb in c.get("lag_bounds", [])), default=8)
    assert set(drawn["series"]) == {f"bls L={lag}"}
    assert sorted(drawn["workload"]) == sorted(WORKLOADS)
    classes = dict(zip(drawn["workload"], drawn["scenario_class"], strict=True))
    assert classes["oversubscribed"] == "stress" and classes["balanced"] == "balanced"
    assert classes["rotating-8x"] == "delayed" and classes["skew-pooling"] == "skewed"
    assert drawn["workload"].iloc[-1] == "oversubscribed"  # drawn apart, last
    for _, row in drawn.iterrows():
        _check_ratio(row, runs, row["workload"], row["series"])


def test_fig5_draws_per_rank_time_of_median_runs(executed, full_tables):
    folder, runs = full_tables
    drawn = _drawn(executed, "fig5_breakdown")
    iterations = pd.read_parquet(folder / "iterations.parquet")
    scenario = "rotating-8x"  # the largest delay of the primary kind
    assert list(dict.fromkeys(drawn["series"])) == [_best_sync(runs, scenario), "bls L=8"]
    for series, part in drawn.groupby("series"):
        candidates = runs[(runs["scenario"] == scenario) & (runs["series"] == series)]
        median_run = candidates.sort_values(["makespan_s", "run_id"]).iloc[
            (len(candidates) - 1) // 2
        ]
        assert set(part["run_id"]) == {median_run["run_id"]}
        its = iterations[iterations["run_id"] == median_run["run_id"]]
        mean_ms = its.groupby("rank")[["compute_s", "delay_s", "wait_s"]].mean() * 1e3
        part = part.set_index("rank").sort_index()
        np.testing.assert_allclose(part["compute"], mean_ms["compute_s"], rtol=1e-8)
        np.testing.assert_allclose(part["injected delay"], mean_ms["delay_s"], rtol=1e-8)
        np.testing.assert_allclose(part["blocked wait"], mean_ms["wait_s"], rtol=1e-8)
        per_it = median_run["makespan_s"] / median_run["measured_iterations"] * 1e3
        np.testing.assert_allclose(part["ms_per_iteration"], per_it, rtol=1e-8)


def test_fig7_draws_simulated_against_measured_and_the_scale_out(executed, full_tables):
    """Validation points recomputed here: the overhead per series calibrated on the
    balanced runs (the made-up tables have no phase times, so the exchange is free), the
    best synchronous run's work simulated at L = 0 and at each BLS L, against the measured
    throughput ratio. Scale-out rows recomputed from the same inputs."""
    from bls_dlrm.analysis import simulate as sim
    from bls_dlrm.delays import DelaySpec

    folder, runs = full_tables
    drawn = _drawn(executed, "fig7_simulation")
    its = pd.read_parquet(folder / "iterations.parquet")

    def work(scenario, series, rep):
        run = runs[
            (runs["scenario"] == scenario)
            & (runs["series"] == series)
            & (runs["config.repetition"] == rep)
        ].iloc[0]
        part = its[its["run_id"] == run["run_id"]]  # one run id per series here
        m = part.pivot(index="rank", columns="iteration", values="compute_s")
        d = part.pivot(index="rank", columns="iteration", values="delay_s")
        return (m + d).to_numpy(), run

    def lag_of(series):
        return int(series.split("=")[1]) if series.startswith("bls") else 0

    overhead = {}
    for series in set(runs["series"]):
        values = []
        for rep in range(REPETITIONS):
            w, run = work("balanced", series, rep)
            free = sim.simulate(w, 0.0, lag_of(series)).makespan_s
            values.append(max(0.0, (run["makespan_s"] - free) / w.shape[1]))
        overhead[series] = float(np.median(values))

    valid = drawn[drawn["panel"] == "validation"]
    bls = [f"bls L={lag}" for lag in (1, 2, 4, 8)]
    assert sorted(zip(valid["workload"], valid["series"], strict=True)) == sorted(
        (w, s) for w in WORKLOADS for s in bls
    )
    for _, row in valid.iterrows():
        scenario, series = row["workload"], row["series"]
        base = _best_sync(runs, scenario)
        assert row["baseline"] == base
        predicted, measured = [], []
        for rep in range(REPETITIONS):
            w, b = work(scenario, base, rep)
            _, t = work(scenario, series, rep)
            sync = sim.simulate(w, 0.0, 0, overhead_s=overhead[base]).makespan_s
            lagged = sim.simulate(w, 0.0, lag_of(series), overhead_s=overhead[series]).makespan_s
            predicted.append(sync / lagged)
            measured.append(t["throughput_sps"] / b["throughput_sps"])
        gm = [float(np.exp(np.mean(np.log(v)))) for v in (predicted, measured)]
        assert row["predicted_speedup"] == pytest.approx(gm[0], rel=1e-8), (scenario, series)
        assert row["measured_speedup"] == pytest.approx(gm[1], rel=1e-8), (scenario, series)
        assert row["error"] == pytest.approx(gm[0] / gm[1] - 1, rel=1e-6, abs=1e-9)
        assert bool(row["stress"]) == (scenario == "oversubscribed")
        assert bool(row["calibration"]) == (scenario == "balanced")

    scale = drawn[drawn["panel"] == "scale-out"]
    lags = sorted({lb for c in _protocol().get("claims", []) for lb in c.get("lag_bounds", [])})
    assert set(scale["workload"]) == {"rotating-2.5x", "rotating-8x", "random"}
    assert set(scale["lag_bound"]) == set(lags)
    assert sorted(set(scale["ranks"])) == [2**k for k in range(3, 11)]
    assert scale["simulated"].astype(bool).all()
    # the random workload's row at P = 64, from the balanced runs' compute (table order)
    base = _best_sync(runs, "balanced")
    keys = set(sim.run_key(runs[(runs["scenario"] == "balanced") & (runs["series"] == base)]))
    pool = its[sim.run_key(its).isin(keys)]["compute_s"].to_numpy()
    delay = DelaySpec(kind="random", size_s=WORKLOADS["random"][1])
    expected = sim.scale_out(
        pool, delay, [64], lags, overhead=overhead, sync_series=base,
        iterations=300, samples_per_rank=BATCH / 2,
    )  # fmt: skip
    got = scale[(scale["workload"] == "random") & (scale["ranks"] == 64)].sort_values("lag_bound")
    for column in ("predicted_speedup", "sync_capacity_sps", "bls_capacity_sps"):
        np.testing.assert_allclose(got[column], expected[column], rtol=1e-8)
    # fan-out: with independent per-rank delays the synchronous loop serves less per rank
    random = scale[(scale["workload"] == "random") & (scale["lag_bound"] == lags[-1])]
    per_rank = random.sort_values("ranks")["sync_capacity_per_rank_sps"].to_numpy()
    assert per_rank[-1] < 0.8 * per_rank[0]
    assert (random["predicted_speedup"] > 1).all()


def test_captions_are_computed_from_the_tables(executed):
    """The caption under every figure names ranks, placement, repetitions and iterations
    as the tables have them (the made-up sweep: 2 ranks bound, 3 x 8 iterations)."""
    for name in FIGURES:
        result, _ = executed[("full", name)]
        assert result.returncode == 0, _fail_message(result)
        text = (executed[("full", name)][1].parent / "nb" / f"{name}.out.ipynb").read_text()
        assert "2 ranks, bound one per core" in text, name
        assert f"{REPETITIONS} repetitions of {ITERATIONS} measured iterations" in text, name
        assert "synthetic data" in text, name
    fig4 = executed[("full", "fig4_scenarios")][1].parent / "nb" / "fig4_scenarios.out.ipynb"
    assert "Stress scenario oversubscribed (4 ranks" in fig4.read_text()


# --------------------------------------------------------------------------------------
# Plain log ticks (Fig. 2) and placement labels


def test_plain_log_ticks_are_readable():
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    from bls_dlrm.figures import plain_log_ticks, plain_number, set_plain_log_axis

    assert plain_log_ticks(5, 300) == [10.0, 30.0, 100.0, 300.0]
    assert plain_log_ticks(1, 1000) == [1.0, 10.0, 100.0, 1000.0]
    assert len(plain_log_ticks(12, 15)) >= 3
    assert [plain_number(v) for v in (0.5, 20.0, 1000.0, 1e6)] == ["0.5", "20", "1000", "1000000"]
    fig, ax = plt.subplots()
    ax.plot([8, 400], [0, 1])
    ax.set_xscale("log")
    ax.set_xlim(8, 400)
    ticks = set_plain_log_axis(ax, "x")
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    plt.close(fig)
    assert labels == [plain_number(t) for t in ticks] == ["10", "30", "100", "300"]


def test_stress_scenario_and_placement_labels():
    from bls_dlrm.figures import annotate_runs

    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c", "d"],
            "collective": ["mpi"] * 4,
            "world_size": [2, 4, 2, 2],
            "config.tags.scenario": ["balanced", "oversubscribed", "balanced-x", "b2"],
            "binding": ["core", "core", "none", None],
            "cores_per_rank": [1, 1, 1, 0.5],
        }
    )
    out = annotate_runs(runs)
    assert out["placement"].tolist() == [
        "bound one per core",
        "oversubscribed",
        "not bound",
        "oversubscribed",
    ]
    assert out["scenario_class"].tolist() == ["balanced", "stress", "balanced", "stress"]


# --------------------------------------------------------------------------------------
# Fig. 6: the serving sweep (open loop), on serving tables made here

SERVING_FIGURE = "fig6_serving"
#: Serving workloads -> BLS capacity over sync and p99 gain at full load, per repetition.
SERVING_WORKLOADS = {"balanced": (1.0, 1.0), "rotating-2.5x": (1.35, 1.8)}
SERVING_LOADS = (0.3, 0.6, 1.0, 1.2)
#: The launch's reference (served as "sync"), by repetition: each launch picks its own.
#: Five repetitions: with three, a bootstrap interval hardly depends on its seed.
SERVING_REFERENCES = ("mpi", "gloo", "mpi", "bls-L0", "mpi")


def _serving_reports() -> dict[tuple[str, int], dict]:
    """serve.json reports of a made-up serving sweep: per workload and repetition, the
    reference series, bls-L4 and bls-L8 at every load, and each one's capacity."""
    rng = np.random.default_rng(6)
    reports = {}
    for workload, (cap_gain, p99_gain) in SERVING_WORKLOADS.items():
        for rep, reference in enumerate(SERVING_REFERENCES):
            ref_qps = 800.0 * rng.uniform(0.9, 1.1)
            runs = []
            for k, load in enumerate(SERVING_LOADS):
                base = 5.0 * (1 + 4 * load**3) * rng.uniform(0.8, 1.2)
                for label, gain in ((reference, 1.0), ("bls-L4", p99_gain), ("bls-L8", 1.1)):
                    p99 = base / (1 + (gain - 1) * load) * rng.uniform(0.9, 1.1)
                    runs.append(
                        {
                            "series": label,
                            "rate_qps": load * ref_qps * rng.uniform(0.99, 1.01),
                            "load": load,
                            "load_index": k,
                            "p50_ms": p99 * rng.uniform(0.3, 0.6),
                            "p90_ms": p99 * 0.8,
                            "p99_ms": p99,
                            "p99_9_ms": p99 * 1.2,
                            "stable": bool(load < 1.1),
                            "run_dir": f"{label}/load~{k}",
                        }
                    )
            sync_cap = ref_qps * rng.uniform(0.7, 0.9)
            caps = {
                reference: sync_cap,
                "bls-L4": sync_cap * cap_gain * rng.uniform(0.95, 1.05),
                "bls-L8": sync_cap * 1.1 * rng.uniform(0.95, 1.05),
            }
            reports[(workload, rep)] = {
                "ranks": 2,
                "calibration": {
                    "series": reference,
                    "capacity_qps": ref_qps,
                    "ideal_sync_qps": ref_qps * 1.1,
                    "ideal_unbounded_qps": ref_qps * cap_gain * 1.2,
                },
                "runs": runs,
                "capacity": {
                    label: {
                        "capacity_qps": qps,
                        "below_qps": None,
                        "resolution_qps": 10.0,
                        "closed_loop_qps": ref_qps,
                        "ideal_sync_qps": ref_qps * 1.1,
                        "ideal_unbounded_qps": ref_qps * 1.5,
                        "slo_ms": 60.0,
                        "percentile": 99.0,
                        "probes": [{"passed": True}] * 6,
                    }
                    for label, qps in caps.items()
                },
            }
    return reports


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """fig6_serving executed on three table folders: ``full`` (the made-up serving sweep,
    via bls_dlrm.run.serving.sweep_tables), ``empty`` (the same columns, no rows) and
    ``missing`` (no serving tables at all): {case: (process, tables, figures)}."""
    from bls_dlrm.run.serving import sweep_tables

    base = tmp_path_factory.mktemp("serving")
    tables = {case: base / case / "tables" for case in ("full", "empty", "missing")}
    for folder in tables.values():
        folder.mkdir(parents=True)
    made = sweep_tables(_serving_reports())
    for name, df in made.items():
        df.to_parquet(tables["full"] / f"{name}.parquet", index=False)
        df.iloc[:0].to_parquet(tables["empty"] / f"{name}.parquet", index=False)
    source = NOTEBOOKS / f"{SERVING_FIGURE}.py"
    jobs = {
        case: (source, base / case / "nb", t, base / case / "figures") for case, t in tables.items()
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case: pool.submit(_execute, *args) for case, args in jobs.items()}
        return {case: (f.result(), jobs[case][2], jobs[case][3]) for case, f in futures.items()}


def test_fig6_writes_the_figure(served):
    result, _, figures = served["full"]
    assert result.returncode == 0, _fail_message(result)
    pdf, png = figures / f"{SERVING_FIGURE}.pdf", figures / f"{SERVING_FIGURE}.png"
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert not [p.name for p in figures.iterdir() if p.name.startswith(".")]


def test_fig6_draws_median_latencies_and_capacity_ratios(served):
    """Every drawn point recomputed from the serving tables: latency medians over
    repetitions per workload, role and load; capacities (medians) and the BLS/sync
    capacity ratio, paired by repetition, with the protocol's bootstrap interval."""
    result, tables, figures = served["full"]
    assert result.returncode == 0, _fail_message(result)
    drawn = pd.read_csv(figures / f"{SERVING_FIGURE}.csv")
    serving = pd.read_parquet(tables / "serving.parquet")
    capacity = pd.read_parquet(tables / "capacity.parquet")
    roles = {"sync", "bls L=4", "bls L=8"}
    reps = len(SERVING_REFERENCES)

    latency = drawn[drawn["kind"] == "latency"]
    assert sorted(
        zip(latency["workload"], latency["role"], latency["load"], strict=True)
    ) == sorted((w, r, load) for w in SERVING_WORKLOADS for r in roles for load in SERVING_LOADS)
    for _, row in latency.iterrows():
        part = serving[
            (serving["workload"] == row["workload"])
            & (serving["role"] == row["role"])
            & np.isclose(serving["load"], row["load"])
        ]
        assert len(part) == reps
        if row["role"] == "sync":  # each repetition's own reference series
            labels = [r.replace("bls-L", "bls L=") for r in SERVING_REFERENCES]
            assert sorted(part["series"]) == sorted(labels)
        p99 = part["p99_ms"].to_numpy()
        assert row["p99_ms"] == pytest.approx(np.median(p99), rel=1e-8)
        assert row["p50_ms"] == pytest.approx(np.median(part["p50_ms"]), rel=1e-8)
        assert (row["p99_min_ms"], row["p99_max_ms"]) == pytest.approx((p99.min(), p99.max()))
        x = np.median(part["rate_qps"] / part["reference_qps"])
        assert row["x"] == pytest.approx(x, rel=1e-8)
        assert row["x"] == pytest.approx(row["load"], rel=0.02)

    caps = drawn[drawn["kind"] == "capacity"]
    assert sorted(zip(caps["workload"], caps["role"], strict=True)) == sorted(
        (w, r) for w in SERVING_WORKLOADS for r in roles
    )
    for _, row in caps.iterrows():
        part = capacity[(capacity["workload"] == row["workload"])]
        own = part[part["role"] == row["role"]].sort_values("repetition")
        assert len(own) == reps
        median = np.median(own["capacity_qps"])
        assert row["capacity_qps"] == pytest.approx(median, rel=1e-8)
        assert row["x"] == pytest.approx(median / np.median(own["reference_qps"]), rel=1e-8)
        if row["role"] == "sync":
            assert np.isnan(row["ratio"])
            continue
        sync = part[part["role"] == "sync"].sort_values("repetition")
        num, den = own["capacity_qps"].to_numpy(), sync["capacity_qps"].to_numpy()
        point = float(np.exp(np.mean(np.log(num / den))))
        assert row["ratio"] == pytest.approx(point, rel=1e-8)
        _, low, high = _interval(num, den)
        assert (row["low"], row["high"]) == pytest.approx((low, high), rel=1e-8)
        assert row["low"] <= row["ratio"] <= row["high"]
    gains = caps[caps["role"] == "bls L=4"].set_index("workload")["ratio"]
    for workload, (cap_gain, _) in SERVING_WORKLOADS.items():
        assert gains[workload] == pytest.approx(cap_gain, rel=0.06)


def test_fig6_on_empty_serving_tables_draws_a_placeholder(served):
    result, _, figures = served["empty"]
    assert result.returncode == 0, _fail_message(result)
    assert (figures / f"{SERVING_FIGURE}.pdf").read_bytes()[:5] == b"%PDF-"
    assert (figures / f"{SERVING_FIGURE}.png").is_file()
    drawn = pd.read_csv(figures / f"{SERVING_FIGURE}.csv")
    assert drawn.empty and {"workload", "role", "load", "p99_ms"} <= set(drawn.columns)
    nb = (figures.parent / "nb" / f"{SERVING_FIGURE}.out.ipynb").read_text()
    assert "workloads: []" in nb


def test_fig6_without_serving_tables_fails_naming_the_tool(served):
    result, _, figures = served["missing"]
    assert result.returncode != 0
    assert "serving.parquet: no such table" in result.stderr
    assert "bls-dlrm serve-tables" in result.stderr
    assert not (figures / f"{SERVING_FIGURE}.pdf").exists()
