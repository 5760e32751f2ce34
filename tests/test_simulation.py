"""The simulation with a measured exchange cost (bls_dlrm.analysis.simulate).

Checked: a free exchange is the theory's ideal recurrence bit for bit; a 2-rank case worked
by hand; the cost fit recovers known terms and leaves unidentifiable ones at 0; the
synchronous loop's fan-out over independent per-rank delays; the validation table on a
made-up sweep whose true model is known; reading bench-a2a output.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from bls_dlrm import theory
from bls_dlrm.analysis import simulate as sim
from bls_dlrm.delays import DelaySpec


@pytest.mark.parametrize("ranks", [1, 2, 3, 16])
@pytest.mark.parametrize("lag", [0, 1, 2, 5, None, math.inf, 1000])
def test_free_exchange_is_the_ideal_recurrence(ranks, lag):
    rng = np.random.default_rng(ranks)
    work = rng.exponential(0.004, (ranks, 120))
    work[rng.integers(0, ranks, 120), np.arange(120)] += 0.02
    run = sim.simulate(work, sim.ExchangeCost(), lag)
    assert run.makespan_s == theory.ideal_makespan(work, lag)
    assert np.array_equal(run.start, theory.start_times(work, lag))
    assert np.array_equal(run.finish, theory.start_times(work, lag) + work)
    assert sim.simulate(work, 0.0, lag).makespan_s == run.makespan_s


def test_zero_iterations_take_no_time():
    assert sim.simulate(np.zeros((3, 0)), 0.5, 0, overhead_s=0.1).makespan_s == 0.0


def test_two_ranks_by_hand():
    # rank 0 works 1 then 3, rank 1 works 2 then 1; an exchange takes 0.5 after the
    # last post, an iteration costs each rank 0.25 besides its work.
    work = np.array([[1.0, 3.0], [2.0, 1.0]])
    # L = 0: posts at 1.25, 2.25 -> exchange 0 done at 2.75; both start iteration 1 at
    # 2.75, post at 6.0 and 4.0 -> done at 6.5.
    sync = sim.simulate(work, 0.5, 0, overhead_s=0.25)
    assert sync.start.tolist() == [[0.0, 2.75], [0.0, 2.75]]
    assert sync.finish.tolist() == [[1.25, 6.0], [2.25, 4.0]]
    assert sync.complete.tolist() == [2.75, 6.5]
    assert sync.makespan_s == 6.5
    # L = 1: nobody waits for exchange 0; posts of iteration 1 at 4.5 and 3.5 -> 5.0.
    lagged = sim.simulate(work, 0.5, 1, overhead_s=0.25)
    assert lagged.start.tolist() == [[0.0, 1.25], [0.0, 2.25]]
    assert lagged.finish.tolist() == [[1.25, 4.5], [2.25, 3.5]]
    assert lagged.makespan_s == 5.0
    assert lagged.time_per_iteration_s == 2.5
    assert lagged.throughput_sps(100) == pytest.approx(40.0)
    # Without the overhead, L = 0: exchange 0 done at 2.5, iteration 1 posts at 5.5 -> 6.0.
    assert sim.simulate(work, 0.5, 0).makespan_s == 6.0
    # The exchange time comes from the cost model at the work's rank count.
    cost = sim.ExchangeCost(a=0.25, b=0.25)  # 0.5 s for 2 ranks
    assert sim.simulate(work, cost, 0).makespan_s == 6.0


def test_a_lag_bound_hides_the_exchange_time_but_not_the_overhead():
    work = np.full((4, 50), 0.01)
    x, o = 0.004, 0.002
    assert sim.simulate(work, x, 0, overhead_s=o).makespan_s == pytest.approx(50 * (0.01 + o + x))
    # L >= 1: the exchange overlaps the next iteration's work; only the last one shows.
    assert sim.simulate(work, x, 1, overhead_s=o).makespan_s == pytest.approx(50 * 0.012 + x)


def test_fit_recovers_known_terms():
    truth = sim.ExchangeCost(a=20e-6, b=3e-6, c=0.5e-9)
    rng = np.random.default_rng(0)
    rows = [
        {"ranks": p, "bytes_per_peer": n, "time_s": truth.time(p, n) + rng.normal(0, 0.5e-6)}
        for p in (2, 4, 8, 16, 32)
        for n in (1024, 16384, 65536, 262144)
    ]
    fitted = sim.ExchangeCost.fit(pd.DataFrame(rows))
    assert fitted.fitted == ("a", "b", "c")
    assert fitted.rows == len(rows)
    assert fitted.a == pytest.approx(truth.a, rel=0.1)
    assert fitted.b == pytest.approx(truth.b, rel=0.1)
    assert fitted.c == pytest.approx(truth.c, rel=0.05)
    # exact data: exact terms
    exact = [{**r, "time_s": truth.time(r["ranks"], r["bytes_per_peer"])} for r in rows]
    fitted = sim.ExchangeCost.fit(exact)
    for name in sim.TERMS:
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-6)


def test_fit_leaves_unidentifiable_terms_at_zero():
    one_size = [
        {"ranks": p, "bytes_per_peer": 4096, "time_s": 1e-5 + 2e-6 * (p - 1)} for p in (2, 4)
    ]
    one_size += [{"ranks": 4, "bytes_per_peer": 4096, "time_s": 1e-5 + 6e-6}]
    fitted = sim.ExchangeCost.fit(one_size)
    assert fitted.fitted == ("a", "b")  # c * 4096 * (P-1) is collinear with b * (P-1)
    assert fitted.c == 0.0
    assert fitted.time(3, 4096) == pytest.approx(1e-5 + 4e-6)
    one_rank_count = [{"ranks": 2, "bytes_per_peer": n, "time_s": 1e-4} for n in (1, 1, 1)]
    fitted = sim.ExchangeCost.fit(one_rank_count)
    assert fitted.fitted == ("a",) and fitted.a == pytest.approx(1e-4)
    assert "not identifiable" in fitted.describe()
    with pytest.raises(ValueError, match="time_s"):
        sim.ExchangeCost.fit([{"ranks": 2, "bytes_per_peer": 1}])
    with pytest.raises(ValueError, match=">= 0"):
        sim.ExchangeCost(a=-1.0)


def test_bench_table_reads_latency_rows(tmp_path):
    path = tmp_path / "a2a.jsonl"
    lines = [
        {"collective": "bls:0", "mode": "latency", "ranks": 2, "bytes_per_peer": 1024,
         "p50_us": 9.5, "p99_us": 20.0},
        {"collective": "bls:0", "mode": "schedule", "ranks": 2, "makespan_s": 1.0},
        {"collective": "mpi", "mode": "latency", "ranks": 4, "bytes_per_peer": 65536,
         "p50_us": 150.0, "p99_us": 300.0},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    table = sim.bench_table(path)
    assert table["ranks"].tolist() == [2, 4]
    assert table["bytes_per_peer"].tolist() == [1024, 65536]
    assert table["time_s"].tolist() == pytest.approx([9.5e-6, 150e-6])


def test_fan_out_sync_waits_for_the_slowest_of_p():
    """Independent per-rank delays: the synchronous time per iteration grows with P (the
    expected maximum of P draws), a lag bound's much less, so the speedup grows."""
    delay = DelaySpec(kind="random", size_s=0.004, p=0.25, distribution="exponential", seed=3)
    compute = np.random.default_rng(0).normal(0.004, 0.0002, 1000)
    rows = sim.scale_out(
        compute, delay, [2, 8, 64, 512], [8], exchange_cost=1e-4, overhead=5e-4,
        iterations=200, samples_per_rank=256,
    )  # fmt: skip
    sync = rows["sync_time_per_iteration_s"].to_numpy()
    bls = rows["bls_time_per_iteration_s"].to_numpy()
    speedup = rows["predicted_speedup"].to_numpy()
    assert np.all(np.diff(sync) > 0)
    assert sync[-1] > 2 * sync[0]
    assert np.all(np.diff(speedup) > 0)
    assert bls[-1] - bls[0] < 0.5 * (sync[-1] - sync[0])
    assert rows["simulated"].all()
    capacity = rows["sync_capacity_sps"] / rows["ranks"]
    assert np.all(np.diff(capacity.to_numpy()) < 0)  # per rank, the sync loop serves less
    assert rows["bls_capacity_sps"].iloc[0] == pytest.approx(2 * 256 / bls[0])
    # no delays: only the compute noise fans out (5% sd: the maximum of 64 is ~12% up)
    none = sim.scale_out(compute, DelaySpec(), [64], [8], iterations=200)
    assert 1.0 < none["predicted_speedup"].iloc[0] < 1.2 < speedup[2]


