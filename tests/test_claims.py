"""The claims table and the paper's macros, on runs tables built by hand.

Each claim is checked with numbers that support it, numbers that do not, and a sweep that
lacks what the test needs ("not tested here"). The tables carry only the columns
``bls_dlrm.claims`` reads, with the names ``bls_dlrm.tables`` gives them.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest

from bls_dlrm import claims as cl
from bls_dlrm.plotting import annotate_runs, palette, series_label, series_sort_key

SERIES = {"mpi": ("mpi", 0), "gloo": ("gloo", 0), "L0": ("bls", 0), "L2": ("bls", 2)}
SERIES["L8"] = ("bls", 8)


def run(
    scenario: str,
    series: str,
    throughput: float,
    *,
    latency: float = 0.010,
    ideal: float = 1.0,
    kind: str | None = None,
    size: float | None = None,
    checksum: str = "c0",
    rep: int = 0,
    efficiency: float = 0.9,
) -> dict:
    """One row of a runs table: the fields the claims read."""
    collective, lag = SERIES[series]
    if kind is None:
        kind = "none" if scenario in ("balanced", "zipf", "unbalanced") else "rotating"
    if size is None:
        size = 0.0 if kind == "none" else 0.020
    samples = 8192 * 20
    return {
        "run_id": f"{scenario}-{series}-{rep}",
        "collective": collective,
        "lag_bound": lag,
        "world_size": 4,
        "samples": samples,
        "measured_iterations": 20,
        "throughput_sps": throughput,
        "makespan_s": samples / throughput,
        "latency_p50_s": latency,
        "latency_p99_s": latency * 1.5,
        "iteration_time_p99_s": latency,
        "iteration_time_p50_s": latency,
        "ideal_speedup": ideal,
        "ideal_efficiency": efficiency,
        "predictions_checksum": checksum,
        "config.tags.scenario": scenario,
        "config.tags.rep": rep,
        "config.repetition": rep,
        "config.delay.kind": kind,
        "config.delay.size_s": size,
        "config.collective": collective,
        "config.lag_bound": lag,
        "versions.python": "3.11.7",
        "versions.torch": "2.13.0+cpu",
        "versions.mpi4py": "4.1.2",
        "versions.mpi_library": "MPICH Version: 5.0.2 MPICH Release date: unknown",
        "hosts": 1,
    }


def frame(*rows: dict) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    df["lag_bound"] = df["lag_bound"].astype("Int64")
    return df


def by_key(claims: list[cl.Claim]) -> dict[str, cl.Claim]:
    return {c.key: c for c in claims}


def verdicts(runs: pd.DataFrame) -> dict[str, str]:
    return {c.key: c.verdict for c in cl.evaluate(runs)}


# A sweep that supports every claim: balanced within 5 %, a rotating delay masked well.
def good_sweep() -> pd.DataFrame:
    return frame(
        run("balanced", "mpi", 1000),
        run("balanced", "gloo", 900),
        run("balanced", "L0", 990),
        run("balanced", "L8", 1020, ideal=1.01),
        run("rotating-20ms", "mpi", 500, latency=0.030),
        run("rotating-20ms", "gloo", 450, latency=0.035),
        run("rotating-20ms", "L0", 495, latency=0.031),
        run("rotating-20ms", "L8", 950, latency=0.020, ideal=2.0),
        run("straggler", "mpi", 600, kind="straggler", latency=0.02),
        run("straggler", "L8", 590, kind="straggler", ideal=1.0, latency=0.02),
    )


# --------------------------------------------------------------------------------------
# Verdicts


def test_good_sweep_supports_every_claim():
    claims = by_key(cl.evaluate(good_sweep()))
    assert {k: c.verdict for k, c in claims.items()} == dict.fromkeys("abcde", cl.SUPPORTED)
    assert claims["d"].numbers["Max"] == "1.90"
    assert claims["d"].numbers["Workload"] == "rotating-20ms"
    assert claims["d"].numbers["Lag"] == "8"
    assert claims["c"].numbers["Fraction"] == "95%"
    assert claims["a"].numbers["RatioMax"] == "1.02"
    assert claims["a"].numbers["Range"] == "1.02"  # one workload: no range
    # The fixed straggler has no room in theory: listed, not counted against (b).
    assert claims["b"].numbers["Eligible"] == "1"
    assert claims["b"].numbers["NoRoom"] == "1"
    assert "straggler" in claims["b"].measured


@pytest.mark.parametrize("bls_throughput", [1100, 900])
def test_balanced_outside_tolerance_is_not_supported(bls_throughput):
    runs = frame(
        run("balanced", "mpi", 1000),
        run("balanced", "L0", 600),
        run("balanced", "L8", bls_throughput),
    )
    claim = by_key(cl.evaluate(runs))["a"]
    assert claim.verdict == cl.NOT_SUPPORTED
    assert claim.numbers["Ratio"] == f"{bls_throughput / 1000:.2f}"


def test_balanced_within_tolerance_uses_best_synchronous():
    # gloo is the faster baseline here: BLS is compared with it, not with mpi.
    runs = frame(
        run("balanced", "mpi", 800), run("balanced", "gloo", 1000), run("balanced", "L2", 960)
    )
    claim = by_key(cl.evaluate(runs))["a"]
    assert claim.verdict == cl.SUPPORTED
    assert claim.numbers["Ratio"] == "0.96"


def test_unbalanced_needs_latency_and_throughput():
    runs = frame(
        run("rotating-20ms", "mpi", 500, latency=0.030),
        run("rotating-20ms", "L8", 900, latency=0.060, ideal=2.0),  # faster but later
    )
    claim = by_key(cl.evaluate(runs))["b"]
    assert claim.verdict == cl.NOT_SUPPORTED
    assert claim.numbers["Throughput"] == "1.80"
    assert claim.numbers["Latency"] == "0.50"
    assert claim.numbers["Improved"] == "0"


def test_skewed_workloads_count_as_unbalanced():
    runs = frame(
        run("zipf", "mpi", 500, latency=0.030),
        run("zipf", "L2", 600, latency=0.025, ideal=1.3),
    )
    assert annotate_runs(runs)["scenario_class"].unique().tolist() == ["skewed"]
    claim = by_key(cl.evaluate(runs))["b"]
    assert claim.verdict == cl.SUPPORTED
    assert claim.numbers["Improved"] == "1"


def test_unbalanced_without_room_in_theory_is_not_tested():
    runs = frame(
        run("straggler", "mpi", 600, kind="straggler"),
        run("straggler", "L8", 590, kind="straggler", ideal=1.0),
    )
    claims = by_key(cl.evaluate(runs))
    assert claims["b"].verdict == cl.NOT_TESTED
    assert claims["c"].verdict == cl.NOT_TESTED  # nothing to mask either
    assert claims["d"].verdict == cl.NOT_SUPPORTED  # but the speedup was measured


def test_masking_below_threshold_is_not_supported():
    runs = frame(
        run("rotating-20ms", "mpi", 500),
        run("rotating-20ms", "L2", 700, ideal=1.6),
        run("rotating-20ms", "L8", 600, ideal=2.0),  # largest L attains 60 % of its ideal
    )
    claims = by_key(cl.evaluate(runs))
    assert claims["c"].verdict == cl.NOT_SUPPORTED
    assert claims["c"].numbers["Fraction"] == "60%"
    assert claims["c"].numbers["Lag"] == "8"
    # (d) takes the best lag bound, not the largest.
    assert claims["d"].numbers["Max"] == "1.40"
    assert claims["d"].numbers["Lag"] == "2"


@pytest.mark.parametrize(("bls", "verdict"), [(950, cl.SUPPORTED), (900, cl.NOT_SUPPORTED)])
def test_speedup_threshold_is_strict(bls, verdict):
    runs = frame(run("rotating-20ms", "mpi", 500), run("rotating-20ms", "L8", bls, ideal=2.5))
    assert by_key(cl.evaluate(runs))["d"].verdict == verdict  # 1.9x passes, 1.8x does not


def test_speedup_is_over_mpi_and_medians_over_repetitions():
    runs = frame(
        run("rotating-20ms", "mpi", 500, rep=0),
        run("rotating-20ms", "mpi", 520, rep=1),
        run("rotating-20ms", "mpi", 480, rep=2),
        run("rotating-20ms", "gloo", 900),  # a faster gloo does not change (d)'s baseline
        run("rotating-20ms", "L8", 1000, rep=0, ideal=2.0),
        run("rotating-20ms", "L8", 400, rep=1, ideal=2.0),  # an outlier repetition
        run("rotating-20ms", "L8", 1010, rep=2, ideal=2.0),
    )
    claim = by_key(cl.evaluate(runs))["d"]
    assert claim.numbers["Max"] == "2.00"  # median of 2.0, 0.8, 2.02 over mpi's median 500
    assert annotate_runs(runs)["workload"].nunique() == 1


def test_accuracy_differs_is_not_supported():
    runs = frame(
        run("balanced", "mpi", 1000, checksum="aaa"),
        run("balanced", "L8", 1000, checksum="bbb"),
        run("rotating-20ms", "mpi", 500, checksum="ccc"),
        run("rotating-20ms", "L8", 900, checksum="ccc", ideal=2),
    )
    claim = by_key(cl.evaluate(runs))["e"]
    assert claim.verdict == cl.NOT_SUPPORTED
    assert claim.numbers["Identical"] == "1"
    assert claim.numbers["Workloads"] == "2"


def test_accuracy_counts_iterations_when_given():
    runs = good_sweep()
    per_iteration = pd.DataFrame(
        {"run_id": [r for r in runs["run_id"] for _ in range(3)], "checksum": "x"}
    )
    claim = by_key(cl.evaluate(runs, per_iteration))["e"]
    assert claim.verdict == cl.SUPPORTED
    assert claim.numbers["Iterations"] == str(3 * len(runs))


def test_single_series_sweep_tests_nothing():
    runs = frame(run("balanced", "mpi", 1000), run("rotating-20ms", "mpi", 500))
    assert verdicts(runs) == dict.fromkeys("abcde", cl.NOT_TESTED)


def test_bls_only_sweep_compares_lag_bounds_with_l0():
    runs = frame(
        run("rotating-20ms", "L0", 500, latency=0.03),
        run("rotating-20ms", "L8", 900, ideal=2, latency=0.02),
    )
    v = verdicts(runs)
    # L = 0 is the synchronous exchange of the same engine: the baseline when mpi is absent
    assert v["b"] == cl.SUPPORTED
    assert v["c"] == cl.SUPPORTED  # 1.8x of an ideal 2x: 90%
    assert v["d"] == cl.NOT_SUPPORTED  # 1.8x is not over 1.8x
    assert v["a"] == cl.NOT_TESTED  # no balanced workload
    assert v["e"] == cl.SUPPORTED  # two lag bounds still compare predictions


def test_empty_runs_table():
    runs = pd.DataFrame(columns=list(run("balanced", "mpi", 1.0)))
    claims = cl.evaluate(runs)
    assert [c.verdict for c in claims] == [cl.NOT_TESTED] * 5
    assert all(v == cl.NA for v in cl.sweep_info(runs).values())


def test_missing_config_columns_are_tolerated():
    runs = good_sweep().drop(columns=["config.tags.scenario", "config.delay.size_s"])
    labelled = annotate_runs(runs)
    # Without sizes, a "rotating" run counts as delayed only if its size is known.
    assert set(labelled["scenario"]) <= {"balanced", "rotating", "straggler"}
    cl.evaluate(runs)  # no exception


# --------------------------------------------------------------------------------------
# Outputs


def test_macros_define_every_quoted_number():
    claims = cl.evaluate(good_sweep())
    machine = cl.machine_info(good_sweep())
    sweep = cl.sweep_info(annotate_runs(good_sweep()))
    text = cl.render_macros(claims, machine, sweep)
    defined = dict(re.findall(r"\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}", text))
    expected = {
        "ClaimSpeedupMax": "1.90",
        "ClaimSpeedupVerdict": "supported",
        "ClaimMaskedFraction": r"95\%",
        "ClaimBalancedVerdict": "supported",
        "ClaimAccuracyIdentical": "3",
        "ThresholdSpeedup": "1.8",
        "ThresholdBalanced": r"5\%",
        "VersionTorch": "2.13.0+cpu",
        "VersionMPI": "MPICH 5.0.2",
        "SweepRanks": "4",
        "SweepLagBounds": "0, 8",
        "SweepSeries": "mpi, gloo, bls L=0, bls L=8",
    }
    for name, value in expected.items():
        assert defined.get(name) == value, name
    for name in ("MachineCPU", "MachineCores", "MachineMemory", "MachineOS", "VersionPython"):
        assert name in defined
    # One definition per line, each name once, and nothing TeX cannot take as a name.
    lines = [line for line in text.splitlines() if line.startswith("\\newcommand")]
    assert len(lines) == len(defined)
    # The paper uses only macros that are defined.
    from pathlib import Path

    tex = (Path(__file__).resolve().parents[1] / "paper" / "main.tex").read_text()
    used = set(re.findall(r"\\((?:Claim|Threshold|Machine|Version|Sweep)[A-Za-z]*)", tex))
    assert used <= set(defined), sorted(used - set(defined))


def test_macros_escape_latex_and_say_na():
    hot = {"kind": "none", "ideal": 1.3}
    runs = frame(run("zipf_hot#1", "mpi", 1000, kind="none"), run("zipf_hot#1", "L8", 1200, **hot))
    text = cl.render_macros(cl.evaluate(runs), {"CPU": "x_y & z 100%"}, {})
    assert r"\newcommand{\MachineCPU}{x\_y \& z 100\%}" in text
    assert r"\newcommand{\ClaimSpeedupMax}{n/a}" in text
    assert r"\newcommand{\ClaimSpeedupVerdict}{not tested here}" in text


def test_markdown_table_lists_claims_machine_and_commands():
    runs = good_sweep()
    claims = cl.evaluate(runs)
    text = cl.render_markdown(claims, cl.machine_info(runs), cl.sweep_info(annotate_runs(runs)))
    rows = [line for line in text.splitlines() if re.match(r"\| \([a-e]\) \|", line)]
    assert len(rows) == 5
    assert all(line.endswith("| **supported** |") for line in rows)
    assert "`snakemake --cores 2 figures/fig3_speedup_vs_lag.pdf`" in text
    assert "| CPU model |" in text and "| torch (runs) | 2.13.0+cpu |" in text


def test_cli_writes_both_files(tmp_path, capsys):
    tables = tmp_path / "tables"
    tables.mkdir()
    good_sweep().to_parquet(tables / "runs.parquet")
    out, macros = tmp_path / "claims.md", tmp_path / "paper" / "macros.tex"
    rc = cl.main(["--tables", str(tables), "--out", str(out), "--macros", str(macros)])
    assert rc == 0
    assert out.read_text().startswith("# Claims")
    assert r"\newcommand{\ClaimSpeedupMax}{1.90}" in macros.read_text()
    assert "(d)" in capsys.readouterr().out


def test_cli_without_tables_fails(tmp_path, capsys):
    assert cl.main(["--tables", str(tmp_path)]) == 1
    assert "runs.parquet" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# Shared labels and palette (bls_dlrm.plotting)


def test_series_labels_and_order():
    labels = [series_label(c, lag) for c, lag in SERIES.values()]
    assert labels == ["mpi", "gloo", "bls L=0", "bls L=2", "bls L=8"]
    assert sorted(reversed(labels), key=series_sort_key) == labels
    assert series_label("bls", pd.NA) == "bls L=0"


def test_palette_is_fixed_per_series():
    a = palette(["bls L=8", "mpi"])
    b = palette(["gloo", "bls L=2", "bls L=8", "mpi"])
    assert a["bls L=8"] == b["bls L=8"] and a["mpi"] == b["mpi"]
    assert len(set(b.values())) == 4
