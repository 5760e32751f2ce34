"""The claims table and the paper's macros, judged by the protocol on tables built by hand.

Runs tables carry only the columns ``bls_dlrm.analysis.claims`` reads, named as
``bls_dlrm.analysis.tables`` names them; serving tables come from
``bls_dlrm.run.serving.sweep_tables`` on reports made here. Most sweeps here repeat each
value exactly, so the bootstrap interval is the point itself and a claim can be put
exactly at, or just beyond, its threshold.
"""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bls_dlrm.analysis import claims as cl
from bls_dlrm.analysis import machine as mc
from bls_dlrm.analysis import protocol as pr
from bls_dlrm.analysis import report as rp
from bls_dlrm.analysis.stats import ratio_ci
from bls_dlrm.figures import annotate_runs, palette, series_label, series_sort_key
from bls_dlrm.run.serving import sweep_tables

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = pr.load_protocol(ROOT / "config" / "protocol.yaml")
REPS = PROTOCOL["statistics"]["min_repetitions"]
SYNC = ("gloo", "mpi", "L0")
#: Position of claim (d) in the protocol's claims.
D = next(i for i, c in enumerate(PROTOCOL["claims"]) if c["key"] == "d")


def run(
    scenario: str,
    series: str,
    throughput: float,
    *,
    rep: int = 0,
    ideal: float = 1.0,
    checksum: str = "c0",
    kind: str | None = None,
) -> dict:
    """One row of a runs table."""
    collective, lag = ("bls", int(series[1:])) if series.startswith("L") else (series, None)
    if kind is None:
        kind = "rotating" if scenario.startswith(("rotating", "random")) else "none"
    samples = 2048 * 300
    return {
        "run_id": f"{scenario}-{series}-{rep}",
        "collective": collective,
        "lag_bound": lag,
        "world_size": 2,
        "samples": samples,
        "measured_iterations": 300,
        "throughput_sps": float(throughput),
        "makespan_s": samples / throughput,
        "ideal_speedup": ideal,
        "predictions_checksum": checksum,
        "config.tags.scenario": scenario,
        "config.repetition": rep,
        "config.delay.kind": kind,
        "config.delay.size_s": 0.0 if kind == "none" else 0.02,
        "config.dataset": "data/synthetic/kaggle-50k",
        "versions.python": "3.11.7",
        "versions.torch": "2.13.0+cpu",
        "versions.mpi4py": "4.1.2",
        "versions.mpi_library": "MPICH Version: 5.0.2 MPICH Release date: unknown",
        "hosts": 1,
    }


LABELS = ("series", "scenario", "scenario_class", "delay_kind", "delay_ms", "placement")


def frame(rows: list[dict]) -> pd.DataFrame:
    """A runs table, labelled once (as the claims CLI does) so each test judges it fast."""
    df = pd.DataFrame(rows)
    df = df.drop(columns=[c for c in (*LABELS, "workload") if c in df.columns])
    df["lag_bound"] = df["lag_bound"].astype("Int64")
    return annotate_runs(df)


def workload(
    scenario: str,
    sync: float,
    bls: dict[str, float],
    *,
    reps: int = REPS,
    ideal: float = 1.0,
    noise: float = 0.0,
    seed: int = 0,
    sync_others: float = 0.9,
) -> list[dict]:
    """Runs of one workload: mpi at ``sync``, gloo and bls L=0 a bit slower, and the
    BLS series given as ratios to ``sync``; optional multiplicative noise per run."""
    rng = np.random.default_rng(seed)
    rows = []
    for rep in range(reps):
        scale = 1.0 + 0.3 * rep  # each repetition's machine state scales every series alike

        def jitter() -> float:
            return float(rng.normal(1, noise)) if noise else 1.0

        rows.append(run(scenario, "mpi", sync * scale * jitter(), rep=rep))
        for s in ("gloo", "L0"):
            rows.append(run(scenario, s, sync * sync_others * scale * jitter(), rep=rep))
        for s, ratio in bls.items():
            rows.append(run(scenario, s, sync * ratio * scale * jitter(), rep=rep, ideal=ideal))
    return rows


def good_sweep(**override: dict[str, float]) -> pd.DataFrame:
    """Every workload of the protocol with numbers that support each claim."""
    spec = {
        "balanced": {"L4": 1.0, "L8": 1.0},
        "skew-pooling": {"L4": 1.2, "L8": 1.25},
        "random": {"L4": 1.3, "L8": 1.3},
        "rotating-2.5x": {"L4": 1.35, "L8": 1.40},
        "rotating-8x": {"L4": 1.7, "L8": 1.9},
        "straggler": {"L4": 1.0, "L8": 1.0},
        "unbalanced": {"L4": 1.0, "L8": 1.0},
    }
    ideal = {"rotating-2.5x": 1.45, "rotating-8x": 2.0, "skew-pooling": 1.3, "random": 1.4}
    spec |= override
    rows = []
    for name, bls in spec.items():
        rows += workload(name, 1000.0, bls, ideal=ideal.get(name, 1.0))
    return frame(rows)


def judged(runs: pd.DataFrame, protocol: dict | None = None) -> dict[str, cl.Claim]:
    claims = cl.evaluate(runs, protocol=protocol or PROTOCOL)
    return {c.label.strip("()").replace(") ", " "): c for c in claims}


def verdicts(runs: pd.DataFrame, protocol: dict | None = None) -> dict[str, str]:
    return {k: c.verdict for k, c in judged(runs, protocol).items()}


#: The closed-loop sweep alone: the serving parts of (b) have no serving tables to judge.
ALL_SUPPORTED = {
    "a": cl.SUPPORTED,
    "b throughput": cl.SUPPORTED,
    "b latency, capacity": cl.NOT_TESTED,
    "b latency, p99": cl.NOT_TESTED,
    "c": cl.SUPPORTED,
    "d": cl.SUPPORTED,
    "e": cl.SUPPORTED,
}


