"""Real Criteo data in the workflow: config/criteo.yaml, rules criteo_source and
criteo_dataset, the Terabyte block of config/paper.yaml.

Every test derives its config from config/criteo.yaml, points it at a small Criteo-format
file made here (``write_criteo_sample``) or at one that is absent, and runs snakemake in a
temporary folder (``--directory``), so nothing lands in the checkout's data/ or results/.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import judged_workloads

from bls_dlrm.data.criteo import (
    SourceUnavailableError,
    prepare_source,
    preprocess_criteo,
    write_criteo_sample,
)
from bls_dlrm.data.store import DatasetError

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
CRITEO_YAML = ROOT / "config" / "criteo.yaml"
MODEL = "kaggle-criteo-50k"  # the model name of config/criteo.yaml
MANIFEST = f"data/criteo/{MODEL}/manifest.json"
#: Where config/criteo.yaml's Kaggle source is published (named in every absent-file error).
PUBLISHED = "go.criteo.net/criteo-research-kaggle-display-advertising-challenge-dataset"

# Every test here runs snakemake (or a linter of the workflow): `make test-fast` skips them.
pytestmark = pytest.mark.workflow


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """A Criteo Kaggle-format train.txt of 3000 lines."""
    return write_criteo_sample(tmp_path_factory.mktemp("criteo") / "train.txt", 3000, seed=3)


def derived_config(tmp_path: Path, criteo: dict, **model) -> Path:
    """config/criteo.yaml with its model reading ``criteo`` (and small row caps)."""
    cfg = yaml.safe_load(CRITEO_YAML.read_text())
    cfg["models"][0].update({"max_rows": 1000, "batch_size": 256, "batches": 8, **model})
    cfg["models"][0]["criteo"] = criteo
    path = tmp_path / "criteo-test.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake(workdir: Path, config: Path, target: str, *args: str, timeout: float = 180):
    """snakemake on ``target`` in ``workdir`` with ``config`` on top of the default config."""
    workdir.mkdir(exist_ok=True)
    result = subprocess.run(
        [
            str(SNAKEMAKE),
            target,
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(config),
            *args,
        ],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result, f"{result.stdout}\n{result.stderr}"


def job_counts(text: str) -> dict[str, int]:
    lines = text.splitlines()
    start = lines.index("Job stats:")
    counts = {}
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


# -- the shipped config ---------------------------------------------------------------------


def test_criteo_config_is_the_kaggle_sweep_and_asks_for_the_checksum(tmp_path):
    cfg = yaml.safe_load(CRITEO_YAML.read_text())
    (model,) = cfg["models"]
    assert model["model"] == "kaggle" and model["max_rows"] and model["batches"] >= 310
    assert set(model["criteo"]) == {"source", "member", "sha256"}
    assert PUBLISHED in model["criteo"]["source"] and model["criteo"]["member"] == "train.txt"
    # No published checksum exists: the field is required and left for the user.
    assert model["criteo"]["sha256"] is None
    # Delay and placement workloads of the protocol, none with synthetic data skew.
    protocol = yaml.safe_load((ROOT / "config" / "protocol.yaml").read_text())
    judged = judged_workloads(protocol)
    names = {s["name"] for s in cfg["scenarios"]}
    assert {"balanced", "rotating-2.5x", "unbalanced"} <= names <= judged
    assert not any("data" in s for s in cfg["scenarios"])
    assert set(cfg["serving"]["workloads"]) <= names

    result, text = snakemake(tmp_path / "work", CRITEO_YAML, MANIFEST, "--dry-run")
    assert result.returncode != 0
    assert "config key 'models[0].criteo.sha256': required" in text, text
    assert "Job stats" not in text


# -- the data rule on a fixture -----------------------------------------------------------


def test_dry_run_then_real_run_make_the_dataset(sample, tmp_path):
    config = derived_config(tmp_path, {"source": str(sample), "sha256": sha256_of(sample)})
    work = tmp_path / "work"

    result, text = snakemake(work, config, MANIFEST, "--dry-run", "--quiet", "rules")
    assert result.returncode == 0, text
    assert job_counts(text) == {"criteo_source": 1, "criteo_dataset": 1, "total": 2}
    assert not (work / "data").exists()

    result, text = snakemake(work, config, MANIFEST, "--cores", "2")
    assert result.returncode == 0, text[-4000:]
    manifest = json.loads((work / MANIFEST).read_text())
    assert manifest["num_batches"] == 8 and manifest["batch_size"] == 256

    # The same data as preprocessing the file directly with the config's row caps.
    direct = preprocess_criteo(
        sample, tmp_path / "direct", "kaggle", batch_size=256, max_rows=1000, limit=8 * 256
    )
    for name in ("indices.npy", "dense.npy", "labels.npy"):
        np.testing.assert_array_equal(
            np.load(work / "data" / "criteo" / MODEL / name), np.load(direct / name)
        )

    # The checksum was checked once and recorded next to the data.
    (record,) = (work / "data" / "criteo" / "sources").glob("*.json")
    entry = json.loads(record.read_text())
    assert entry["verified"] and entry["expected_sha256"] == sha256_of(sample)
    assert entry["path"] == str(sample.resolve()) and entry["bytes"] == sample.stat().st_size

    result, text = snakemake(work, config, MANIFEST, "--dry-run")
    assert result.returncode == 0 and "Nothing to be done" in text, text


def test_wrong_sha256_stops_before_any_run(sample, tmp_path):
    wrong = "0" * 64
    config = derived_config(tmp_path, {"source": str(sample), "sha256": wrong})
    work = tmp_path / "work"
    result, text = snakemake(work, config, "sweep", "--cores", "2", timeout=240)
    assert result.returncode != 0
    assert f"sha256 {sha256_of(sample)} does not match the expected {wrong}" in text, text
    assert "Error in rule criteo_source" in text, text
    assert "rule run_" not in text and not (work / "results" / "runs").exists()
    assert not (work / "data" / "criteo" / MODEL).exists()


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("downloads/train.txt", "the file is not there"),
        # RFC 2606: a .invalid name never resolves, so no download is ever attempted
        ("https://criteo-data.invalid/dac.tar.gz", "cannot be fetched"),
    ],
)
def test_absent_or_unreachable_source_says_where_to_get_it(tmp_path, source, why):
    config = derived_config(tmp_path, {"source": source, "sha256": "a" * 64})
    work = tmp_path / "work"
    result, text = snakemake(work, config, "sweep", "--cores", "2", timeout=240)
    assert result.returncode != 0
    assert f"{source}: {why}" in text, text
    assert PUBLISHED in text and "Criteo Kaggle" in text, text
    assert "Error in rule criteo_source" in text, text
    assert "rule run_" not in text and not (work / "results" / "runs").exists()
    if "://" not in source:  # a local path is checked at start too
        assert f"Criteo source {source!r}" in text and "is not there" in text, text


def test_a_scenario_with_synthetic_skew_is_refused_for_real_data(sample, tmp_path):
    config = derived_config(tmp_path, {"source": str(sample), "sha256": sha256_of(sample)})
    cfg = yaml.safe_load(config.read_text())
    cfg["scenarios"].append({"name": "zipf", "data": {"index_dist": "zipf"}})
    config.write_text(yaml.safe_dump(cfg))
    result, text = snakemake(tmp_path / "work", config, MANIFEST, "--dry-run")
    assert result.returncode != 0
    assert f"config key 'scenarios[{len(cfg['scenarios']) - 1}].data'" in text, text
    assert "Job stats" not in text


def test_the_terabyte_block_of_the_paper_config(tmp_path):
    """Uncommented, the Terabyte model of config/paper.yaml fetches one day and caps it."""
    lines = (ROOT / "config" / "paper.yaml").read_text().splitlines()
    start = lines.index("  # - name: terabyte-criteo-1m")
    block = []
    for line in lines[start:]:
        if not line.startswith("  # "):
            break
        block.append("  " + line[4:])
    (model,) = yaml.safe_load("\n".join(block))
    assert model["model"] == "terabyte"
    assert model["criteo"]["source"].endswith("/day_22.gz")
    cfg = yaml.safe_load(CRITEO_YAML.read_text())
    cfg["models"] = [model]
    config = tmp_path / "terabyte.yaml"
    config.write_text(yaml.safe_dump(cfg))
    target = "data/criteo/terabyte-criteo-1m/manifest.json"
    result, text = snakemake(tmp_path / "work", config, target, "--dry-run", "--printshellcmds")
    assert result.returncode == 0, text
    assert job_counts(text) == {"criteo_source": 1, "criteo_dataset": 1, "total": 2}
    key = f"day_22.gz-{model['criteo']['sha256'][:12]}"
    assert f"--fetch-to data/criteo/sources/{key}/day_22.gz" in text, text
    assert "--kind terabyte" in text and "--limit 262144" in text and "--max-rows 1000000" in text


# -- the record: a file is hashed once ------------------------------------------------------


def test_record_is_trusted_while_the_file_is_unchanged(sample, tmp_path):
    local = tmp_path / "train.txt"
    local.write_bytes(sample.read_bytes())
    digest, record = sha256_of(local), tmp_path / "record.json"
    assert prepare_source(str(local), digest, record) == local.resolve()
    # Same size and modification time: trusted, no second hash (damage goes unseen).
    stat = local.stat()
    data = bytearray(local.read_bytes())
    data[0:1] = b"1" if data[0:1] == b"0" else b"0"
    local.write_bytes(bytes(data))
    os.utime(local, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert prepare_source(str(local), digest, record) == local.resolve()
    # A new modification time: hashed again, and the damage is found.
    os.utime(local, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(DatasetError, match="does not match"):
        prepare_source(str(local), digest, record)
    # Another expected checksum is never taken from an old record.
    with pytest.raises(SourceUnavailableError, match="Criteo Terabyte"):
        prepare_source(str(tmp_path / "day_0.gz"), digest, record, kind="terabyte")