# --------------------------------------------------------------------------------------
# Validation on a made-up sweep whose runs follow the model exactly

X, OVH, ITS = 2e-4, 5e-4, 60


def _made_up_sweep():
    """runs and iterations tables: for each workload and repetition, one work matrix;
    every series' measured makespan is the model's on that matrix, so the model must
    predict every speedup exactly."""
    rng = np.random.default_rng(7)
    workloads = {"balanced": ("none", 0.0), "rotating": ("rotating", 0.02)}
    series = [("mpi", None), ("gloo", None), ("bls", 0), ("bls", 2), ("bls", 8)]
    runs, its = [], []
    for name, (kind, size) in workloads.items():
        for rep in range(3):
            work = rng.normal(0.004, 0.0003, (2, ITS))
            if size:
                work[rng.integers(0, 2, ITS), np.arange(ITS)] += size
            for collective, lag in series:
                model_lag = lag if collective == "bls" else 0
                extra = {"mpi": 1e-4, "gloo": 2e-4}.get(collective, 0.0)  # slower baselines
                run = sim.simulate(work, X, model_lag, overhead_s=OVH + extra)
                run_id = f"{name}/rep{rep}"
                params = {
                    "run_id": run_id, "collective": collective, "lag_bound": lag,
                    "world_size": 2, "config.tags.scenario": name, "config.repetition": rep,
                    "config.delay.kind": kind, "config.delay.size_s": size,
                    "config.plan_tables": json.dumps([[0, 1], [2, 3]]),
                    "config.model.name": "kaggle", "config.batch_size": 512,
                }  # fmt: skip
                runs.append(
                    {**params, "makespan_s": run.makespan_s,
                     "throughput_sps": 512 * ITS / run.makespan_s,
                     "samples": 512 * ITS, "measured_iterations": ITS}
                )  # fmt: skip
                posted = run.finish  # ready for the exchange when the iteration's work is done
                blocked = model_lag == 0
                for r in range(2):
                    for i in range(ITS):
                        its.append(
                            {**params, "rank": r, "iteration": i, "warmup": False,
                             "compute_s": work[r, i], "delay_s": 0.0,
                             "wait_s": float(run.complete[i] - posted[r, i]) if blocked else 0.0,
                             "t_posted": posted[r, i], "t_bottom": posted[r, i],
                             "t_completed": max(run.complete[i], posted[r, i])}
                        )  # fmt: skip
    runs_df, its_df = pd.DataFrame(runs), pd.DataFrame(its)
    for df in (runs_df, its_df):
        df["lag_bound"] = df["lag_bound"].astype("Int64")
    return runs_df, its_df


