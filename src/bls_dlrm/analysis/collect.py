"""A set of run folders -> the three Parquet tables (``bls-dlrm tables``): finding the runs,
the runs table's column types, writing the files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bls_dlrm.analysis.tables import (
    TABLE_NAMES,
    Tables,
    _apply_dtypes,
    _per_iteration,
    _rows_param_dtypes,
    _run_row,
    _runs_frame,
    iterations_table,
)
from bls_dlrm.logs.reading import RunLog, is_complete, read_run
from bls_dlrm.logs.records import IncompleteRunError


def _is_run_dir(filenames: Iterable[str]) -> bool:
    return any(
        name.startswith("rank") and (name.endswith(".jsonl") or name.endswith(".jsonl.partial"))
        for name in filenames
    )


def find_run_dirs(sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Run folders (holding ``rank*.jsonl`` or ``rank*.jsonl.partial``) at or below sources.

    Each source may be a run folder itself or any folder above run folders. The result is
    sorted and free of duplicates, so tables come out in the same order on every machine.
    """
    if isinstance(sources, str | os.PathLike):
        sources = [sources]
    found: set[Path] = set()
    for source in sources:
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if _is_run_dir(filenames):
                found.add(Path(dirpath))
    return sorted(found)


def _arrow_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Make columns whose values differ in type across runs storable in Parquet.

    A config key can be a number in one run and a string in another; Parquet needs one
    type per column, so ints mixed with floats become floats and other mixes become
    strings (JSON for non-strings).
    """
    df = df.copy()
    for col in df.columns:
        if df[col].dtype != object:
            continue
        values = df[col].tolist()
        kinds = {type(v) for v in values if not _is_missing(v)}
        if len(kinds) <= 1:
            continue
        if kinds <= {int, float}:
            df[col] = pd.Series(
                [math.nan if _is_missing(v) else float(v) for v in values], index=df.index
            )
        else:
            df[col] = pd.Series(
                [
                    None if _is_missing(v) else v if isinstance(v, str) else json.dumps(v)
                    for v in values
                ],
                index=df.index,
                dtype="str",
            )
    return df


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write via a temporary name and rename, so a reader never sees half a table."""
    tmp = path.with_name(f".{path.name}.tmp")
    _arrow_safe(df).to_parquet(tmp, index=False)
    os.replace(tmp, path)


def collect(
    sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    skip_incomplete: bool = False,
    progress: bool | None = None,
) -> Tables:
    """Build all tables from the run folders at or below ``sources``; write them to out_dir.

    Writes ``iterations.parquet``, ``per_iteration.parquet`` and ``runs.parquet``. An
    incomplete run (a rank log missing, only ``.partial``, or without footer) is refused
    with an :class:`~bls_dlrm.logs.records.IncompleteRunError` naming every such run, since
    tables silently missing a configuration would mislead; ``skip_incomplete`` leaves them
    out with a warning instead. Malformed logs are always an error. ``progress`` shows a
    progress bar (default: when stderr is a terminal).
    """
    from tqdm import tqdm

    if isinstance(sources, str | os.PathLike):
        sources = [sources]
    sources = [Path(source) for source in sources]
    where = ", ".join(str(source) for source in sources)
    run_dirs = find_run_dirs(sources)
    if not run_dirs:
        raise FileNotFoundError(f"no run folders (with rank*.jsonl) under {where}")
    out = Path(out_dir)
    show = sys.stderr.isatty() if progress is None else progress

    incomplete: list[str] = []
    complete: list[Path] = []
    pending: dict[Path, RunLog] = {}
    for run_dir in run_dirs:
        if is_complete(run_dir):
            complete.append(run_dir)
            continue
        try:  # read_run says why; it may also find a complete run the quick check refused
            pending[run_dir] = read_run(run_dir)
            complete.append(run_dir)
        except IncompleteRunError as exc:
            incomplete.append(str(exc))
    if incomplete:
        listing = "\n  ".join(incomplete)
        if not skip_incomplete:
            raise IncompleteRunError(
                f"{len(incomplete)} incomplete run(s) refused (rerun them, or pass "
                f"--skip-incomplete to leave them out):\n  {listing}"
            )
        warnings.warn(
            f"skipping {len(incomplete)} incomplete run(s):\n  {listing}",
            RuntimeWarning,
            stacklevel=2,
        )
    if not complete:
        raise IncompleteRunError(f"no complete runs under {where}")

    iteration_frames: list[pd.DataFrame] = []
    per_iteration_frames: list[pd.DataFrame] = []
    rows: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for run_dir in tqdm(complete, desc="runs", unit="run", disable=not show):
        run = pending.pop(run_dir) if run_dir in pending else read_run(run_dir)
        if run.run_id in seen:
            raise ValueError(
                f"run_id {run.run_id!r} appears in both {seen[run.run_id]} and {run_dir}"
            )
        seen[run.run_id] = run_dir
        it = iterations_table(run)
        per_it = _per_iteration(it)
        iteration_frames.append(it)
        per_iteration_frames.append(per_it)
        rows.append(_run_row(run, it, per_it))

    runs = _runs_frame(rows)
    dtypes = _rows_param_dtypes(rows)
    tables = Tables(
        iterations=_apply_dtypes(pd.concat(iteration_frames, ignore_index=True), dtypes),
        per_iteration=_apply_dtypes(pd.concat(per_iteration_frames, ignore_index=True), dtypes),
        runs=runs,
    )
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLE_NAMES:
        _write_parquet(getattr(tables, name), out / f"{name}.parquet")
    return tables


def main_tables(argv: Sequence[str] | None = None) -> int:
    """``bls-dlrm tables RUN_ROOT... --out DIR [--skip-incomplete]``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="bls-dlrm tables",
        description="Turn run logs into tidy Parquet tables "
        "(iterations.parquet, per_iteration.parquet, runs.parquet).",
    )
    parser.add_argument(
        "run_root",
        nargs="+",
        type=Path,
        metavar="RUN_ROOT",
        help="a run folder, or a folder searched recursively for run folders",
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for the tables")
    parser.add_argument(
        "--skip-incomplete",
        action="store_true",
        help="leave incomplete runs out with a warning instead of failing",
    )
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            tables = collect(
                args.run_root,
                args.out,
                skip_incomplete=args.skip_incomplete,
                progress=False if args.no_progress else None,
            )
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    except (ValueError, FileNotFoundError) as exc:
        print(f"bls-dlrm tables: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{len(tables.runs)} run(s), {len(tables.per_iteration)} iterations -> "
        + ", ".join(str(args.out / f"{name}.parquet") for name in TABLE_NAMES)
    )
    return 0
