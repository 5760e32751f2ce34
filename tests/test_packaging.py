"""The set-up promises: pinned requirements, a conda environment in step, a CI entry."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from the PyPI ones
CONDA_NAMES = {"pytorch": "torch", "pyyaml": "pyyaml"}


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-r"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: {line!r} is not an exact pin"
        pins[name.strip().lower()] = version.strip()
    return pins


def test_requirements_are_exact_pins_with_cpu_torch():
    pins = _pins(ROOT / "requirements.txt") | _pins(ROOT / "requirements-dev.txt")
    assert pins["torch"] == "2.13.0"
    for needed in ("numpy", "mpi4py", "mpich", "snakemake", "papermill", "pytest", "ruff"):
        assert needed in pins, needed


def test_environment_yml_parses_and_matches_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda = {}
    for dep in env["dependencies"]:
        if not isinstance(dep, str):
            continue
        name, _, rest = dep.partition("=")
        conda[CONDA_NAMES.get(name.lower(), name.lower())] = rest.split("=")[0]
    pins = _pins(ROOT / "requirements.txt") | _pins(ROOT / "requirements-dev.txt")
    missing = sorted(set(pins) - set(conda))
    assert not missing, f"environment.yml lacks {missing}"
    differ = {k: (pins[k], conda[k]) for k in pins if conda[k] != pins[k]}
    assert not differ, f"pip pin vs conda pin: {differ}"
    assert conda["python"].startswith("3.11")


def test_pyproject_ranges_admit_the_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["bls-dlrm"] == "bls_dlrm.cli:main"
    pins = _pins(ROOT / "requirements.txt")
    for dep in project["dependencies"]:
        name = re.split(r"[<>=!~ ]", dep, maxsplit=1)[0].lower()
        assert name in pins, f"{name} is a dependency but not pinned in requirements.txt"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci
    assert "make test" in readme and "make reproduce" in readme