# --------------------------------------------------------------------------------------
# The protocol


def test_protocol_file_is_valid_and_names_every_claim():
    keys = [(c["key"], c.get("part", "")) for c in PROTOCOL["claims"]]
    assert [k for k, _ in keys] == ["a", "b", "b", "b", "c", "d", "e"]
    assert [p for _, p in keys][1:4] == ["throughput", "latency, capacity", "latency, p99"]
    assert PROTOCOL["statistics"]["confidence"] == 0.95
    assert PROTOCOL["statistics"]["min_repetitions"] >= 5
    assert PROTOCOL["synchronous"]["series"] == ["gloo", "mpi", "bls L=0"]
    assert len(PROTOCOL["_sha256"]) == 64
    for entry in PROTOCOL["claims"]:
        assert entry.get("lag_bounds", [0]) != [], entry["key"]


def _write_protocol(tmp_path: Path, data: dict) -> Path:
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda p: p["claims"][0]["threshold"].pop("high"), r"claims\[0\]\.threshold"),
        (lambda p: p["claims"][3].update(lag_bounds=[]), r"claims\[3\]\.lag_bounds"),
        (lambda p: p["statistics"].update(confidence=95), r"statistics\.confidence"),
        (lambda p: p["claims"][4].update(best_lag=True), r"claims\[4\]"),
        (lambda p: p["claims"][0]["threshold"].update(op="=>"), r"claims\[0\]\.threshold\.op"),
        (lambda p: p.pop("synchronous"), "synchronous"),
        (lambda p: p["claims"][0].update(workloads=["oversubscribed"]), "stress_workloads"),
        (lambda p: p["checks"][0].update(macro="Balanced"), "unique"),
    ],
)
def test_a_broken_protocol_is_refused_naming_the_key(tmp_path, edit, where):
    data = copy.deepcopy(PROTOCOL)
    edit(data)
    path = _write_protocol(tmp_path, data)
    with pytest.raises(pr.ProtocolError, match=where) as info:
        pr.load_protocol(path)
    assert str(path) in str(info.value)


def test_claims_code_holds_no_threshold_workload_or_lag_bound():
    """What is judged lives in the protocol only: no number other than trivial ones, and
    no workload name of the protocol, appears as a literal in the claims code."""
    code = ROOT / "src" / "bls_dlrm" / "analysis"
    tree = ast.parse("\n".join((code / f).read_text() for f in ("claims.py", "protocol.py")))
    numbers = {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, int | float)
    }
    numbers -= {True, False}
    # indices, digest lengths and rounding digits only (16, 20: hash and width; 12: digits)
    assert numbers <= {0, 1, 2, 3, 12, 16, 20}, sorted(numbers)
    strings = " ".join(
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    )
    names = {
        w
        for e in PROTOCOL["claims"]
        if isinstance(e.get("workloads"), list)
        for w in e["workloads"]
    }
    for name in names:
        assert not re.search(rf"\b{re.escape(name)}\b", strings), name


def test_verdicts_follow_the_protocol_not_the_code():
    runs = good_sweep(balanced={"L4": 1.04}, **{"rotating-8x": {"L4": 1.7, "L8": 1.9}})
    assert verdicts(runs) == ALL_SUPPORTED
    tight = copy.deepcopy(PROTOCOL)
    tight["claims"][0]["threshold"] = {"op": "within", "low": 0.98, "high": 1.02}
    tight["claims"][D]["threshold"] = {"op": ">", "value": 2.0}
    tight["claims"][D]["lag_bounds"] = [4]
    v = verdicts(runs, tight)
    assert v["a"] == cl.NOT_SUPPORTED  # 1.04 is outside a ±2 % band
    assert v["d"] == cl.NOT_SUPPORTED  # L=4 gives 1.7, and 2.0 is asked
    assert judged(runs, tight)["d"].numbers["Lag"] == "4"
    # Other workloads: claim (a) judged on a workload the code has never heard of.
    runs2 = frame([*runs.to_dict("records"), *workload("calm-seas", 1000, {"L4": 1.2})])
    moved = copy.deepcopy(PROTOCOL)
    moved["claims"][0]["workloads"] = ["calm-seas"]
    claim = judged(runs2, moved)["a"]
    assert claim.verdict == cl.NOT_SUPPORTED
    assert claim.numbers["Workloads"] == "calm-seas"
    assert claim.numbers["Point"] == "1.20"


