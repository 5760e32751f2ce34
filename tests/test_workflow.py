"""The Snakemake workflow: lint and format, the sweep a config describes, bad configs, and
one real run of the smoke config up to the tables, interrupted and resumed.

Dry runs work in the project folder with ``--nolock`` (they write nothing); the smoke run
works in a temporary folder (``--directory``), so it never touches ``data/`` or
``results/`` of the checkout.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import judged_workloads

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = BIN / "snakemake"
SNAKEFMT = BIN / "snakefmt"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
TABLES = "results/tables/runs.parquet"
SWEEP = "sweep"  # target rule: every run and the tables

#: The axes of a launch in the order of the run folders' levels; each series of a launch
#: then writes its own folder below (gloo, mpi, bls-L4, ...).
PATH_AXES = ("scenario", "ranks", "model", "seed", "rep")

# Every test here runs snakemake (or a linter of the workflow): `make test-fast` skips them.
pytestmark = pytest.mark.workflow


def snakemake(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(SNAKEMAKE), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def output_of(result: subprocess.CompletedProcess) -> str:
    return f"{result.stdout}\n{result.stderr}"


def job_stats(text: str) -> dict[str, int]:
    """The first 'Job stats' table of snakemake's output as {rule: count} ({} if none)."""
    lines = text.splitlines()
    if "Job stats:" not in lines:
        return {}
    start = lines.index("Job stats:")
    counts: dict[str, int] = {}
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


# -- the config as the schema completes it (computed here, independently of common.smk) ---


def load_config(path: Path) -> dict:
    schema = yaml.safe_load(SCHEMA.read_text())
    cfg = yaml.safe_load(path.read_text())
    for key, prop in schema["properties"].items():
        if key not in cfg and "default" in prop:
            cfg[key] = prop["default"]
    data_defaults = {
        k: v["default"] for k, v in schema["definitions"]["data"]["properties"].items()
    }
    for scenario in cfg["scenarios"]:
        scenario["data"] = {**data_defaults, **scenario.get("data", {})}
    cfg.setdefault("run", {})
    cfg["run"].setdefault("binding", "core")
    return cfg


def expected_series(cfg: dict) -> list[tuple[str, int, str]]:
    """(collective, lag bound, folder label) of every series a launch runs."""
    settings = []
    for collective in cfg["collectives"]:
        lags = cfg["lag_bounds"] if collective == "bls" else [0]
        for lag in lags:
            label = f"bls-L{lag}" if collective == "bls" else collective
            settings.append((collective, lag, label))
    return settings


def expected_launches(cfg: dict) -> list[dict]:
    return [
        {"scenario": s["name"], "ranks": p, "model": m["name"], "seed": seed, "rep": rep}
        for s in cfg["scenarios"]
        for p, m, seed, rep in itertools.product(
            s.get("ranks") or cfg["ranks"],
            cfg["models"],
            cfg["seeds"],
            range(s.get("repetitions") or cfg["repetitions"]),
        )
    ]


def expected_design(cfg: dict) -> list[dict]:
    """One row per run: launch x series."""
    return [
        {**launch, "collective": c, "lag_bound": lag, "series": label}
        for launch in expected_launches(cfg)
        for c, lag, label in expected_series(cfg)
    ]


def expected_datasets(cfg: dict) -> set:
    return {
        (m["name"], json.dumps(s["data"], sort_keys=True), seed)
        for m in cfg["models"]
        for s in cfg["scenarios"]
        for seed in cfg["seeds"]
    }


def launch_path(row: dict) -> str:
    return "results/runs/" + "/".join(f"{axis}~{row[axis]}" for axis in PATH_AXES)


def run_path(row: dict) -> str:
    return f"{launch_path(row)}/{row['series']}"


# -- fast checks ---------------------------------------------------------------------------


def test_lint_is_clean():
    result = snakemake("--lint", "--nolock")
    text = output_of(result)
    assert result.returncode == 0, text
    assert "Lints for" not in text, text


