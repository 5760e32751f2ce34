"""What the rules share: tools, paths, and the checks a config must pass (the sweep
design built from it is in design.smk).

The sweep is a table (a ``Paramspace``) with one row per launch and one column per axis,
built here once from the validated config. Its wildcard pattern is every launch's folder:

    results/runs/scenario~S/ranks~P/model~M/seed~N/rep~R/

A row is one launch: every series of the sweep (gloo, mpi, bls at each lag bound) runs in
it, in a shuffled order, each into its own run folder ``<launch>/<series label>/``.

Rules hold no Python logic of their own: whatever they need beyond their wildcards (the
resolved run config, the dataset a run reads, its estimated runtime) comes from the
functions below. Cross-key checks that a JSON Schema cannot express (unique names, a model
that exists, no more ranks than tables, a delay schedule that fits the rank count) run at
parse time too, so a bad config stops before any job, naming the key.
"""

import hashlib
import json
import math
import shlex
import sys
from functools import cache
from pathlib import Path

import pandas as pd
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import Paramspace

from bls_dlrm.model import config as model_config  # plain data: no torch
from bls_dlrm.series import Series

# libyaml's emitter when present: a dry run of a large sweep renders every run config.
YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

# -- tools: always those of the Python that runs snakemake (the project's venv) ----------

BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec")
BLS_DLRM = str(BIN / "bls-dlrm")
# Launches start their ranks with `bls-dlrm mpiexec ...`: the mpiexec above, with a Slurm
# allocation's node layout restored when the executor's job step removed it (otherwise
# MPICH would start every rank on the job's first node). The `mpi` resource names the
# launcher, which tells the Slurm executor to run the rule as is, not under srun.
# Documents the software of every shell rule for `--sdm conda`; by default the rules run
# the tools above, next to sys.executable.
CONDA_ENV = "../../environment.yml"

# -- paths (relative to the working directory) ------------------------------------------

DATA_DIR = "data/synthetic"
RUNS_DIR = "results/runs"
TABLES_DIR = "results/tables"
LOG_DIR = "results/logs"
BENCH_DIR = "results/benchmarks"

TABLE_NAMES = ("iterations", "per_iteration", "runs")
TABLE_FILES = {name: f"{TABLES_DIR}/{name}.parquet" for name in TABLE_NAMES}
DESIGN_CSV = f"{TABLES_DIR}/design.csv"

DATASET_MANIFEST = f"{DATA_DIR}/{{dataset}}/manifest.json"
DATASET_LOG = f"{LOG_DIR}/data/{{dataset}}.log"
DATASET_BENCHMARK = f"{BENCH_DIR}/data/{{dataset}}.tsv"

# Real Criteo data (a model with a `criteo` block): one verification record per source
# file, one preprocessed dataset per model (data.smk).
CRITEO_DIR = "data/criteo"
CRITEO_RECORD = f"{CRITEO_DIR}/sources/{{source}}.json"
CRITEO_MANIFEST = f"{CRITEO_DIR}/{{dataset}}/manifest.json"
CRITEO_SOURCE_LOG = f"{LOG_DIR}/data/criteo-source-{{source}}.log"
CRITEO_LOG = f"{LOG_DIR}/data/criteo-{{dataset}}.log"
CRITEO_BENCHMARK = f"{BENCH_DIR}/data/criteo-{{dataset}}.tsv"

#: Axes of the sweep, in path order.
AXES = ("scenario", "ranks", "model", "seed", "rep")


wildcard_constraints:
    dataset=r"[^/]+",
    source=r"[^/]+",
    scenario=r"[^/]+",
    ranks=r"\d+",
    model=r"[^/]+",
    seed=r"\d+",
    rep=r"\d+",


# -- checks the schema cannot make -------------------------------------------------------


def config_error(key, message):
    """The error a bad config raises: it names the key, and snakemake stops at parse time."""
    return WorkflowError(f"config key '{key}': {message}")


def _unique_names(items, key):
    seen = set()
    for i, item in enumerate(items):
        if item["name"] in seen:
            raise config_error(f"{key}[{i}].name", f"{item['name']!r} is used twice")
        seen.add(item["name"])
    return {item["name"]: item for item in items}


def resolved_delay(scenario, model, seed):
    """The scenario's delay schedule for one model and seed, as the run config takes it."""
    from bls_dlrm.delays import resolve_factor

    return resolve_factor(scenario["delay"], model["work_s"], seed)


def scenario_ranks(scenario, cfg):
    """The rank counts of a scenario: its own `ranks`, else the config's."""
    return scenario.get("ranks") or cfg["ranks"]


def scenario_binding(scenario, cfg):
    """How the launcher places the ranks of a scenario: its own `binding`, else run.binding."""
    return scenario.get("binding") or cfg["run"]["binding"]


def scenario_repetitions(scenario, cfg):
    """How many repetitions a scenario runs: its own `repetitions`, else the config's."""
    return scenario.get("repetitions") or cfg["repetitions"]


