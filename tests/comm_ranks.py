"""Run a comm rank program (``tests/rank_programs/<name>.py``) and read its per-rank reports."""

from __future__ import annotations

from pathlib import Path

RANK_PROGRAMS = Path(__file__).parent / "rank_programs"


def program_script(name: str) -> str:
    """A script body that runs the rank program ``name`` (after conftest's abort hook)."""
    path = RANK_PROGRAMS / f"{name}.py"
    return (
        "import runpy\n"
        f"_sys.path.insert(0, {str(RANK_PROGRAMS)!r})\n"
        f"_sys.argv[0] = {str(path)!r}\n"
        f"runpy.run_path({str(path)!r}, run_name='__main__')\n"
    )


def read_reports(directory: Path, name: str, nprocs: int, result) -> dict[int, str]:
    """Every rank's report ``<name>.rank<r>`` (the test fails naming a rank without one)."""
    reports = {}
    for rank in range(nprocs):
        file = Path(directory) / f"{name}.rank{rank}"
        assert file.exists(), (
            f"rank {rank} did not report {name}\n--- stdout ---\n{result.stdout}\n"
            f"--- stderr ---\n{result.stderr}"
        )
        reports[rank] = file.read_text()
    return reports


def run_program(mpirun, nprocs: int, name: str, *args: str, env=None, timeout: float = 180):
    """``name`` on ``nprocs`` ranks (a failing rank aborts the launch); returns the reports."""
    result = mpirun.script(nprocs, program_script(name), *args, env=env, timeout=timeout)
    return read_reports(mpirun.tmp_path, name, nprocs, result)