def test_snakefmt_is_clean():
    result = subprocess.run(
        [str(SNAKEFMT), "--check", "Snakefile", "workflow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_paper_dry_run_lists_every_run_and_the_core_hours():
    cfg = load_config(ROOT / "config" / "paper.yaml")
    design = expected_design(cfg)
    launches = expected_launches(cfg)
    datasets = expected_datasets(cfg)
    result = snakemake(
        TABLES, "--nolock", "--dry-run", "--quiet", "rules", "--configfile", "config/paper.yaml"
    )
    text = output_of(result)
    assert result.returncode == 0, text
    stats = job_stats(text)
    per_ranks = {p: sum(row["ranks"] == p for row in launches) for p in cfg["ranks"]}
    expected = {f"run_{p}ranks": n for p, n in per_ranks.items()}
    expected.update(dataset=len(datasets), design=1, tables=1)
    expected["total"] = len(launches) + len(datasets) + 2
    assert stats == expected
    # 12 scenarios x 4 rank counts x 2 models x 5 reps, 8 series each
    assert len(launches) == 480 and len(design) == 3840
    summary = re.search(r"Sweep: (\d+) runs in (\d+) launches .*? ([\d.]+) core-hours", text)
    assert summary, text
    assert int(summary.group(1)) == len(design)
    assert int(summary.group(2)) == len(launches)
    assert float(summary.group(3)) > 0


def test_default_config_is_the_2_core_sweep():
    cfg = load_config(ROOT / "config" / "config.yaml")
    launches = expected_launches(cfg)
    result = snakemake(TABLES, "--nolock", "--dry-run", "--quiet", "rules")
    text = output_of(result)
    assert result.returncode == 0, text
    stats = job_stats(text)
    # Already finished launches are not listed again; a fresh checkout lists them all.
    assert stats.get("run_2ranks", 0) <= 55 and stats.get("run_4ranks", 0) <= 3
    # 5 workloads x 5 reps + balanced and unbalanced x 15 reps + the stress scenario x 3,
    # 5 series each (gloo, mpi, bls L = 0, 4, 8)
    assert len(launches) == 58 and len(expected_design(cfg)) == 290
    assert cfg["ranks"] == [2] and cfg["run"]["binding"] == "core"
    assert cfg["repetitions"] >= 5 and cfg["run"]["iterations"] >= 300
    reps = {s["name"]: s.get("repetitions") or cfg["repetitions"] for s in cfg["scenarios"]}
    # The narrow windows (claim (a), the unbalanced check) get the larger sample; every
    # judged workload has at least 5 repetitions (the stress scenario is never judged).
    assert reps["balanced"] == reps["unbalanced"] == 15
    assert min(r for name, r in reps.items() if name != "oversubscribed") >= 5
    # The judged lag bounds are in the sweep.
    protocol_lags = {
        lag
        for item in yaml.safe_load((ROOT / "config" / "protocol.yaml").read_text())["claims"]
        for lag in item.get("lag_bounds", [])
    }
    assert protocol_lags <= set(cfg["lag_bounds"]) and 0 in cfg["lag_bounds"]
    # Every workload the protocol judges is in the sweep, and only the stress scenario is
    # oversubscribed.
    protocol = yaml.safe_load((ROOT / "config" / "protocol.yaml").read_text())
    judged = judged_workloads(protocol)
    names = {s["name"] for s in cfg["scenarios"]}
    assert judged <= names, judged - names
    unbound = {s["name"] for s in cfg["scenarios"] if s.get("binding") == "none"}
    assert unbound == set(protocol["stress_workloads"]) == {"oversubscribed"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--config", "repetitionz=2"), "'repetitionz' was unexpected"),
        (("--config", "repetitions=two"), "'two' is not of type 'integer'"),
        (("--config", "lag_bounds=[]"), "lag_bounds"),
    ],
)
def test_a_broken_config_stops_before_any_job(args, needle):
    result = snakemake("--nolock", "--dry-run", *args)
    text = output_of(result)
    assert result.returncode != 0
    assert "Error validating config file" in text or "config key" in text, text
    assert needle in text, text
    assert "Job stats" not in text


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (  # a typo inside a scenario: the schema names the key
            {"scenarios": [{"name": "a", "delay": {"kind": "rotating", "size": 0.01}}]},
            "'size' was unexpected",
        ),
        (  # a wrong type deep inside
            {"models": [{"name": "m", "model": "tiny", "batch_size": "big"}]},
            "'big' is not of type 'integer'",
        ),
        (  # cross-key checks that the schema cannot make
            {"ranks": [4, 64]},
            "config key 'ranks': 64 ranks",
        ),
        (
            {"models": [{"name": "m", "model": "kagle"}]},
            "config key 'models[0].model': unknown model config 'kagle'",
        ),
        (
            {"scenarios": [{"name": "a"}, {"name": "a"}]},
            "config key 'scenarios[1].name': 'a' is used twice",
        ),
        (
            {
                "scenarios": [
                    {"name": "a", "delay": {"kind": "straggler", "size_s": 0.1, "ranks": [9]}}
                ]
            },
            "config key 'scenarios[0].delay'",
        ),
        (
            {"scenarios": [{"name": "a", "delay": {"kind": "rotating"}}]},
            "needs size_s or factor",
        ),
    ],
)
def test_a_broken_config_file_names_the_key(tmp_path, config, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--nolock", "--dry-run", "--configfile", str(path))
    text = output_of(result)
    assert result.returncode != 0, text
    assert needle in text, text
    assert "Job stats" not in text


def test_smoke_config_covers_every_series_the_figures_draw():
    cfg = load_config(ROOT / "config" / "smoke.yaml")
    assert {"gloo", "mpi", "bls"} <= set(cfg["collectives"])
    assert 0 in cfg["lag_bounds"] and max(cfg["lag_bounds"]) >= 8
    kinds = {s["delay"]["kind"] if "delay" in s else "none" for s in cfg["scenarios"]}
    assert {"none", "rotating"} <= kinds
    assert any(s["data"]["pooling"] == "bursty" for s in cfg["scenarios"])


# -- the smoke sweep, for real -------------------------------------------------------------


def smoke(workdir: Path, *targets: str) -> subprocess.CompletedProcess:
    result = snakemake(
        *targets,
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--workflow-profile",
        str(ROOT / "profiles" / "local"),
        "--cores",
        "2",
        "--configfile",
        str(ROOT / "config" / "smoke.yaml"),
        timeout=600,
    )
    assert result.returncode == 0, output_of(result)[-6000:]
    return result


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.timeout(900)
def test_smoke_sweep_makes_the_tables_and_resumes_only_what_is_missing(tmp_path):
    cfg = load_config(ROOT / "config" / "smoke.yaml")
    design = expected_design(cfg)
    work = tmp_path / "work"
    work.mkdir()

    smoke(work, SWEEP)

    # Every run of the design is in the tables, and only those.
    runs = pd.read_parquet(work / TABLES)
    assert len(runs) == len(design)
    got = {
        (r["config.tags.scenario"], r["collective"], int(r["config.lag_bound"]))
        for _, r in runs.iterrows()
    }
    assert got == {(d["scenario"], d["collective"], d["lag_bound"]) for d in design}
    assert set(runs["world_size"]) == set(cfg["ranks"])
    assert (runs["measured_iterations"] == cfg["run"]["iterations"]).all()
    # Predictions are bit-identical across collectives and lag bounds, per workload.
    per_scenario = runs.groupby("config.tags.scenario")["predictions_checksum"].nunique()
    assert (per_scenario == 1).all(), per_scenario
    # The tags the figures group by.
    delayed = runs[runs["config.tags.delay_kind"] == "rotating"]
    assert (delayed["config.delay.size_s"] > 0).all()
    assert set(runs["config.tags.dataset"]) == {
        row["dataset"] for row in csv.DictReader((work / "results/tables/design.csv").open())
    }
    with (work / "results/tables/design.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(design)

    # Each launch folder holds its resolved config, which `bls-dlrm infer` read, and the
    # series ran in the order shuffled by shuffle_seed + rep, the same on every rank.
    first = work / launch_path(design[0])
    run_yaml = yaml.safe_load((first / "run.yaml").read_text())
    assert run_yaml["series"] == [
        f"bls:{lag}" if c == "bls" else c for c, lag, _ in expected_series(cfg)
    ]
    assert run_yaml["tags"]["scenario"] == design[0]["scenario"]
    assert run_yaml["binding"] == "core"
    headers = [
        json.loads((first / label / f"rank{r}.jsonl").read_text().splitlines()[0])
        for _, _, label in expected_series(cfg)
        for r in range(cfg["ranks"][0])
    ]
    orders = {tuple(h["series_order"]) for h in headers}
    assert len(orders) == 1  # one order, known to every rank and series of the launch
    (order,) = orders
    assert sorted(order) == sorted(label for _, _, label in expected_series(cfg))
    assert {h["series_index"] for h in headers} == set(range(len(order)))
    for h in headers:
        assert order[h["series_index"]] == h["config"]["series_label"]
        assert h["binding"] == "core" and h["cores_per_rank"] == 1

    # The serving launch: its report and one row per offered load and served series (the
    # calibrated synchronous series and each BLS lag bound), one capacity per series.
    serving_cfg = cfg["serving"]
    (workload,) = serving_cfg["workloads"]
    report = json.loads(
        (work / f"results/serving/scenario~{workload}/rep~0/serve.json").read_text()
    )
    assert report["calibration"]["series"] in {
        s.replace("bls:", "bls-L") for s in serving_cfg["synchronous"]
    }
    served = 1 + len(serving_cfg["lag_bounds"])
    serving = pd.read_parquet(work / "results/tables/serving.parquet")
    assert len(serving) == len(serving_cfg["loads"]) * served
    assert set(serving["role"]) == {"sync"} | {f"bls L={lag}" for lag in serving_cfg["lag_bounds"]}
    assert (serving["p50_ms"] <= serving["p99_ms"]).all() and (serving["p50_ms"] > 0).all()
    capacity = pd.read_parquet(work / "results/tables/capacity.parquet")
    assert len(capacity) == served and set(capacity["workload"]) == {workload}

    # Interrupt one launch: one series' last rank log is gone, a partial one is left.
    victim = next(d for d in design if d["collective"] == "bls" and d["lag_bound"] > 0)
    victim_dir = work / run_path(victim)
    last = cfg["ranks"][0] - 1
    (victim_dir / f"rank{last}.jsonl").unlink()
    (victim_dir / f"rank{last}.jsonl.partial").write_text('{"record": "header"}\n')
    victim_launch = work / launch_path(victim)
    others = {
        path: path.stat().st_mtime_ns
        for d in expected_launches(cfg)
        if work / launch_path(d) != victim_launch
        for path in (work / launch_path(d)).glob("*/rank*.jsonl")
    }
    tables_before = (work / TABLES).stat().st_mtime_ns

    result = smoke(work, SWEEP)
    stats = job_stats(output_of(result))
    assert stats == {f"run_{cfg['ranks'][0]}ranks": 1, "tables": 1, "sweep": 1, "total": 3}
    assert {p: p.stat().st_mtime_ns for p in others} == others  # nothing else was redone
    assert (victim_dir / f"rank{last}.jsonl").is_file()
    assert not list(victim_dir.glob("*.partial"))
    assert (work / TABLES).stat().st_mtime_ns > tables_before
    assert len(pd.read_parquet(work / TABLES)) == len(design)

    # And now there is nothing left to do.
    result = snakemake(
        SWEEP,
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(work),
        "--dry-run",
        "--configfile",
        str(ROOT / "config" / "smoke.yaml"),
    )
    assert "Nothing to be done" in output_of(result), output_of(result)
