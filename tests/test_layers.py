"""The architecture as a contract: imports run one way through the layers of README.md's
map (pyproject.toml's [tool.importlinter] contracts, checked by import-linter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_imports_follow_the_layers():
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_is_in_the_readme_map():
    """Each subpackage and top-level module of bls_dlrm is named in README.md's map."""
    readme = (ROOT / "README.md").read_text()
    package = ROOT / "src" / "bls_dlrm"
    parts = [p.name for p in package.iterdir() if (p / "__init__.py").is_file()]
    parts += [p.stem for p in package.glob("*.py") if p.stem != "__init__"]
    missing = [p for p in parts if f"bls_dlrm/{p}" not in readme]
    assert not missing, f"not in README.md's map: {missing}"


def test_analysis_figures_and_model_configs_load_without_torch():
    """The workflow's parse, the claims and the figures read configs and tables only: none
    of them pays torch's import (seconds, in every job and notebook)."""
    code = (
        "import sys; import bls_dlrm.analysis.report, bls_dlrm.analysis.simulate, "
        "bls_dlrm.figures, bls_dlrm.series; from bls_dlrm.model import config, plan_shards; "
        "config.get_config('tiny'); print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