def _check_criteo(cfg):
    """Real-data models: a Criteo shape, a checksum, and scenarios without synthetic skew."""
    for i, model in enumerate(cfg["models"]):
        if "criteo" not in model:
            continue
        key = f"models[{i}]"
        if model["name"] == "sources":  # data/criteo/sources/ holds the source records
            raise config_error(
                f"{key}.name", "'sources' is reserved for Criteo sources"
            )
        if model["model"] not in ("kaggle", "terabyte"):
            raise config_error(
                f"{key}.model",
                f"{model['model']!r} cannot read Criteo data (26 tables, 13 dense "
                "features): use kaggle or terabyte",
            )
        if not model["criteo"].get("sha256"):
            raise config_error(
                f"{key}.criteo.sha256",
                "required: the sha256 of the source file (of the archive when `member` is "
                f"given). Fill it in for {model['criteo']['source']!r}: the published "
                "checksum, or `sha256sum <file>` of a copy you trust (config/criteo.yaml "
                "says where Criteo publishes the files); the data job checks the file "
                "against it once and records the result.",
            )
        for j, scenario in enumerate(cfg["scenarios"]):
            data = scenario["data"]
            synthetic = (
                data["index_dist"] != "uniform"
                or data["pooling"] != "fixed"
                or data["pooling_k"] != 1
                or data.get("per_table")
            )
            if synthetic:
                raise config_error(
                    f"scenarios[{j}].data",
                    f"model {model['name']!r} reads real Criteo data (its own indices, "
                    "one lookup per table), so a scenario cannot change the data skew; "
                    "drop this scenario's `data` or run it in a config without Criteo "
                    "models",
                )


def _check_config(cfg, model_configs):
    from bls_dlrm.delays import DelaySpec

    models = _unique_names(cfg["models"], "models")
    scenarios = _unique_names(cfg["scenarios"], "scenarios")
    _check_criteo(cfg)
    for i, model in enumerate(cfg["models"]):
        key = f"models[{i}]"
        known = sorted(model_configs.CONFIGS)
        if model["model"] not in model_configs.CONFIGS:
            raise config_error(
                f"{key}.model",
                f"unknown model config {model['model']!r}; known: {', '.join(known)}",
            )
        tables = len(model_configs.CONFIGS[model["model"]].table_rows)
        all_ranks = {r for sc in cfg["scenarios"] for r in scenario_ranks(sc, cfg)}
        for ranks in sorted(all_ranks):
            if ranks > tables:
                raise config_error(
                    "ranks",
                    f"{ranks} ranks, but model {model['model']!r} ({model['name']}) has "
                    f"{tables} tables and every rank holds at least one whole table",
                )
            if model["batch_size"] < ranks:
                raise config_error(
                    f"{key}.batch_size",
                    f"{model['batch_size']} samples cannot be sliced over {ranks} ranks",
                )
    for j, scenario in enumerate(cfg["scenarios"]):
        key = f"scenarios[{j}].delay"
        delay = scenario["delay"]
        if "size_s" in delay and "factor" in delay:
            raise config_error(key, "give either size_s or factor, not both")
        if delay["kind"] == "none" and set(delay) - {"kind"}:
            extra = sorted(set(delay) - {"kind"})
            raise config_error(f"{key}.{extra[0]}", "kind 'none' takes no other keys")
        if delay["kind"] not in ("none", "trace") and not (
            {"size_s", "factor"} & set(delay)
        ):
            raise config_error(key, f"kind {delay['kind']!r} needs size_s or factor")
        for model in cfg["models"]:
            for ranks in scenario_ranks(scenario, cfg):
                try:
                    DelaySpec.from_dict(resolved_delay(scenario, model, 0)).schedule(
                        ranks, 1
                    )
                except (ValueError, TypeError, OSError) as exc:
                    raise config_error(key, str(exc)) from None
    return models, scenarios


MODELS, SCENARIOS = _check_config(config, model_config)


# -- figures and paper (their constants live in figures.smk and paper.smk) -------------


def figure_style():
    """The optional `figures.style` config key; "paper" when absent."""
    return (config.get("figures") or {}).get("style", "paper")


def figure_targets():
    """Every figure file the default target builds (PDF and PNG of each figure)."""
    return [f"{FIG_DIR}/{name}.{ext}" for name in FIGURES for ext in FIG_FORMATS]


def figure_tables(wildcards):
    """The tables one figure's notebook reads."""
    return [f"{FIG_TABLES_DIR}/{table}.parquet" for table in FIGURES[wildcards.figure]]


def paper_targets():
    """What the default target builds for the paper: the claims table and the macros."""
    return [CLAIMS_MD, PAPER_MACROS]


def paper_figures():
    """The figure PDFs the paper includes."""
    return [path for path in figure_targets() if path.endswith(".pdf")]
