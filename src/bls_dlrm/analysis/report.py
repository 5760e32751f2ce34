"""The claims table (markdown) and the paper's macros (LaTeX), and the command that writes
both from a sweep's tables:

    python -m bls_dlrm.analysis.report --tables results/tables --protocol config/protocol.yaml \\
        --out results/claims.md --macros paper/macros.tex
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from bls_dlrm.analysis.claims import Claim, evaluate, evaluate_checks, exploration
from bls_dlrm.analysis.judge import NA, SIMULATION_COLUMNS, _fmt, attach_predictions
from bls_dlrm.analysis.machine import machine_info, run_info, sweep_info, workload_table
from bls_dlrm.analysis.protocol import (
    ProtocolError,
    load_protocol,
)
from bls_dlrm.analysis.workloads import annotate_runs
from bls_dlrm.paths import PROTOCOL


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return _fmt(value, 3)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(df: pd.DataFrame) -> str:
    return df.map(_cell).to_markdown(index=False)


def _claims_frame(claims: Sequence[Claim]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "": c.label,
                "Claim": c.claim,
                "Paper's words": f"“{c.words}”" if c.words else NA,
                "Figure": c.figure,
                "Command": f"`{c.command}`",
                "Measured: point [95% CI]": c.measured,
                "Threshold": c.threshold,
                "Verdict": f"**{c.verdict}**",
            }
            for c in claims
        ]
    )


def render_markdown(
    claims: Sequence[Claim],
    machine: Mapping[str, str],
    sweep: Mapping[str, str],
    tables_dir: str = "results/tables",
    *,
    protocol: Mapping[str, Any] | None = None,
    checks: Sequence[Claim] = (),
    setup: Mapping[str, str] | None = None,
    explore: pd.DataFrame | None = None,
    workloads: pd.DataFrame | None = None,
) -> str:
    """The claims table with what was run, the checks, the machine and the sweep, then
    per-claim details and the labeled exploration, as Markdown."""
    protocol = protocol if protocol is not None else load_protocol()
    paper, st = protocol["paper"], protocol["statistics"]
    title = " ".join(paper["title"].split())
    lines = [
        "# Claims of the paper, tested on this machine",
        "",
        f"{' '.join(paper['reimplementation'].split())} Paper: {', '.join(paper['authors'])}, "
        f"“{title}”, arXiv {paper['arxiv']} ({paper['year']}).",
        "",
        "## What was run",
        "",
    ]
    if setup:
        lines += [_table(pd.DataFrame({"": list(setup), "value": list(setup.values())})), ""]
        if workloads is not None and not workloads.empty:
            lines += [_table(workloads), ""]
    else:
        lines += ["No runs in the tables.", ""]
    lines += [
        "## Claims",
        "",
        f"Judged by the protocol `{protocol.get('_path', PROTOCOL)}` (sha256 "
        f"`{str(protocol.get('_sha256', NA))[:16]}`), fixed before the runs: it names each "
        "claim's workloads, metric, lag bound and threshold. Ratios are over the best "
        "synchronous series of the same workload (of "
        f"{', '.join(protocol['synchronous']['series'])}: the highest median throughput), "
        f"paired by repetition; intervals are {st['confidence']:.0%} bootstrap intervals "
        f"(BCa, {st['n_resamples']} resamples, seed {st['seed']}). *supported*: the whole "
        "interval clears the threshold; *not supported*: it lies wholly on the wrong side; "
        "*inconclusive*: it straddles the threshold, or fewer than "
        f"{st['min_repetitions']} repetitions; *not tested here*: the sweep lacks the runs "
        f"or another experiment judges it. Tables: `{tables_dir}`.",
        "",
        _table(_claims_frame(claims)),
    ]
    if checks:
        lines += [
            "",
            "## Checks (reported, not claims of the paper)",
            "",
            _table(_claims_frame(checks).drop(columns=["Paper's words"])),
        ]
    lines += ["", "## Machine", ""]
    labels = {
        "CPU": "CPU model",
        "Cores": "Cores (usable)",
        "Memory": "Memory",
        "OS": "OS",
        "Python": "Python (runs)",
        "Torch": "torch (runs)",
        "MPI": "MPI library (runs)",
        "MpiPy": "mpi4py (runs)",
        "Hosts": "Hosts per run",
    }
    keys = [labels.get(k, k) for k in machine]
    lines += [_table(pd.DataFrame({"": keys, "value": list(machine.values())}))]
    lines += ["", "## Sweep", ""]
    lines += [_table(pd.DataFrame({"": list(sweep), "value": list(sweep.values())}))]
    for c in [*claims, *checks]:
        if c.details is None or c.details.empty:
            continue
        lines += ["", f"## {c.label} {c.claim}", "", _table(c.details)]
    if explore is not None and not explore.empty:
        lines += [
            "",
            "## Exploration (not judged): every lag bound against the best synchronous series",
            "",
            "Picked after the runs, so no verdict rests on it: the lag bound marked *best* "
            "is the one with the highest ratio in that workload.",
            "",
            _table(explore),
        ]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    ">": r"$>$",
    "<": r"$<$",
}


def latex_escape(text: str) -> str:
    """Plain text -> LaTeX that typesets the same characters."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def macro_name(*parts: str) -> str:
    """Parts joined, letters only (TeX control words cannot hold digits or dashes)."""
    name = "".join(re.sub(r"[^A-Za-z]", "", p[:1].upper() + p[1:]) for p in parts if p)
    if not name:
        raise ValueError("empty macro name")
    return name