def test_validation_recovers_a_sweep_that_follows_the_model():
    runs, its = _made_up_sweep()
    samples = sim.exchange_samples(its, runs)
    assert samples["time_s"].to_numpy() == pytest.approx(X, rel=1e-9)
    assert samples["bytes_per_peer"].iloc[0] == 512 * 4 * 16 * 4 / 4
    cost, overhead = sim.fit_from_sweep(runs, its, "balanced")
    assert cost.fitted == ("a",) and cost.a == pytest.approx(X, rel=1e-9)
    assert overhead["bls L=2"] == pytest.approx(OVH, rel=1e-6)
    assert overhead["gloo"] == pytest.approx(OVH + 2e-4, rel=1e-6)
    table = sim.validation_table(runs, its, calibration="balanced")
    assert set(table["workload"]) == {"balanced", "rotating"}
    assert set(table["series"]) == {"bls L=2", "bls L=8"}
    assert (table["baseline"] == "bls L=0").all()  # the fastest synchronous series
    assert len(table) == 2 * 2 * 3
    assert table["error"].abs().max() < 1e-6
    assert table["calibration"].tolist() == (table["workload"] == "balanced").tolist()
    rot = table[table["workload"] == "rotating"]
    assert rot["measured_speedup"].min() > 1.3  # the delays are there to hide


