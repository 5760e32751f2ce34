"""The claims table and the paper's macros, judged by the protocol on runs tables built by hand.

Tables carry only the columns ``bls_dlrm.claims`` reads, named as ``bls_dlrm.tables`` names
them. Most sweeps here repeat each value exactly, so the bootstrap interval is the point
itself and a claim can be put exactly at, or just beyond, its threshold.
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

from bls_dlrm import claims as cl
from bls_dlrm.plotting import annotate_runs, palette, series_label, series_sort_key

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = cl.load_protocol(ROOT / "config" / "protocol.yaml")
REPS = PROTOCOL["statistics"]["min_repetitions"]
SYNC = ("gloo", "mpi", "L0")


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


ALL_SUPPORTED = {
    "a": cl.SUPPORTED,
    "b throughput": cl.SUPPORTED,
    "b latency": cl.NOT_TESTED,
    "c": cl.SUPPORTED,
    "d": cl.SUPPORTED,
    "e": cl.SUPPORTED,
}


# --------------------------------------------------------------------------------------
# The protocol


def test_protocol_file_is_valid_and_names_every_claim():
    keys = [(c["key"], c.get("part", "")) for c in PROTOCOL["claims"]]
    assert [k for k, _ in keys] == ["a", "b", "b", "c", "d", "e"]
    assert [p for _, p in keys][1:3] == ["throughput", "latency"]
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
    with pytest.raises(cl.ProtocolError, match=where) as info:
        cl.load_protocol(path)
    assert str(path) in str(info.value)


def test_claims_code_holds_no_threshold_workload_or_lag_bound():
    """What is judged lives in the protocol only: no number other than trivial ones, and
    no workload name of the protocol, appears as a literal in claims.py."""
    tree = ast.parse((ROOT / "src" / "bls_dlrm" / "claims.py").read_text())
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
    tight["claims"][4]["threshold"] = {"op": ">", "value": 2.0}
    tight["claims"][4]["lag_bounds"] = [4]
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
    strict["claims"][4]["threshold"] = {"op": ">", "value": 5.0}  # claim (d) at 5x
    path = _write_protocol(tmp_path, strict)
    out, macros = tmp_path / "claims.md", tmp_path / "macros.tex"
    argv = ["--tables", str(tables), "--out", str(out), "--macros", str(macros)]
    assert cl.main([*argv, "--protocol", str(path)]) == 0
    assert r"\newcommand{\ClaimSpeedupVerdict}{not supported}" in macros.read_text()
    assert cl.main(argv) == 0  # the project's protocol
    assert r"\newcommand{\ClaimSpeedupVerdict}{supported}" in macros.read_text()


def test_cli_refuses_a_broken_protocol(tmp_path, capsys):
    bad = copy.deepcopy(PROTOCOL)
    del bad["claims"][0]["threshold"]
    path = _write_protocol(tmp_path, bad)
    assert cl.main(["--tables", str(tmp_path), "--protocol", str(path)]) == 2
    assert "claims[0]" in capsys.readouterr().err


def test_figure_thresholds_come_from_the_protocol(monkeypatch):
    changed = copy.deepcopy(PROTOCOL)
    changed["claims"][0]["threshold"] = {"op": "within", "low": 0.9, "high": 1.1}
    changed["claims"][4]["threshold"] = {"op": ">", "value": 2.5}
    monkeypatch.setattr(cl, "load_protocol", lambda *a, **k: changed)
    assert abs(cl.BALANCED_TOLERANCE - 0.1) < 1e-12
    assert cl.SPEEDUP_CLAIM == 2.5


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
    assert [c.verdict for c in checks] == [cl.SUPPORTED, cl.SUPPORTED]


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


def test_latency_half_of_b_is_not_tested_here():
    claims = judged(good_sweep())
    lat = claims["b latency"]
    assert lat.verdict == cl.NOT_TESTED
    assert "open-loop" in lat.measured
    assert lat.numbers == {"Verdict": cl.NOT_TESTED, "Reason": lat.measured}


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
    info = cl.run_info(runs, PROTOCOL)
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
    assert all(v == cl.NA for v in cl.sweep_info(runs).values())


# --------------------------------------------------------------------------------------
# Outputs


def test_markdown_opens_with_what_was_run_and_lists_every_claim():
    runs = good_sweep()
    claims = cl.evaluate(runs, protocol=PROTOCOL)
    text = cl.render_markdown(
        claims,
        cl.machine_info(runs),
        cl.sweep_info(runs),
        protocol=PROTOCOL,
        checks=cl.evaluate_checks(runs, protocol=PROTOCOL),
        setup=cl.run_info(runs, PROTOCOL),
        explore=cl.exploration(runs, PROTOCOL),
        workloads=cl.workload_table(runs),
    )
    head = text.split("## Claims", 1)[0]
    assert "independent reimplementation" in head and "2512.19342" in head
    for what in ("Data", "synthetic", "Injected delays", "Placement", "Repetitions"):
        assert what in head, what
    rows = [line for line in text.splitlines() if re.match(r"\| \([a-e]\)", line)]
    assert len(rows) == 6
    assert rows[2].rstrip(" |").endswith("**not tested here**")
    assert sum(line.rstrip(" |").endswith("**supported**") for line in rows) == 5
    assert "95% CI within [0.95, 1.05]" in text
    assert "`snakemake --cores 2 figures/fig3_speedup_vs_lag.pdf`" in text
    assert "## Checks (reported, not claims of the paper)" in text
    assert "## Exploration (not judged)" in text
    assert PROTOCOL["_sha256"][:16] in text


def test_macros_define_every_number_the_paper_uses():
    runs = good_sweep()
    claims = cl.evaluate(runs, protocol=PROTOCOL) + cl.evaluate_checks(runs, protocol=PROTOCOL)
    text = cl.render_macros(claims, cl.machine_info(runs), cl.sweep_info(runs), PROTOCOL)
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
    text = cl.render_macros([], {"CPU": "x_y & z 100%"}, {})
    assert r"\newcommand{\MachineCPU}{x\_y \& z 100\%}" in text


def test_cli_writes_both_files(tmp_path, capsys):
    tables = tmp_path / "tables"
    tables.mkdir()
    good_sweep().to_parquet(tables / "runs.parquet")
    out, macros = tmp_path / "claims.md", tmp_path / "paper" / "macros.tex"
    rc = cl.main(["--tables", str(tables), "--out", str(out), "--macros", str(macros)])
    assert rc == 0
    assert out.read_text().startswith("# Claims")
    assert r"\newcommand{\ClaimSpeedupPoint}{1.90}" in macros.read_text()
    assert "(d)" in capsys.readouterr().out


def test_cli_without_tables_fails(tmp_path, capsys):
    assert cl.main(["--tables", str(tmp_path)]) == 1
    assert "runs.parquet" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# Shared labels and palette (bls_dlrm.plotting)


def test_series_labels_and_order():
    labels = [series_label(c, lag) for c, lag in (("mpi", 0), ("gloo", 0), ("bls", 0), ("bls", 8))]
    assert labels == ["mpi", "gloo", "bls L=0", "bls L=8"]
    assert sorted(reversed(labels), key=series_sort_key) == labels
    assert series_label("bls", pd.NA) == "bls L=0"
    assert annotate_runs(good_sweep())["workload"].nunique() == 7


def test_palette_is_fixed_per_series():
    a = palette(["bls L=8", "mpi"])
    b = palette(["gloo", "bls L=2", "bls L=8", "mpi"])
    assert a["bls L=8"] == b["bls L=8"] and a["mpi"] == b["mpi"]
    assert len(set(b.values())) == 4