def macro_values(
    claims: Sequence[Claim],
    machine: Mapping[str, str],
    sweep: Mapping[str, str],
    protocol: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Every macro the paper may use -> its plain-text value (not yet escaped)."""
    values: dict[str, str] = {}
    for c in claims:
        for stem, value in c.numbers.items():
            values[macro_name("Claim", c.macro, stem)] = value
    if protocol is not None:
        st = protocol["statistics"]
        values["ProtocolConfidence"] = f"{float(st['confidence']):.0%}"
        values["ProtocolResamples"] = str(st["n_resamples"])
        values["ProtocolMinRepetitions"] = str(st["min_repetitions"])
        values["ProtocolDigest"] = str(protocol.get("_sha256", NA))[:16]
        values["ProtocolSynchronous"] = ", ".join(protocol["synchronous"]["series"])
    for key, value in machine.items():
        prefix = "Version" if key in ("Python", "Torch", "MPI", "MpiPy") else "Machine"
        values[macro_name(prefix, key)] = value
    for key, value in sweep.items():
        values[macro_name("Sweep", key)] = value
    return values


def render_macros(
    claims: Sequence[Claim],
    machine: Mapping[str, str],
    sweep: Mapping[str, str],
    protocol: Mapping[str, Any] | None = None,
) -> str:
    """``\\newcommand{\\Name}{value}`` for every number the paper quotes (claims and checks
    alike: pass both lists concatenated)."""
    lines = [
        "% Generated by `python -m bls_dlrm.analysis.report`; do not edit (git-ignored).",
        "% Every number the paper quotes is one of these macros.",
    ]
    for name, value in macro_values(claims, machine, sweep, protocol).items():
        lines.append(f"\\newcommand{{\\{name}}}{{{latex_escape(value)}}}")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bls_dlrm.analysis.report",
        description="Judge the paper's claims on a sweep's tables by the protocol; write the "
        "claims table (Markdown) and the paper's number macros (LaTeX).",
    )
    parser.add_argument("--tables", type=Path, default=Path("results/tables"))
    parser.add_argument("--protocol", type=Path, default=PROTOCOL)
    parser.add_argument("--out", type=Path, default=Path("results/claims.md"))
    parser.add_argument("--macros", type=Path, default=Path("paper/macros.tex"))
    args = parser.parse_args(argv)
    try:
        protocol = load_protocol(args.protocol)
    except ProtocolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs_path = args.tables / "runs.parquet"
    if not runs_path.is_file():
        print(f"error: {runs_path}: no such table (run `bls-dlrm tables`)", file=sys.stderr)
        return 1
    runs = annotate_runs(pd.read_parquet(runs_path))
    per_iteration = None
    per_path = args.tables / "per_iteration.parquet"
    if per_path.is_file():
        per_iteration = pd.read_parquet(per_path, columns=["run_id", "iteration", "checksum"])
    serving = None
    if all((args.tables / f"{name}.parquet").is_file() for name in ("serving", "capacity")):
        serving = {
            n: pd.read_parquet(args.tables / f"{n}.parquet") for n in ("serving", "capacity")
        }
    its_path = args.tables / "iterations.parquet"
    if its_path.is_file():
        names = set(pq.read_schema(its_path).names)
        columns = [c for c in SIMULATION_COLUMNS if c in names]
        runs = attach_predictions(runs, pd.read_parquet(its_path, columns=columns), protocol)
    claims = evaluate(runs, per_iteration, protocol, serving)
    checks = evaluate_checks(runs, per_iteration, protocol, serving)
    machine = machine_info(runs)
    sweep = sweep_info(runs)
    text = render_markdown(
        claims,
        machine,
        sweep,
        str(args.tables),
        protocol=protocol,
        checks=checks,
        setup=run_info(runs, protocol),
        explore=exploration(runs, protocol),
        workloads=workload_table(runs),
    )
    _write(args.out, text)
    _write(args.macros, render_macros([*claims, *checks], machine, sweep, protocol))
    for c in [*claims, *checks]:
        print(f"{c.label} {c.verdict:>15}: {c.measured}")
    print(f"wrote {args.out} and {args.macros}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