def test_validation_error_is_predicted_over_measured():
    """A measured BLS run 25% faster than the model says shows as an error of -20% on
    exactly its rows; the prediction itself comes from the synchronous run's work."""
    runs, its = _made_up_sweep()
    faster = (runs["config.tags.scenario"] == "rotating") & (runs["lag_bound"] == 8)
    runs.loc[faster, "throughput_sps"] *= 1.25
    table = sim.validation_table(runs, its, calibration="balanced")
    hit = (table["workload"] == "rotating") & (table["series"] == "bls L=8")
    assert table.loc[hit, "error"].to_numpy() == pytest.approx(1 / 1.25 - 1, abs=1e-6)
    assert table.loc[~hit, "error"].abs().max() < 1e-6


def test_delay_specs_of_a_sweep():
    runs, _ = _made_up_sweep()
    specs = sim.delay_specs(runs)
    assert list(specs) == ["rotating"]
    assert specs["rotating"] == DelaySpec(kind="rotating", size_s=0.02)


def _prediction_check(runs, its):
    import copy
    from pathlib import Path

    from bls_dlrm import figures as bf
    from bls_dlrm.analysis import claims
    from bls_dlrm.analysis.judge import attach_predictions
    from bls_dlrm.analysis.protocol import load_protocol

    root = Path(__file__).resolve().parents[1]
    protocol = copy.deepcopy(load_protocol(root / "config" / "protocol.yaml"))
    entry = next(e for e in protocol["checks"] if e["metric"] == "prediction_ratio")
    entry["min_repetitions"] = 3  # the made-up sweep has 3 repetitions
    entry["calibration"] = "balanced"
    entry["lag_bounds"] = [2, 8]  # the made-up sweep's
    entry["workloads"] = ["rotating"]  # out of sample, as the protocol's
    protocol["checks"] = [entry]
    runs = attach_predictions(bf.annotate_runs(runs), its, protocol)
    (check,) = claims.evaluate_checks(runs, protocol=protocol)
    return check, runs


def test_claims_check_judges_the_prediction_error():
    from bls_dlrm.analysis import claims

    runs, its = _made_up_sweep()
    check, with_pred = _prediction_check(runs, its)
    assert with_pred.loc[with_pred["series"] == "bls L=8", "predicted_speedup"].notna().all()
    assert with_pred.loc[with_pred["series"] == "mpi", "predicted_speedup"].isna().all()
    assert check.verdict == claims.SUPPORTED, check.measured
    points = check.details["point"].to_numpy()
    assert points == pytest.approx(1.0, abs=1e-6)
    # BLS L=8 on the rotating workload measured 25% faster than predicted: 0.8, outside
    faster = (runs["config.tags.scenario"] == "rotating") & (runs["lag_bound"] == 8)
    runs.loc[faster, "throughput_sps"] *= 1.25
    check, _ = _prediction_check(runs, its)
    assert check.verdict == claims.NOT_SUPPORTED, check.measured
    row = check.details[(check.details["workload"] == "rotating")]
    row = row[row["series"] == "bls L=8"].iloc[0]
    assert row["point"] == pytest.approx(0.8, rel=1e-6)