def test_cli_reads_the_protocol_it_is_given(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    good_sweep().to_parquet(tables / "runs.parquet")
    strict = copy.deepcopy(PROTOCOL)
    strict["claims"][D]["threshold"] = {"op": ">", "value": 5.0}  # claim (d) at 5x
    path = _write_protocol(tmp_path, strict)
    out, macros = tmp_path / "claims.md", tmp_path / "macros.tex"
    argv = ["--tables", str(tables), "--out", str(out), "--macros", str(macros)]
    assert rp.main([*argv, "--protocol", str(path)]) == 0
    assert r"\newcommand{\ClaimSpeedupVerdict}{not supported}" in macros.read_text()
    assert rp.main(argv) == 0  # the project's protocol
    assert r"\newcommand{\ClaimSpeedupVerdict}{supported}" in macros.read_text()


def test_cli_refuses_a_broken_protocol(tmp_path, capsys):
    bad = copy.deepcopy(PROTOCOL)
    del bad["claims"][0]["threshold"]
    path = _write_protocol(tmp_path, bad)
    assert rp.main(["--tables", str(tmp_path), "--protocol", str(path)]) == 2
    assert "claims[0]" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# Verdicts at and beyond each threshold


def test_good_sweep_supports_every_claim_and_check():
    runs = good_sweep()
    claims = judged(runs)
    assert {k: c.verdict for k, c in claims.items()} == ALL_SUPPORTED
    assert claims["d"].numbers["Point"] == "1.90"
    assert claims["d"].numbers["Low"] == "1.90" and claims["d"].numbers["High"] == "1.90"
    assert claims["d"].numbers["Lag"] == "8"
    assert claims["c"].numbers["Point"] == f"{1.40 / 1.45:.2f}"
    assert claims["c"].numbers["Ideal"] == "1.45"
    checks = cl.evaluate_checks(runs, protocol=PROTOCOL)
    assert {c.key: c.verdict for c in checks} == {
        "straggler-no-gain": cl.SUPPORTED,
        "light-load-no-cost": cl.NOT_TESTED,  # serving checks: no serving tables here
        "balanced-capacity": cl.NOT_TESTED,
        "unbalanced-no-gain": cl.SUPPORTED,
        "simulation-error": cl.NOT_TESTED,  # no iterations table: nothing to simulate
    }


@pytest.mark.parametrize(
    ("claim", "override", "expected"),
    [
        # (a) within [0.95, 1.05], at L=4
        ("a", {"balanced": {"L4": 1.05}}, cl.SUPPORTED),
        ("a", {"balanced": {"L4": 0.95}}, cl.SUPPORTED),
        ("a", {"balanced": {"L4": 1.0501}}, cl.NOT_SUPPORTED),
        ("a", {"balanced": {"L4": 0.9499}}, cl.NOT_SUPPORTED),
        ("a", {"balanced": {"L4": 1.06}}, cl.NOT_SUPPORTED),
        # (b) throughput: CI low > 1.05 in skew-pooling and random, at L=4
        ("b throughput", {"random": {"L4": 1.05}}, cl.NOT_SUPPORTED),
        ("b throughput", {"random": {"L4": 1.0501}}, cl.SUPPORTED),
        ("b throughput", {"skew-pooling": {"L4": 1.0}}, cl.NOT_SUPPORTED),
        ("b throughput", {"skew-pooling": {"L4": 1.04, "L8": 1.5}}, cl.NOT_SUPPORTED),
        # (c) speedup at L=8 / ideal (1.45 here) >= 0.90
        ("c", {"rotating-2.5x": {"L8": 0.90 * 1.45}}, cl.SUPPORTED),
        ("c", {"rotating-2.5x": {"L8": 0.8999 * 1.45}}, cl.NOT_SUPPORTED),
        # (d) speedup at L=8 > 1.8
        ("d", {"rotating-8x": {"L8": 1.8}}, cl.NOT_SUPPORTED),
        ("d", {"rotating-8x": {"L8": 1.8001}}, cl.SUPPORTED),
        ("d", {"rotating-8x": {"L2": 2.5, "L8": 1.7}}, cl.NOT_SUPPORTED),  # fixed L, not best
    ],
)
def test_threshold_edges(claim, override, expected):
    runs = good_sweep(**override)
    assert verdicts(runs)[claim] == expected


def test_masking_divides_by_each_repetitions_own_ideal():
    rows = []
    for rep in range(REPS):
        ideal = 1.2 + 0.1 * rep  # the logged work differs per repetition
        rows += [
            run("rotating-2.5x", "mpi", 1000, rep=rep),
            run("rotating-2.5x", "L8", 1000 * ideal * 0.95, rep=rep, ideal=ideal),
        ]
    claim = judged(frame(rows))["c"]
    assert claim.verdict == cl.SUPPORTED
    assert claim.numbers["Point"] == claim.numbers["Low"] == claim.numbers["High"] == "0.95"


def test_best_synchronous_is_the_fastest_of_gloo_mpi_and_l0():
    rows = []
    for rep in range(REPS):
        rows += [
            run("rotating-8x", "mpi", 500, rep=rep),
            run("rotating-8x", "gloo", 600, rep=rep),  # the fastest synchronous series
            run("rotating-8x", "L0", 550, rep=rep),
            run("rotating-8x", "L8", 1140, rep=rep, ideal=2.0),  # 2.28x mpi, 1.9x gloo
        ]
    claim = judged(frame(rows))["d"]
    assert claim.numbers["Point"] == "1.90"
    assert claim.judgements[0].baseline == "gloo"


@pytest.mark.parametrize(
    ("claim", "scenario", "bls", "edge"),
    [
        ("a", "balanced", {"L4": 1.05}, 1.05),
        ("b throughput", "random", {"L4": 1.05}, 1.05),
        ("d", "rotating-8x", {"L8": 1.8}, 1.8),
    ],
)
def test_an_interval_straddling_the_threshold_is_inconclusive(claim, scenario, bls, edge):
    base = good_sweep()
    rows = [r for r in base.to_dict("records") if r["config.tags.scenario"] != scenario]
    rows += workload(scenario, 1000, bls, noise=0.03, seed=4, reps=8)
    c = judged(frame(rows))[claim]
    assert c.verdict == cl.INCONCLUSIVE, c.measured
    j = next(j for j in c.judgements if j.workload == scenario)
    assert j.low < edge < j.high


def test_too_few_repetitions_are_at_best_inconclusive():
    rows = []
    for name, bls in (("balanced", {"L4": 1.0}), ("rotating-8x", {"L8": 1.0})):
        rows += workload(name, 1000, bls, reps=REPS - 1)
    claims = judged(frame(rows))
    assert claims["a"].verdict == cl.INCONCLUSIVE
    assert claims["d"].verdict == cl.INCONCLUSIVE  # even though 1.0 is far below 1.8
    assert f"{REPS - 1} of {REPS} repetitions" in claims["a"].measured


def test_pairing_by_repetition_removes_shared_machine_state():
    # Repetitions differ by 30-120 % (scale), the ratio is 1.0 in each: paired, the
    # interval is the point; shuffling the table's rows changes nothing.
    runs = good_sweep().sample(frac=1.0, random_state=1)
    claim = judged(runs)["a"]
    assert claim.verdict == cl.SUPPORTED
    assert claim.numbers["Low"] == claim.numbers["High"] == "1.00"
    unpaired = copy.deepcopy(PROTOCOL)
    unpaired["statistics"]["paired"] = False
    claim_u = judged(runs, unpaired)["a"]
    assert claim_u.verdict == cl.INCONCLUSIVE  # the spread across repetitions remains


def test_missing_workloads_are_not_tested_and_partial_ones_inconclusive():
    runs = good_sweep()
    no_random = runs[runs["config.tags.scenario"] != "random"]
    assert verdicts(no_random)["b throughput"] == cl.INCONCLUSIVE
    only_balanced = runs[runs["config.tags.scenario"] == "balanced"]
    v = verdicts(only_balanced)
    assert v["a"] == cl.SUPPORTED
    assert v["b throughput"] == v["c"] == v["d"] == cl.NOT_TESTED
    no_l4 = runs[~((runs["config.tags.scenario"] == "balanced") & (runs["lag_bound"] == 4))]
    assert "no bls L=4 run" in judged(no_l4)["a"].measured


def test_stress_workload_is_reported_and_never_judged():
    runs = frame([*good_sweep().to_dict("records"), *workload("oversubscribed", 1000, {"L4": 3.0})])
    assert verdicts(runs) == ALL_SUPPORTED
    info = mc.run_info(runs, PROTOCOL)
    assert info["Stress scenarios (never judged)"] == "oversubscribed"


# --------------------------------------------------------------------------------------
# (e) accuracy


def test_accuracy_fails_when_one_checksum_differs():
    runs = good_sweep()
    assert verdicts(runs)["e"] == cl.SUPPORTED
    bad = runs.copy()
    bad.loc[bad.index[7], "predictions_checksum"] = "c1"
    claim = judged(bad)["e"]
    assert claim.verdict == cl.NOT_SUPPORTED
    assert claim.numbers["Identical"] == "6" and claim.numbers["Workloads"] == "7"


def test_accuracy_fails_when_a_checksum_is_missing():
    bad = good_sweep()
    bad.loc[bad.index[3], "predictions_checksum"] = None
    assert verdicts(bad)["e"] == cl.NOT_SUPPORTED


def test_accuracy_compares_every_iteration_when_given():
    runs = good_sweep()
    per_it = pd.DataFrame(
        [
            {"run_id": r, "iteration": i, "checksum": f"i{i}"}
            for r in runs["run_id"]
            for i in range(3)
        ]
    )
    claim = cl.evaluate(runs, per_it, PROTOCOL)[-1]
    assert claim.verdict == cl.SUPPORTED
    assert claim.numbers["Iterations"] == str(3 * len(runs))
    per_it.loc[5, "checksum"] = "other"
    assert cl.evaluate(runs, per_it, PROTOCOL)[-1].verdict == cl.NOT_SUPPORTED


def test_single_run_workloads_test_nothing():
    runs = frame([run("balanced", "mpi", 1000), run("rotating-8x", "mpi", 500)])
    assert set(verdicts(runs).values()) == {cl.NOT_TESTED}


def test_empty_runs_table():
    runs = frame([run("balanced", "mpi", 1.0)]).iloc[:0]
    assert set(verdicts(runs).values()) == {cl.NOT_TESTED}
    assert all(v == cl.NA for v in mc.sweep_info(runs).values())


# --------------------------------------------------------------------------------------
# (b) latency and the serving checks: the serving sweep's tables
#
# Tables come from bls_dlrm.run.serving.sweep_tables on serve.json reports made here: per
# workload and repetition, the launch's reference series (role "sync"), bls L=4 (judged)
# and bls L=8 (never judged: five times better everywhere, so picking it would show).

SERVE_LOADS = (0.3, 0.6, 1.0)


def _entry_of(key: str, part: str = "") -> dict:
    return next(
        e
        for e in [*PROTOCOL["claims"], *PROTOCOL.get("checks", [])]
        if e["key"] == key and e.get("part", "") == part
    )


CAPACITY = _entry_of("b", "latency, capacity")
P99 = _entry_of("b", "latency, p99")
SERVE_REPS = CAPACITY["min_repetitions"]


def _found(qps: float | None, below: float | None, ref_qps: float) -> dict:
    """One series' capacity search in a report (None: no probe passed, below_qps failed)."""
    return {
        "capacity_qps": qps,
        "below_qps": below,
        "resolution_qps": 0.01 * ref_qps,
        "closed_loop_qps": ref_qps,
        "ideal_sync_qps": 1.1 * ref_qps,
        "ideal_unbounded_qps": 2.0 * ref_qps,
        "slo_ms": 60.0,
        "percentile": 99.0,
        "probes": [{"passed": qps is not None}] * 6,
    }


def launch(
    sync_qps: float | None,
    bls_qps: float | None,
    p99: dict[float, tuple[float, float]],
    *,
    reference: str = "mpi",
    ref_qps: float = 1000.0,
    below: dict[str, float] | None = None,
) -> dict:
    """One serving launch's report: capacities of the reference and bls-L4 (None: no probe
    passed; then ``below["sync"]`` or ``below["bls"]`` is the lowest failing rate) and, per offered
    load, (sync p99, bls L=4 p99) in ms."""
    below = below or {}
    runs = []
    for k, (load, (sync_ms, bls_ms)) in enumerate(p99.items()):
        for label, ms in ((reference, sync_ms), ("bls-L4", bls_ms), ("bls-L8", sync_ms / 5)):
            runs.append(
                {
                    "series": label,
                    "rate_qps": load * ref_qps,
                    "load": load,
                    "load_index": k,
                    "p50_ms": ms / 3,
                    "p90_ms": ms / 2,
                    "p99_ms": ms,
                    "p99_9_ms": ms * 1.5,
                    "stable": True,
                    "run_dir": f"{label}/load~{k}",
                }
            )
    return {
        "ranks": 2,
        "calibration": {
            "series": reference,
            "capacity_qps": ref_qps,
            "ideal_sync_qps": 1.1 * ref_qps,
            "ideal_unbounded_qps": 2.0 * ref_qps,
        },
        "runs": runs,
        "capacity": {
            reference: _found(sync_qps, below.get("sync"), ref_qps),
            "bls-L4": _found(bls_qps, below.get("bls"), ref_qps),
            "bls-L8": _found(5 * (sync_qps or ref_qps), None, ref_qps),
        },
    }


def serving_sweep(reps: int = SERVE_REPS, **override: tuple) -> dict[str, pd.DataFrame]:
    """Every serving workload of the protocol, each supporting its claims and checks:
    ``workload=(capacity ratio BLS/sync, {load: p99 gain sync/BLS})``; every repetition
    scales all series alike (pairing removes it, so each interval is its point)."""
    spec = {
        "balanced": (1.0, {0.3: 1.0, 0.6: 1.0, 1.0: 1.0}),
        "rotating-2.5x": (1.4, {0.3: 1.0, 0.6: 1.3, 1.0: 2.0}),
        "skew-pooling": (1.2, {0.3: 0.98, 0.6: 1.2, 1.0: 1.5}),
    }
    spec |= {k.replace("_", "-"): v for k, v in override.items()}
    reports = {}
    for name, (ratio, gains) in spec.items():
        for rep in range(reps):
            scale = 1.0 + 0.3 * rep
            p99 = {
                load: (20 * scale * (1 + load), 20 * scale * (1 + load) / g)
                for load, g in gains.items()
            }
            reports[(name, rep)] = launch(
                800 * scale, 800 * scale * ratio, p99, ref_qps=1000 * scale
            )
    return sweep_tables(reports)


def serving_judged(serving, runs: pd.DataFrame | None = None) -> dict[str, cl.Claim]:
    """Claims and checks, by label, judged on a closed-loop sweep and serving tables."""
    runs = good_sweep() if runs is None else runs
    out = cl.evaluate(runs, protocol=PROTOCOL, serving=serving)
    out += cl.evaluate_checks(runs, protocol=PROTOCOL, serving=serving)
    return {c.label.strip("()").replace(") ", " "): c for c in out}


SERVING_PARTS = ("b latency, capacity", "b latency, p99", "light-load-no-cost", "balanced-capacity")


def _interval(num, den) -> tuple[float, float, float]:
    st = PROTOCOL["statistics"]
    return ratio_ci(
        num,
        den,
        paired=True,
        confidence=st["confidence"],
        n_resamples=st["n_resamples"],
        seed=st["seed"],
    )


def _custom(workload: str, reports: list[dict]) -> dict[str, pd.DataFrame]:
    """The good serving sweep with ``workload`` replaced by the given launches."""
    base = serving_sweep()
    mine = sweep_tables({(workload, rep): r for rep, r in enumerate(reports)})
    return {
        name: pd.concat([base[name][base[name]["workload"] != workload], mine[name]])
        for name in base
    }


def test_serving_protocol_entries():
    # Read through load_protocol, i.e. valid against the schema.
    assert CAPACITY["metric"] == "capacity_ratio" and "load" not in CAPACITY
    assert P99["metric"] == "p99_gain" and P99["load"] in SERVE_LOADS
    assert _entry_of("light-load-no-cost")["load"] in SERVE_LOADS
    assert _entry_of("balanced-capacity")["metric"] == "capacity_ratio"
    for entry in (CAPACITY, P99):
        assert entry["figure"] == "fig6_serving" and entry["lag_bounds"] == [4]
        assert entry["min_repetitions"] < PROTOCOL["statistics"]["min_repetitions"]


@pytest.mark.parametrize(
    ("group", "key", "edit", "where"),
    [
        ("claims", ("b", "latency, p99"), lambda e: e.pop("load"), r"'load' is a required"),
        ("checks", ("light-load-no-cost", ""), lambda e: e.pop("load"), r"'load' is a required"),
        ("claims", ("b", "latency, capacity"), lambda e: e.update(load=1.0), r"'load'"),
        ("checks", ("balanced-capacity", ""), lambda e: e.update(load=0.3), r"'load'"),
        ("claims", ("b", "latency, p99"), lambda e: e.update(load=0), r"\.load: 0 is less"),
        ("claims", ("b", "latency, p99"), lambda e: e.update(min_repetitions=0), "min_rep"),
    ],
)
def test_a_broken_serving_entry_is_refused_naming_the_key(tmp_path, group, key, edit, where):
    data = copy.deepcopy(PROTOCOL)
    index = next(i for i, e in enumerate(data[group]) if (e["key"], e.get("part", "")) == key)
    edit(data[group][index])
    path = _write_protocol(tmp_path, data)
    with pytest.raises(pr.ProtocolError, match=rf"{group}\[{index}\]") as info:
        pr.load_protocol(path)
    assert re.search(where, str(info.value)), str(info.value)


def test_good_serving_sweep_supports_the_latency_half_and_the_checks():
    claims = serving_judged(serving_sweep())
    assert {k: claims[k].verdict for k in SERVING_PARTS} == dict.fromkeys(
        SERVING_PARTS, cl.SUPPORTED
    )
    assert {k: c.verdict for k, c in claims.items()} == ALL_SUPPORTED | dict.fromkeys(
        SERVING_PARTS, cl.SUPPORTED
    ) | {
        "straggler-no-gain": cl.SUPPORTED,
        "unbalanced-no-gain": cl.SUPPORTED,
        "simulation-error": cl.NOT_TESTED,  # no iterations table: nothing to simulate
    }
    cap, p99 = claims["b latency, capacity"], claims["b latency, p99"]
    # The decisive judgement (smallest margin): skew-pooling, 1.2 and 1.5.
    assert cap.numbers["Point"] == cap.numbers["Low"] == cap.numbers["High"] == "1.20"
    assert p99.numbers["Point"] == "1.50"
    assert cap.numbers["Workloads"] == "rotating-2.5x, skew-pooling"
    assert cap.numbers["Repetitions"] == str(SERVE_REPS)
    assert "1.40 [1.40, 1.40] (rotating-2.5x, bls L=4; n=3 vs sync (mpi))" in cap.measured
    assert "2.00 [2.00, 2.00] (rotating-2.5x, bls L=4" in p99.measured
    assert p99.threshold == "95% CI low > 1.05 (at 1 x the synchronous capacity)"
    light = claims["light-load-no-cost"]
    assert light.numbers["Point"] == "0.98"  # skew-pooling at 0.3, not at 1.0
    assert claims["balanced-capacity"].numbers["Point"] == "1.00"
    assert list(cap.details["best synchronous"]) == ["sync (mpi)", "sync (mpi)"]


def test_capacity_ratio_is_the_geometric_mean_with_its_bootstrap_interval():
    sync = [900.0, 1200.0, 1000.0, 800.0, 1100.0]
    bls = [1300.0, 1500.0, 1450.0, 1000.0, 1500.0]
    reports = [
        launch(s, b, {1.0: (50.0, 25.0)}, ref_qps=1000.0 + 100 * k)
        for k, (s, b) in enumerate(zip(sync, bls, strict=True))
    ]
    claim = serving_judged(_custom("rotating-2.5x", reports))["b latency, capacity"]
    j = next(j for j in claim.judgements if j.workload == "rotating-2.5x")
    num, den = np.array(bls), np.array(sync)
    assert j.series == "bls L=4" and j.repetitions == len(sync)
    assert j.point == pytest.approx(np.exp(np.mean(np.log(num / den))), rel=1e-12)
    point, low, high = _interval(num, den)
    assert (j.point, j.low, j.high) == pytest.approx((point, low, high), rel=1e-12)
    assert low < j.point < high  # a real interval, not a degenerate one
    assert j.verdict == cl.SUPPORTED  # low = 1.27 > 1.05
    assert claim.verdict == cl.SUPPORTED


def test_p99_gain_is_sync_over_bls_at_exactly_the_entrys_load():
    load = P99["load"]
    sync_ms = [40.0, 55.0, 48.0, 60.0]
    gains = [1.5, 1.8, 1.6, 1.3]
    reports = []
    for s, g in zip(sync_ms, gains, strict=True):
        p99 = {
            0.3: (10.0, 10.0),  # light load: equal
            load - 0.05: (s, s * 3),  # near the judged load: BLS much slower
            load: (s, s / g),
            load + 0.05: (s * 4, s / 9),
        }
        reports.append(launch(800.0, 1000.0, p99))
    claims = serving_judged(_custom("skew-pooling", reports))
    j = next(j for j in claims["b latency, p99"].judgements if j.workload == "skew-pooling")
    num = np.array(sync_ms)
    den = num / np.array(gains)
    assert j.repetitions == len(gains)
    assert j.point == pytest.approx(np.exp(np.mean(np.log(gains))), rel=1e-12)
    assert (j.point, j.low, j.high) == pytest.approx(_interval(num, den), rel=1e-12)
    assert j.low < j.point < j.high
    light = claims["light-load-no-cost"]
    k = next(j for j in light.judgements if j.workload == "skew-pooling")
    assert (k.point, k.low, k.high) == (1.0, 1.0, 1.0)


def test_p99_gain_without_rows_at_the_entrys_load_is_not_tested():
    reports = [launch(800.0, 1000.0, {0.3: (10.0, 10.0), 0.6: (20.0, 10.0)})] * SERVE_REPS
    claim = serving_judged(_custom("skew-pooling", reports))["b latency, p99"]
    j = next(j for j in claim.judgements if j.workload == "skew-pooling")
    assert j.verdict == cl.NOT_TESTED
    assert claim.verdict == cl.INCONCLUSIVE  # rotating-2.5x is supported
    assert j.note == f"no serving runs of this workload at load {P99['load']:g}"


@pytest.mark.parametrize(
    ("part", "override", "expected"),
    [
        # (b) capacity: CI low > 1.05 on rotating-2.5x and skew-pooling, L=4
        ("b latency, capacity", {"rotating_2.5x": (1.05, {1.0: 2.0})}, cl.NOT_SUPPORTED),
        ("b latency, capacity", {"rotating_2.5x": (1.0501, {1.0: 2.0})}, cl.SUPPORTED),
        ("b latency, capacity", {"skew_pooling": (1.0, {1.0: 1.5})}, cl.NOT_SUPPORTED),
        # (b) p99 at load 1.0: CI low > 1.05
        ("b latency, p99", {"skew_pooling": (1.2, {1.0: 1.05})}, cl.NOT_SUPPORTED),
        ("b latency, p99", {"skew_pooling": (1.2, {1.0: 1.0501})}, cl.SUPPORTED),
        # light load (0.3): CI low >= 0.95 on balanced, rotating-2.5x, skew-pooling
        ("light-load-no-cost", {"rotating_2.5x": (1.4, {0.3: 0.95, 1.0: 2.0})}, cl.SUPPORTED),
        ("light-load-no-cost", {"balanced": (1.0, {0.3: 0.9499, 1.0: 1.0})}, cl.NOT_SUPPORTED),
        # balanced capacity within [0.95, 1.05]
        ("balanced-capacity", {"balanced": (1.05, {0.3: 1.0})}, cl.SUPPORTED),
        ("balanced-capacity", {"balanced": (0.95, {0.3: 1.0})}, cl.SUPPORTED),
        ("balanced-capacity", {"balanced": (1.0501, {0.3: 1.0})}, cl.NOT_SUPPORTED),
        ("balanced-capacity", {"balanced": (0.9499, {0.3: 1.0})}, cl.NOT_SUPPORTED),
    ],
)
def test_serving_threshold_edges(part, override, expected):
    assert serving_judged(serving_sweep(**override))[part].verdict == expected


@pytest.mark.parametrize("part", ["b latency, capacity", "b latency, p99"])
def test_a_serving_interval_straddling_the_threshold_is_inconclusive(part):
    ratios = [0.98, 1.03, 1.07, 1.12, 1.08, 1.01]
    if part == "b latency, capacity":
        reports = [launch(1000.0, 1000.0 * r, {1.0: (30.0, 15.0)}) for r in ratios]
    else:
        reports = [launch(800.0, 1000.0, {1.0: (30.0, 30.0 / r)}) for r in ratios]
    claim = serving_judged(_custom("rotating-2.5x", reports))[part]
    j = next(j for j in claim.judgements if j.workload == "rotating-2.5x")
    assert j.low < 1.05 < j.high
    assert j.verdict == claim.verdict == cl.INCONCLUSIVE, claim.measured


def test_fewer_serving_repetitions_than_the_entrys_minimum_are_inconclusive():
    claims = serving_judged(serving_sweep(reps=SERVE_REPS - 1))
    for part in SERVING_PARTS:
        assert claims[part].verdict == cl.INCONCLUSIVE, part
        assert f"{SERVE_REPS - 1} of {SERVE_REPS} repetitions" in claims[part].measured
    # The entry's own minimum (3), not the protocol's (5), is what counts.
    assert serving_judged(serving_sweep(reps=SERVE_REPS))["b latency, p99"].verdict == (
        cl.SUPPORTED
    )


@pytest.mark.parametrize(
    "serving",
    [None, {}, {"serving": pd.DataFrame(), "capacity": pd.DataFrame()}, "no rows"],
)
def test_without_serving_runs_the_serving_parts_are_not_tested(serving):
    if serving == "no rows":
        serving = {k: v.iloc[:0] for k, v in serving_sweep().items()}
    claims = serving_judged(serving)
    for part in SERVING_PARTS:
        claim = claims[part]
        assert claim.verdict == cl.NOT_TESTED, part
        assert all(j.note == "no serving runs in this sweep" for j in claim.judgements)
        assert "no serving runs in this sweep" in claim.measured
        assert claim.numbers["Verdict"] == cl.NOT_TESTED and claim.numbers["Point"] == cl.NA
    assert claims["a"].verdict == claims["straggler-no-gain"].verdict == cl.SUPPORTED


def test_a_capacity_without_a_passing_probe_counts_as_its_upper_bound():
    reports = [launch(800.0, 1120.0, {1.0: (40.0, 20.0)}) for _ in range(SERVE_REPS)]
    reports[1] = launch(800.0, None, {1.0: (40.0, 20.0)}, below={"bls": 960.0})
    claim = serving_judged(_custom("rotating-2.5x", reports))["b latency, capacity"]
    j = next(j for j in claim.judgements if j.workload == "rotating-2.5x")
    ratios = np.array([1.4, 1.2, 1.4])
    assert j.repetitions == SERVE_REPS
    assert j.point == pytest.approx(np.exp(np.mean(np.log(ratios))), rel=1e-12)
    assert "upper bound" in j.note and "1 capacities" in j.note
    assert "upper bound" in claim.measured
    # The synchronous series' capacity the same way.
    reports[1] = launch(None, 1120.0, {1.0: (40.0, 20.0)}, below={"sync": 700.0})
    j = serving_judged(_custom("rotating-2.5x", reports))["b latency, capacity"].judgements[0]
    assert j.point == pytest.approx(np.exp(np.mean(np.log([1.4, 1.6, 1.4]))), rel=1e-12)
    assert "upper bound" in j.note


def test_the_baseline_names_each_launchs_reference_series():
    good = serving_judged(serving_sweep())["b latency, capacity"]
    assert {j.baseline for j in good.judgements} == {"sync (mpi)"}
    assert "vs sync (mpi)" in good.measured
    reports = [
        launch(800.0, 1120.0, {1.0: (40.0, 20.0)}, reference=ref)
        for ref in ("mpi", "gloo", "bls-L0")
    ]
    claim = serving_judged(_custom("rotating-2.5x", reports))["b latency, capacity"]
    j = next(j for j in claim.judgements if j.workload == "rotating-2.5x")
    assert j.baseline == "sync (bls L=0, gloo, mpi)"
    assert j.repetitions == 3 and j.point == pytest.approx(1.4)  # paired within each launch
    assert "vs sync (bls L=0, gloo, mpi)" in claim.measured


def test_cli_judges_the_serving_tables_when_both_are_there(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    good_sweep().to_parquet(tables / "runs.parquet")
    out, macros = tmp_path / "claims.md", tmp_path / "macros.tex"
    argv = ["--tables", str(tables), "--out", str(out), "--macros", str(macros)]
    serving = serving_sweep()
    serving["serving"].to_parquet(tables / "serving.parquet", index=False)
    assert rp.main(argv) == 0  # capacity.parquet missing: nothing judged
    row = next(r for r in out.read_text().splitlines() if r.startswith("| (b) latency, capacity"))
    assert row.rstrip(" |").endswith("**not tested here**")
    assert "no serving runs in this sweep" in row
    serving["capacity"].to_parquet(tables / "capacity.parquet", index=False)
    assert rp.main(argv) == 0
    text = out.read_text()
    row = next(r for r in text.splitlines() if r.startswith("| (b) latency, capacity"))
    assert row.rstrip(" |").endswith("**supported**")
    assert "1.40 [1.40, 1.40] (rotating-2.5x, bls L=4; n=3 vs sync (mpi))" in row
    assert "`snakemake --cores 2 figures/fig6_serving.pdf`" in row
    row = next(r for r in text.splitlines() if r.startswith("| (b) latency, p99"))
    assert row.rstrip(" |").endswith("**supported**") and "2.00 [2.00, 2.00]" in row
    defined = dict(re.findall(r"\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}", macros.read_text()))
    assert defined["ClaimUnbalancedCapacityVerdict"] == "supported"
    assert defined["ClaimUnbalancedCapacityPoint"] == "1.20"
    assert defined["ClaimUnbalancedLatencyPoint"] == "1.50"
    assert defined["ClaimCheckBalancedCapacityVerdict"] == "supported"


# --------------------------------------------------------------------------------------
# Outputs


def test_markdown_opens_with_what_was_run_and_lists_every_claim():
    runs = good_sweep()
    claims = cl.evaluate(runs, protocol=PROTOCOL)
    text = rp.render_markdown(
        claims,
        mc.machine_info(runs),
        mc.sweep_info(runs),
        protocol=PROTOCOL,
        checks=cl.evaluate_checks(runs, protocol=PROTOCOL),
        setup=mc.run_info(runs, PROTOCOL),
        explore=cl.exploration(runs, PROTOCOL),
        workloads=mc.workload_table(runs),
    )
    head = text.split("## Claims", 1)[0]
    assert "independent reimplementation" in head and "2512.19342" in head
    for what in ("Data", "synthetic", "Injected delays", "Placement", "Repetitions"):
        assert what in head, what
    rows = [line for line in text.splitlines() if re.match(r"\| \([a-e]\)", line)]
    assert len(rows) == 7
    for row in rows[2:4]:  # the serving parts of (b): no serving tables
        assert row.rstrip(" |").endswith("**not tested here**")
    assert sum(line.rstrip(" |").endswith("**supported**") for line in rows) == 5
    assert "95% CI within [0.95, 1.05]" in text
    assert "`snakemake --cores 2 figures/fig3_speedup_vs_lag.pdf`" in text
    assert "## Checks (reported, not claims of the paper)" in text
    assert "## Exploration (not judged)" in text
    assert PROTOCOL["_sha256"][:16] in text


def test_macros_define_every_number_the_paper_uses():
    runs = good_sweep()
    claims = cl.evaluate(runs, protocol=PROTOCOL) + cl.evaluate_checks(runs, protocol=PROTOCOL)
    text = rp.render_macros(claims, mc.machine_info(runs), mc.sweep_info(runs), PROTOCOL)
    defined = dict(re.findall(r"\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}", text))
    expected = {
        "ClaimSpeedupPoint": "1.90",
        "ClaimSpeedupVerdict": "supported",
        "ClaimSpeedupThreshold": "95\\% CI low $>$ 1.8",
        "ClaimBalancedThreshold": "95\\% CI within [0.95, 1.05]",
        "ClaimUnbalancedLatencyVerdict": "not tested here",
        "ClaimAccuracyIdentical": "7",
        "ProtocolConfidence": "95\\%",
        "VersionTorch": "2.13.0+cpu",
        "VersionMPI": "MPICH 5.0.2",
        "SweepRanks": "2",
    }
    for name, value in expected.items():
        assert defined.get(name) == value, name
    lines = [line for line in text.splitlines() if line.startswith("\\newcommand")]
    assert len(lines) == len(defined)
    tex = (ROOT / "paper" / "main.tex").read_text()
    used = set(re.findall(r"\\((?:Claim|Threshold|Machine|Version|Sweep|Protocol)[A-Za-z]*)", tex))
    assert used <= set(defined), sorted(used - set(defined))


def test_macros_escape_latex():
    text = rp.render_macros([], {"CPU": "x_y & z 100%"}, {})
    assert r"\newcommand{\MachineCPU}{x\_y \& z 100\%}" in text


def test_cli_writes_both_files(tmp_path, capsys):
    tables = tmp_path / "tables"
    tables.mkdir()
    good_sweep().to_parquet(tables / "runs.parquet")
    out, macros = tmp_path / "claims.md", tmp_path / "paper" / "macros.tex"
    rc = rp.main(["--tables", str(tables), "--out", str(out), "--macros", str(macros)])
    assert rc == 0
    assert out.read_text().startswith("# Claims")
    assert r"\newcommand{\ClaimSpeedupPoint}{1.90}" in macros.read_text()
    assert "(d)" in capsys.readouterr().out


def test_cli_without_tables_fails(tmp_path, capsys):
    assert rp.main(["--tables", str(tmp_path)]) == 1
    assert "runs.parquet" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# Shared labels and palette (bls_dlrm.figures)


def test_series_labels_and_order():
    labels = [series_label(c, lag) for c, lag in (("gloo", 0), ("mpi", 0), ("bls", 0), ("bls", 8))]
    assert labels == ["gloo", "mpi", "bls L=0", "bls L=8"]
    assert sorted(reversed(labels), key=series_sort_key) == labels
    assert series_label("bls", pd.NA) == "bls L=0"
    assert annotate_runs(good_sweep())["workload"].nunique() == 7


def test_palette_is_fixed_per_series():
    a = palette(["bls L=8", "mpi"])
    b = palette(["gloo", "bls L=2", "bls L=8", "mpi"])
    assert a["bls L=8"] == b["bls L=8"] and a["mpi"] == b["mpi"]
    assert len(set(b.values())) == 4
