"""The TorchRec extra: exact pins, in step with environment.yml, installed without moving
torch; and without it, everything else works and the TorchRec command says how to
install it."""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
BLS_DLRM = str(Path(sys.executable).parent / "bls-dlrm")
# conda-forge names that differ from the PyPI ones
CONDA_NAMES = {"fbgemm-gpu": "fbgemm-gpu-cpu"}


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: {line!r} is not an exact pin"
        pins[canonicalize_name(name)] = version.strip()
    return pins


TORCHREC_PINS = _pins(ROOT / "requirements-torchrec.txt")


def test_the_extra_pins_torchrec_and_fbgemm_for_torch_2_13():
    assert TORCHREC_PINS["torchrec"] == "1.8.0"
    assert TORCHREC_PINS["fbgemm-gpu-cpu"] == "1.8.0"
    for needed in ("tensordict", "pyvers", "torchmetrics", "lightning-utilities",
                   "pyre-extensions", "typing-inspect", "mypy-extensions", "iopath"):  # fmt: skip
        assert needed in TORCHREC_PINS, needed
    base = _pins(ROOT / "requirements.txt")
    assert not set(TORCHREC_PINS) & set(base), "the extra repins a base package"


def test_environment_yml_carries_the_extra_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str):
            name, _, rest = dep.partition("=")
            name = canonicalize_name(name)
            conda[CONDA_NAMES.get(name, name)] = rest.split("=")[0]
    differ = {k: (v, conda.get(k)) for k, v in TORCHREC_PINS.items() if conda.get(k) != v}
    assert not differ, f"pip pin vs conda pin: {differ}"


def test_make_test_installs_the_extra_without_deps():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --no-deps -r requirements-torchrec.txt" in makefile
    assert "test: $(STAMP) $(TORCHREC_STAMP)" in makefile


@pytest.mark.skipif(
    not os.environ.get("BLS_DLRM_REQUIRE_TORCHREC"), reason="only where make test installed it"
)
def test_installed_extra_matches_the_pins_and_torch_is_the_pinned_cpu_build():
    for name, version in TORCHREC_PINS.items():
        assert md.version(name) == version, name
    import torch

    assert torch.__version__ == _pins(ROOT / "requirements.txt")["torch"] + "+cpu"


@pytest.fixture
def no_torchrec(tmp_path) -> dict[str, str]:
    """An environment in which ``import torchrec`` fails, as without the extra."""
    blocked = tmp_path / "blocked" / "torchrec"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('No module named torchrec')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocked.parent), env.get("PYTHONPATH", "")])
    return env


def test_without_the_extra_the_command_says_how_to_install_it(no_torchrec, tmp_path):
    result = subprocess.run(
        [BLS_DLRM, "bench-torchrec", "--workload", "w", str(tmp_path), "contiguous",
         '{"kind": "none"}', "--out", str(tmp_path / "out")],
        env=no_torchrec, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "TorchRec is not installed" in result.stderr
    assert "pip install --no-deps -r requirements-torchrec.txt" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_the_extra_everything_else_works(no_torchrec):
    code = (
        "import bls_dlrm.cli, bls_dlrm.torchrec as t\n"
        "try:\n    t.require()\nexcept t.TorchRecMissingError as e:\n    print('missing', e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=no_torchrec, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("missing TorchRec is not installed")
    ideal = subprocess.run(
        [BLS_DLRM, "ideal", "--ranks", "2", "--iterations", "50", "--lag-bounds", "0", "4"],
        env=no_torchrec, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ideal.returncode == 0, ideal.stderr


def test_workflow_target_runs_the_sweeps_workloads_through_bench_torchrec():
    snakemake = Path(sys.executable).parent / "snakemake"
    result = subprocess.run(
        [str(snakemake), "--nolock", "--dry-run", "--forceall", "--printshellcmds", "torchrec"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    shell = next(line for line in result.stdout.splitlines() if "bench-torchrec" in line)
    for workload in ("balanced", "rotating-2.5x", "skew-pooling"):
        assert f"--workload {workload} data/synthetic/" in shell
    assert 'contiguous \'{"kind": "rotating", "seed": 0, "size_s": 0.01}\'' in shell
    assert "_pt" in shell.split("--workload skew-pooling")[1].split()[0]  # its own dataset
    assert " hot " in shell.split("--workload skew-pooling")[1]
    assert "--series gloo,mpisync,bls:0,bls:4,bls:8" in shell and "--bind core" in shell
    assert "papermill" in result.stdout and "fig8_torchrec" in result.stdout
