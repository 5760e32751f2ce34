"""Every figure notebook runs under papermill and writes its figure, on two sweeps:

- ``full``: tables made here in memory, with every series (mpi, gloo, bls L=0/2/8), two
  repetitions, and balanced, skewed and delayed workloads, so each drawing path runs;
- ``fixture``: tables built by :func:`bls_dlrm.tables.collect` from the stored logs in
  ``tests/data/runs`` (complete runs only): the real table schema, and a sweep that lacks
  most series, so each "plot what exists" path runs.

Notebooks are started as subprocesses of this interpreter (``python -m papermill -k
python3``), two at a time, once per module; each test then checks one output.
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
]
SWEEPS = ("full", "fixture")
TIMEOUT_S = 240

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------------------
# A complete small sweep, as tables


def _full_tables(out: Path) -> None:
    """Write runs/per_iteration/iterations.parquet of a made-up sweep with every series."""
    rng = np.random.default_rng(0)
    ranks, iterations, batch = 4, 8, 1024
    scenarios = {  # name -> (delay kind, size_s, plan)
        "balanced": ("none", 0.0, "contiguous"),
        "rotating-10ms": ("rotating", 0.010, "contiguous"),
        "rotating-20ms": ("rotating", 0.020, "contiguous"),
        "straggler": ("straggler", 0.020, "contiguous"),
        "unbalanced": ("none", 0.0, "unbalanced"),
    }
    series = [("mpi", 0), ("gloo", 0), ("bls", 0), ("bls", 2), ("bls", 8)]
    it_rows, pi_rows, run_rows = [], [], []
    for scenario, (kind, size, plan) in scenarios.items():
        for collective, lag in series:
            for rep in range(2):
                run_id = f"{scenario}/{collective}-{lag}/rep{rep}"
                params = {
                    "collective": collective,
                    "lag_bound": lag,
                    "world_size": ranks,
                    "config.plan": plan,
                    "config.delay.kind": kind,
                    "config.delay.size_s": size,
                    "config.repetition": rep,
                    "config.tags.scenario": scenario,
                    "config.tags.rep": rep,
                }
                work = 0.01 + rng.uniform(0, 0.002, (ranks, iterations))
                delay = np.zeros((ranks, iterations))
                if kind == "rotating":
                    delay[rng.integers(0, ranks, iterations), np.arange(iterations)] = size
                elif kind == "straggler":
                    delay[-1] = size
                step = (work + delay).max(axis=0)
                if collective == "bls" and lag > 0:  # some of the delay is hidden
                    step = (work + delay).mean(axis=0) + 0.002 / lag
                t_start = np.concatenate([[0.0], np.cumsum(step)[:-1]])
                latency = step * (1 + lag)
                for r in range(ranks):
                    for i in range(iterations):
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
                for i in range(iterations):
                    pi_rows.append(
                        {
                            "run_id": run_id,
                            "iteration": i,
                            "latency_s": latency[i],
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
                        "samples": batch * iterations,
                        "measured_iterations": iterations,
                        "makespan_s": makespan,
                        "throughput_sps": batch * iterations / makespan,
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
                        "lag_max": lag,
                        "predictions_checksum": f"sum-{scenario}",
                    }
                )
    out.mkdir(parents=True)
    for name, rows in (("iterations", it_rows), ("per_iteration", pi_rows), ("runs", run_rows)):
        df = pd.DataFrame(rows)
        df["lag_bound"] = df["lag_bound"].astype("Int64")
        df.to_parquet(out / f"{name}.parquet", index=False)


def _fixture_tables(out: Path) -> None:
    from bls_dlrm.tables import collect

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

    for name in [*FIGURES, "overview"]:
        nb = jupytext.read(NOTEBOOKS / f"{name}.py")
        cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(cells) == 1, name
        names = [line.split(":")[0] for line in cells[0].source.splitlines() if line.strip()]
        assert {"tables_dir", "out_dir", "style"} <= set(names), name
        assert all(n.isidentifier() for n in names), name  # plain assignments only
