"""A reviewer's check that a change of the analysis code changed no result.

    python tests/same_outputs.py save REF [--configfile config/smoke.yaml]
    python tests/same_outputs.py check REF [--configfile config/smoke.yaml]

`save` runs the sweep of the config in a scratch copy of this project and keeps, in REF, its
inputs to the analysis (datasets, run logs, serving reports) and the analysis outputs
(tables, figure data, claims, paper macros). `check` copies REF's inputs into a scratch copy
of the project as it is now, runs only the analysis rules on them (no launch runs again:
the measured times are those of REF) and compares every output with REF's: Parquet tables
frame by frame, figure CSVs, claims and macros line by line. It prints each difference and
exits 1 if there is any.

The measured times of two sweeps always differ, so "the same results" means: the same logs
give the same tables, figure data and verdicts, before and after the change.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ("data", "results/runs", "results/serving", "results/tables/design.csv")
OUTPUT_GLOBS = (
    "results/tables/*.parquet",
    "figures/*.csv",
    "results/claims.md",
    "paper/macros.tex",
)
# Everything but the launches (the run_* and serve rules) and the datasets.
ANALYSIS_RULES = (
    "tables",
    "serving_tables",
    "notebook_source",
    "figure",
    "overview_notebook",
    "claims",
    "all",
    "sweep",
)
SKIP = {".venv", ".git", "data", "results", "figures", ".snakemake", ".pytest_cache"}


def _scratch_project() -> Path:
    """A copy of the project's tree as it is now, without generated folders."""
    dest = Path(tempfile.mkdtemp(prefix="bls-same-outputs-")) / "project"
    shutil.copytree(ROOT, dest, ignore=lambda d, names: SKIP if Path(d) == ROOT else set())
    for folder in ("data", "results", "figures"):
        (dest / folder).mkdir(exist_ok=True)
    return dest


def _snakemake(project: Path, configfile: str, *extra: str) -> None:
    snakemake = Path(sys.executable).parent / "snakemake"
    argv = [str(snakemake), "--cores", "2", "--configfile", configfile, "--quiet", *extra]
    result = subprocess.run(argv, cwd=project, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"snakemake failed in {project}:\n{result.stdout}\n{result.stderr}")


def _outputs(base: Path) -> list[Path]:
    return sorted(p.relative_to(base) for glob in OUTPUT_GLOBS for p in base.glob(glob))


def save(ref: Path, configfile: str) -> None:
    project = _scratch_project()
    _snakemake(project, configfile)
    for rel in [*map(Path, INPUTS), *_outputs(project)]:
        src, dst = project / rel, ref / rel
        if not src.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    print(f"saved {len(_outputs(ref))} outputs and the sweep's inputs in {ref}")


def _differences(ref: Path, new: Path, rel: Path) -> list[str]:
    if not (new / rel).exists():
        return [f"{rel}: missing after the change"]
    if rel.suffix == ".parquet":
        a, b = pd.read_parquet(ref / rel), pd.read_parquet(new / rel)
        try:
            pd.testing.assert_frame_equal(a, b, check_exact=True)
        except AssertionError as exc:
            return [f"{rel}: {exc}"]
        return []
    a = (ref / rel).read_text().splitlines()
    b = (new / rel).read_text().splitlines()
    diff = list(difflib.unified_diff(a, b, str(ref / rel), str(new / rel), lineterm="", n=0))
    return [f"{rel}:\n" + "\n".join(diff[:40])] if diff else []


def check(ref: Path, configfile: str) -> int:
    project = _scratch_project()
    for rel in INPUTS:
        src, dst = ref / rel, project / rel
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    # The launches' outputs are given: only the analysis rules may run, on mtimes alone.
    _snakemake(
        project,
        configfile,
        "--rerun-triggers",
        "mtime",
        "--allowed-rules",
        *ANALYSIS_RULES,
    )
    problems = [
        line
        for rel in _outputs(ref)
        for line in _differences(ref, project, rel)
        if not (rel.name == "macros.tex" and "revision" in line.lower())
    ]
    extra = set(_outputs(project)) - set(_outputs(ref))
    problems += [f"{rel}: new after the change" for rel in sorted(extra)]
    for line in problems:
        print(line)
    print(f"{len(_outputs(ref))} outputs compared, {len(problems)} differences ({project})")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("save", "check"))
    parser.add_argument("ref", type=Path, help="folder of the reference outputs")
    parser.add_argument("--configfile", default="config/smoke.yaml")
    args = parser.parse_args(argv)
    if args.what == "save":
        save(args.ref, args.configfile)
        return 0
    return check(args.ref, args.configfile)


if __name__ == "__main__":
    sys.exit(main())
