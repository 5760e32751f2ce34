"""The set-up promises: pinned requirements, a conda environment in step, a CI entry."""

from __future__ import annotations

import importlib.metadata as md
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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


def _all_pins() -> dict[str, str]:
    pins = _pins(ROOT / "requirements.txt") | _pins(ROOT / "requirements-dev.txt")
    return {canonicalize_name(k): v for k, v in pins.items()}


def test_pyproject_ranges_admit_the_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["bls-dlrm"] == "bls_dlrm.cli:main"
    pins = {canonicalize_name(k): v for k, v in _pins(ROOT / "requirements.txt").items()}
    refused = {}
    for dep in project["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} is a dependency but not pinned in requirements.txt"
        if not req.specifier.contains(pins[name], prereleases=True):
            refused[name] = (str(req.specifier), pins[name])
    assert not refused, f"pyproject range excludes the pin: {refused}"


def test_the_new_analysis_tools_are_pinned():
    pins = _all_pins()
    for needed in ("scipy", "jupyterlab", "tabulate", "jsonschema"):
        assert needed in pins, needed
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ranged = {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}
    assert {"scipy", "jsonschema", "tabulate"} <= ranged  # imported by bls_dlrm itself


def test_pins_are_satisfiable_together():
    """Every pinned distribution's own requirements admit the other pins (read from the
    installed metadata: the environment was built from these pins)."""
    pins = _all_pins()
    conflicts = []
    for name, version in pins.items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            pytest.fail(f"{name}=={version} is pinned but not installed")
        assert Version(installed).public == Version(version).public, (name, installed)
        for line in md.requires(name) or ():
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            if dep in pins and not req.specifier.contains(pins[dep], prereleases=True):
                conflicts.append(f"{name}=={version} needs {req}, pinned {dep}=={pins[dep]}")
    assert not conflicts, conflicts


def test_license_is_the_full_apache_text_named_by_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License")
    for phrase in (
        "Version 2.0, January 2004",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
    ):
        assert phrase in text, phrase
    assert len(text) > 9000  # the full text, not a pointer to it


def test_citation_cites_the_artifact_and_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"].startswith("1.2")
    assert cff["type"] == "software"
    assert cff["license"] == "Apache-2.0"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert str(cff["version"]) == project["version"]
    (paper,) = [r for r in cff["references"] if "2512.19342" in str(r)]
    assert [a["family-names"] for a in paper["authors"]] == ["Dichev", "Pawlowski", "Yzelman"]
    assert "Bounded Lag Synchronous Collectives" in paper["title"]
    assert paper["year"] == 2025


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci
    assert "make test" in readme and "make reproduce" in readme
