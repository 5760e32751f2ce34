"""The paper's claims, tested on a sweep's tables: ``results/claims.md`` and ``paper/macros.tex``.

    python -m bls_dlrm.claims --tables results/tables \\
        --out results/claims.md --macros paper/macros.tex

Each claim of the abstract gets one number measured on this machine, a threshold named
below, and a verdict: *supported*, *not supported*, or *not tested here* when the sweep
lacks the runs the test needs (a smoke sweep, say). The same numbers go into LaTeX macros,
so the paper quotes exactly what the table says.

How each claim is tested (the grouping into workloads, scenario classes and synchronous
baselines is defined in :mod:`bls_dlrm.plotting`; every quantity is a median over
repetitions of a workload):

(a) *balanced, homogeneous runs gain nothing notable*: in every balanced workload, the
    best BLS lag bound's throughput lies within :data:`BALANCED_TOLERANCE` of the best
    synchronous collective's.
(b) *unbalanced runs (skew or delays) gain latency and throughput*: over the unbalanced
    workloads where the theory leaves room for a gain (ideal speedup of the best BLS run
    at least :data:`GAIN_MIN`), the medians of the throughput gain and of the
    :data:`LATENCY_METRIC` gain of the best BLS lag bound over the best synchronous
    collective are both at least :data:`GAIN_MIN`. Workloads with no room (a fixed
    straggler: no lag bound can help it) are listed, not counted.
(c) *at best the delays are masked*: for BLS with the largest lag bound, the measured
    speedup over mpi divided by the ideal speedup of the theory (the share of the gain a
    perfect exchange would realise); the best delayed workload with room for a gain
    (ideal speedup at least :data:`GAIN_MIN`) must reach :data:`MASKED_MIN`.
(d) *end-to-end speedup of over 1.8x*: the largest speedup of any BLS lag bound over mpi
    across delayed workloads exceeds :data:`SPEEDUP_CLAIM`.
(e) *accuracy is fully preserved*: within every workload, all runs (every collective and
    lag bound) have the same predictions checksum, i.e. bit-identical predictions.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bls_dlrm import plotting as bp

__all__ = [
    "BALANCED_TOLERANCE",
    "GAIN_MIN",
    "LATENCY_METRIC",
    "MASKED_MIN",
    "NOT_SUPPORTED",
    "NOT_TESTED",
    "SPEEDUP_CLAIM",
    "SUPPORTED",
    "Claim",
    "evaluate",
    "machine_info",
    "main",
    "render_macros",
    "render_markdown",
    "sweep_info",
]

#: (a) |best BLS / best synchronous throughput - 1| at most this on balanced workloads.
BALANCED_TOLERANCE = 0.05
#: (b) a ratio (sync / BLS for latency, BLS / sync for throughput) of at least this is a gain.
GAIN_MIN = 1.05
#: (b) the latency statistic judged: the median time per iteration, i.e. how long the
#: system typically takes to deliver each next batch of predictions (the reference DLRM's
#: "ms/it"). Its tail (p99) is reported beside it: with a lag bound completions come in
#: bursts once a late rank catches up, so the gaps between bursts can grow.
LATENCY_METRIC = "iteration_time_p50_s"
TAIL_METRIC = "iteration_time_p99_s"
#: (b) reported beside it, not judged: the median batch latency, start of a batch's
#: lookups to its predictions (max over ranks). A lag bound lets fast ranks start a batch
#: early and wait for its data later, so in a closed loop this one grows with L.
BATCH_LATENCY_METRIC = "latency_p50_s"
#: (c) share of the theory's ideal speedup that counts as masking the delays.
MASKED_MIN = 0.90
#: (d) the end-to-end speedup the abstract quotes.
SPEEDUP_CLAIM = 1.8

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
NOT_TESTED = "not tested here"
NA = "n/a"

FIGURE_COMMAND = "snakemake --cores 2 figures/{name}.pdf"
CLAIMS_COMMAND = "snakemake --cores 2 results/claims.md"


@dataclass
class Claim:
    """One claim of the abstract and what this sweep says about it."""

    key: str  # a..e
    macro: str  # macro name stem, e.g. "Balanced"
    claim: str  # the abstract's claim, in our words
    test: str  # how it is tested and where it is shown
    command: str
    measured: str  # the number(s), for people
    threshold: str
    verdict: str
    details: pd.DataFrame | None = None
    numbers: dict[str, str] = field(default_factory=dict)  # macro stem -> LaTeX value


# --------------------------------------------------------------------------------------
# Numbers


def _fmt(value: float, digits: int = 2) -> str:
    return NA if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _pct(value: float, digits: int = 0) -> str:
    return NA if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}%"


def _medians(runs: pd.DataFrame) -> pd.DataFrame:
    """Median of every numeric column per (workload, series), with labels kept."""
    numeric = [
        c
        for c in runs.columns
        if pd.api.types.is_numeric_dtype(runs[c]) and not pd.api.types.is_bool_dtype(runs[c])
    ]
    keys = ["workload", "series", "collective", "scenario_class"]
    numeric = [c for c in numeric if c not in keys]
    out = runs.groupby(keys, dropna=False)[numeric].median().reset_index()
    counts = runs.groupby(keys, dropna=False)["run_id"].count().rename("repetitions")
    return out.merge(counts.reset_index(), on=keys)


#: mpi, gloo and bls L=0 (see :data:`bls_dlrm.plotting.SYNC_SERIES`).
SYNC_SERIES = bp.SYNC_SERIES


def _best_sync(med: pd.DataFrame) -> pd.DataFrame:
    """Per workload, the synchronous series with the highest median throughput."""
    sync = med[med["series"].isin(SYNC_SERIES)]
    if sync.empty:
        return sync
    return sync.loc[sync.groupby("workload")["throughput_sps"].idxmax()]


def _best_bls(med: pd.DataFrame) -> pd.DataFrame:
    """Per workload, the BLS series with a lag (L >= 1) and the highest median throughput."""
    bls = med[(med["collective"] == "bls") & ~med["series"].isin(SYNC_SERIES)]
    if bls.empty:
        return bls
    return bls.loc[bls.groupby("workload")["throughput_sps"].idxmax()]


def _versus(med: pd.DataFrame) -> pd.DataFrame:
    """Best BLS beside best synchronous, per workload that has both."""
    sync = _best_sync(med)
    bls = _best_bls(med)
    if sync.empty or bls.empty:
        return pd.DataFrame(
            columns=["workload", "scenario_class", "bls", "sync", "throughput_gain"]
        )
    metrics = ["throughput_sps", LATENCY_METRIC, TAIL_METRIC, BATCH_LATENCY_METRIC]
    cols = ["workload", "scenario_class", "series", *metrics, "ideal_speedup"]
    both = bls[cols].merge(
        sync[["workload", "series", *metrics]],
        on="workload",
        suffixes=("_bls", "_sync"),
    )
    both = both.rename(columns={"series_bls": "bls", "series_sync": "sync"})
    both["throughput_gain"] = both["throughput_sps_bls"] / both["throughput_sps_sync"]
    both["latency_gain"] = both[f"{LATENCY_METRIC}_sync"] / both[f"{LATENCY_METRIC}_bls"]
    both["tail_gain"] = both[f"{TAIL_METRIC}_sync"] / both[f"{TAIL_METRIC}_bls"]
    both["batch_latency_gain"] = (
        both[f"{BATCH_LATENCY_METRIC}_sync"] / both[f"{BATCH_LATENCY_METRIC}_bls"]
    )
    return both


def claim_balanced(med: pd.DataFrame) -> Claim:
    both = _versus(med)
    both = both[both["scenario_class"] == "balanced"]
    claim = Claim(
        key="a",
        macro="Balanced",
        claim="Balanced, homogeneous runs: BLS gives no notable advantage",
        test="Fig. 4: best-L BLS throughput / best synchronous throughput, balanced workloads",
        command=FIGURE_COMMAND.format(name="fig4_scenarios"),
        measured=NA,
        threshold=f"within ±{BALANCED_TOLERANCE:.0%} in every balanced workload",
        verdict=NOT_TESTED,
    )
    if both.empty:
        claim.measured = "no balanced workload with both BLS and a synchronous collective"
        claim.numbers = {"Range": NA, "Ratio": NA, "RatioMin": NA, "RatioMax": NA}
        return claim
    ratios = both["throughput_gain"]
    lo, hi = float(ratios.min()), float(ratios.max())
    within = bool(((ratios - 1).abs() <= BALANCED_TOLERANCE).all())
    claim.verdict = SUPPORTED if within else NOT_SUPPORTED
    span = _fmt(lo) if len(ratios) == 1 else f"{_fmt(lo)}-{_fmt(hi)}"
    claim.measured = f"ratio {span} over {len(ratios)} workload(s)"
    claim.numbers = {
        "Range": _fmt(lo) if _fmt(lo) == _fmt(hi) else f"{_fmt(lo)}--{_fmt(hi)}",  # TeX dash
        "Ratio": _fmt(float(ratios.median())),
        "RatioMin": _fmt(lo),
        "RatioMax": _fmt(hi),
        "Workloads": str(len(ratios)),
    }
    claim.details = both[["workload", "bls", "sync", "throughput_gain"]]
    return claim


def claim_unbalanced(med: pd.DataFrame) -> Claim:
    both = _versus(med)
    both = both[both["scenario_class"].isin(("skewed", "delayed"))]
    claim = Claim(
        key="b",
        macro="Unbalanced",
        claim="Unbalanced runs (skewed accesses, delays): BLS improves latency and throughput",
        test=(
            "Fig. 4 and Fig. 2: best-L BLS vs best synchronous, throughput and median time "
            "per iteration, unbalanced workloads with room for a gain in theory"
        ),
        command=FIGURE_COMMAND.format(name="fig4_scenarios"),
        measured=NA,
        threshold=f"median gains in both >= {GAIN_MIN:g}x",
        verdict=NOT_TESTED,
    )
    claim.numbers = {"Throughput": NA, "Latency": NA, "Improved": NA, "Eligible": NA}
    if both.empty:
        claim.measured = "no skewed or delayed workload with both BLS and a synchronous run"
        return claim
    room = both["ideal_speedup"] >= GAIN_MIN
    eligible = both[room]
    no_room = both[~room]
    claim.details = both[
        [
            "workload",
            "bls",
            "sync",
            "throughput_gain",
            "latency_gain",
            "tail_gain",
            "batch_latency_gain",
            "ideal_speedup",
        ]
    ]
    if eligible.empty:
        claim.measured = (
            f"{len(no_room)} unbalanced workload(s), none with an ideal speedup >= {GAIN_MIN:g}x"
        )
        return claim
    thr = float(eligible["throughput_gain"].median())
    lat = float(eligible["latency_gain"].median())
    batch = float(eligible["batch_latency_gain"].median())
    tail = float(eligible["tail_gain"].median())
    improved = int(
        ((eligible["throughput_gain"] >= GAIN_MIN) & (eligible["latency_gain"] >= GAIN_MIN)).sum()
    )
    claim.verdict = SUPPORTED if thr >= GAIN_MIN and lat >= GAIN_MIN else NOT_SUPPORTED
    claim.measured = (
        f"throughput x{_fmt(thr)}, median time per iteration x{_fmt(lat)} (medians; not "
        f"judged: p99 time per iteration x{_fmt(tail)}, batch latency p50 x{_fmt(batch)}); "
        f"{improved} of {len(eligible)} workload(s) improve both"
    )
    if len(no_room):
        claim.measured += f"; {len(no_room)} more without room in theory: " + ", ".join(
            no_room["workload"]
        )
    claim.numbers = {
        "Throughput": _fmt(thr),
        "Latency": _fmt(lat),
        "Improved": str(improved),
        "Eligible": str(len(eligible)),
        "NoRoom": str(len(no_room)),
    }
    return claim


def _delayed_bls_vs_mpi(runs: pd.DataFrame) -> pd.DataFrame:
    """Median speedup over mpi and ideal speedup per delayed workload and BLS series."""
    df = bp.with_speedup(runs, how="mpi")
    df = df[(df["collective"] == "bls") & (df["scenario_class"] == "delayed")]
    df = df[df["speedup"].notna()]
    if df.empty:
        return pd.DataFrame(columns=["workload", "series", "lag", "speedup", "ideal_speedup"])
    out = (
        df.groupby(["workload", "series"])
        .agg(
            speedup=("speedup", "median"),
            ideal_speedup=("ideal_speedup", "median"),
            ideal_efficiency=("ideal_efficiency", "median"),
        )
        .reset_index()
    )
    out["lag"] = [int(s.split("=", 1)[1]) for s in out["series"]]
    return out


def claim_masking(runs: pd.DataFrame) -> Claim:
    per = _delayed_bls_vs_mpi(runs)
    claim = Claim(
        key="c",
        macro="Masked",
        claim="At best, BLS masks the delays altogether",
        test=(
            "Fig. 3: measured speedup of the largest lag bound over mpi / ideal speedup "
            "(theory), best delayed workload"
        ),
        command=FIGURE_COMMAND.format(name="fig3_speedup_vs_lag"),
        measured=NA,
        threshold=f">= {MASKED_MIN:.0%} of the ideal speedup",
        verdict=NOT_TESTED,
    )
    claim.numbers = {"Fraction": NA, "Workload": NA, "Lag": NA, "Efficiency": NA}
    if per.empty:
        claim.measured = "no delayed workload with BLS and mpi runs"
        return claim
    top = per.loc[per.groupby("workload")["lag"].idxmax()].copy()
    top["attained"] = top["speedup"] / top["ideal_speedup"]
    claim.details = top[["workload", "series", "speedup", "ideal_speedup", "attained"]]
    # Where the theory leaves nothing to mask (a fixed straggler), the ratio says nothing.
    room = top[top["ideal_speedup"] >= GAIN_MIN]
    if room.empty:
        claim.measured = f"no delayed workload with an ideal speedup >= {GAIN_MIN:g}x"
        return claim
    best = room.loc[room["attained"].idxmax()]
    frac = float(best["attained"])
    claim.verdict = SUPPORTED if frac >= MASKED_MIN else NOT_SUPPORTED
    claim.measured = (
        f"{_pct(frac)} of the ideal speedup ({best['workload']}, L={int(best['lag'])}: "
        f"x{_fmt(float(best['speedup']))} of x{_fmt(float(best['ideal_speedup']))})"
    )
    claim.numbers = {
        "Fraction": _pct(frac),
        "Workload": str(best["workload"]),
        "Lag": str(int(best["lag"])),
        "Efficiency": _pct(float(best["ideal_efficiency"])),
    }
    return claim


def claim_speedup(runs: pd.DataFrame) -> Claim:
    per = _delayed_bls_vs_mpi(runs)
    claim = Claim(
        key="d",
        macro="Speedup",
        claim=f"End-to-end speedup of over {SPEEDUP_CLAIM:g}x",
        test="Fig. 3: largest speedup of any BLS lag bound over mpi, delayed workloads",
        command=FIGURE_COMMAND.format(name="fig3_speedup_vs_lag"),
        measured=NA,
        threshold=f"> {SPEEDUP_CLAIM:g}x",
        verdict=NOT_TESTED,
    )
    claim.numbers = {"Max": NA, "Ideal": NA, "Workload": NA, "Lag": NA}
    if per.empty:
        claim.measured = "no delayed workload with BLS and mpi runs"
        return claim
    best = per.loc[per["speedup"].idxmax()]
    value = float(best["speedup"])
    claim.verdict = SUPPORTED if value > SPEEDUP_CLAIM else NOT_SUPPORTED
    claim.measured = (
        f"x{_fmt(value)} ({best['workload']}, L={int(best['lag'])}; "
        f"ideal x{_fmt(float(best['ideal_speedup']))})"
    )
    claim.numbers = {
        "Max": _fmt(value),
        "Ideal": _fmt(float(best["ideal_speedup"])),
        "Workload": str(best["workload"]),
        "Lag": str(int(best["lag"])),
    }
    claim.details = per[["workload", "series", "speedup", "ideal_speedup"]]
    return claim


def claim_accuracy(runs: pd.DataFrame, per_iteration: pd.DataFrame | None = None) -> Claim:
    claim = Claim(
        key="e",
        macro="Accuracy",
        claim="Accuracy is fully preserved (inference only)",
        test="runs.predictions_checksum equal for every collective and lag bound of a workload",
        command=CLAIMS_COMMAND,
        measured=NA,
        threshold="bit-identical in every workload",
        verdict=NOT_TESTED,
    )
    claim.numbers = {"Identical": NA, "Workloads": NA, "Runs": NA, "Iterations": NA}
    if runs.empty or "predictions_checksum" not in runs.columns:
        claim.measured = "no runs with prediction checksums"
        return claim
    groups = runs.groupby("workload").agg(
        series=("series", "nunique"),
        runs=("run_id", "count"),
        checksums=("predictions_checksum", "nunique"),
    )
    tested = groups[groups["series"] >= 2]
    if tested.empty:
        claim.measured = "no workload was run with two or more collectives or lag bounds"
        return claim
    identical = int((tested["checksums"] == 1).sum())
    claim.verdict = SUPPORTED if identical == len(tested) else NOT_SUPPORTED
    n_runs = int(tested["runs"].sum())
    claim.measured = f"{identical} of {len(tested)} workload(s) bit-identical across {n_runs} runs"
    iterations = NA
    if per_iteration is not None and {"run_id", "checksum"} <= set(per_iteration.columns):
        in_tested = runs.loc[runs["workload"].isin(tested.index), "run_id"]
        iterations = str(int(per_iteration["run_id"].isin(in_tested).sum()))
        claim.measured += f" ({iterations} iteration checksums)"
    claim.numbers = {
        "Identical": str(identical),
        "Workloads": str(len(tested)),
        "Runs": str(n_runs),
        "Iterations": iterations,
    }
    claim.details = tested.reset_index()
    return claim


def evaluate(runs: pd.DataFrame, per_iteration: pd.DataFrame | None = None) -> list[Claim]:
    """Test claims (a)-(e) on a runs table (raw or annotated); see the module docstring."""
    runs = runs if "workload" in runs.columns else bp.annotate_runs(runs)
    if runs.empty:
        med = pd.DataFrame(columns=["workload", "series", "collective", "scenario_class"])
    else:
        med = _medians(runs)
    return [
        claim_balanced(med),
        claim_unbalanced(med),
        claim_masking(runs),
        claim_speedup(runs),
        claim_accuracy(runs, per_iteration),
    ]


# --------------------------------------------------------------------------------------
# Machine and sweep


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or NA
    for key in ("model name", "Hardware", "cpu model", "Processor"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return " ".join(m.group(1).split())
    return platform.processor() or NA


def _memory() -> str:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return NA
    m = re.search(r"^MemTotal:\s*(\d+)\s*kB", text, re.MULTILINE)
    return f"{int(m.group(1)) / 2**20:.1f} GiB" if m else NA


def _os_name() -> str:
    try:
        text = Path("/etc/os-release").read_text()
        m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', text, re.MULTILINE)
        if m:
            return f"{m.group(1)} (kernel {platform.release()})"
    except OSError:
        pass
    return platform.platform()


def _cores() -> str:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    total = os.cpu_count() or usable
    return str(total) if usable == total else f"{usable} of {total}"


def _most_common_text(runs: pd.DataFrame, column: str) -> str:
    if column not in runs.columns:
        return NA
    value = bp.most_common(runs[column])
    return NA if value is None else str(value)


def machine_info(runs: pd.DataFrame | None = None) -> dict[str, str]:
    """Where the numbers come from: this machine's CPU, cores, memory and OS, and the
    software versions the runs recorded in their headers (most common over runs)."""
    runs = runs if runs is not None else pd.DataFrame()
    info = {
        "CPU": _cpu_model(),
        "Cores": _cores(),
        "Memory": _memory(),
        "OS": _os_name(),
        "Python": _most_common_text(runs, "versions.python"),
        "Torch": _most_common_text(runs, "versions.torch"),
        "MPI": _most_common_text(runs, "versions.mpi_library"),
        "MpiPy": _most_common_text(runs, "versions.mpi4py"),
        "Hosts": _most_common_text(runs, "hosts"),
    }
    if info["Python"] == NA:
        info["Python"] = platform.python_version()
    if info["MPI"] != NA:  # "MPICH Version: 4.3.0 MPICH Release date: ..." -> "MPICH 4.3.0"
        m = re.match(r"\s*(\w[\w .-]*?)\s+Version:?\s*([\w.]+)", info["MPI"])
        if m:
            info["MPI"] = f"{m.group(1)} {m.group(2)}"
    return info


def _join(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values) if len(values) else NA


def sweep_info(runs: pd.DataFrame) -> dict[str, str]:
    """What the sweep covered, for the setup section of the paper."""
    runs = runs if "workload" in runs.columns or runs.empty else bp.annotate_runs(runs)
    if runs.empty:
        return {
            k: NA
            for k in (
                "Runs",
                "Workloads",
                "Scenarios",
                "Series",
                "Ranks",
                "LagBounds",
                "Iterations",
                "Repetitions",
                "SamplesPerIteration",
                "DelaySizes",
            )
        }
    lags = sorted({int(v) for v in runs.loc[runs["collective"] == "bls", "lag_bound"].dropna()})
    series = sorted(runs["series"].unique(), key=bp.series_sort_key)
    reps = runs.groupby(["workload", "series"])["run_id"].count()
    samples_per_it = (runs["samples"] / runs["measured_iterations"]).dropna()
    delays = sorted({round(v, 3) for v in runs["delay_ms"].dropna() if v > 0})
    return {
        "Runs": str(len(runs)),
        "Workloads": str(runs["workload"].nunique()),
        "Scenarios": _join(sorted(runs["scenario"].unique())),
        "Series": _join(series),
        "Ranks": _join(sorted(runs["world_size"].unique())),
        "LagBounds": _join(lags),
        "Iterations": _join(sorted(runs["measured_iterations"].unique())),
        "Repetitions": str(int(reps.max()))
        if int(reps.min()) == int(reps.max())
        else f"{int(reps.min())}-{int(reps.max())}",
        "SamplesPerIteration": _join(sorted({int(v) for v in samples_per_it})),
        "DelaySizes": _join([f"{v:g}" for v in delays]) + (" ms" if delays else ""),
    }


# --------------------------------------------------------------------------------------
# Output


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(
    claims: Sequence[Claim],
    machine: Mapping[str, str],
    sweep: Mapping[str, str],
    tables_dir: str = "results/tables",
) -> str:
    """The claims table, the machine and the sweep, then per-claim details, as Markdown."""
    lines = [
        "# Claims of the paper, tested on this machine",
        "",
        f"Written by `python -m bls_dlrm.claims` from `{tables_dir}/runs.parquet`. "
        "Thresholds are named constants in `src/bls_dlrm/claims.py`; every number is a "
        "median over the repetitions of a workload. *not tested here* means the sweep "
        "lacks the runs the test needs.",
        "",
        "| | Claim (abstract) | Tested by | Command | Measured | Threshold | Verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in claims:
        lines.append(
            f"| ({c.key}) | {_md(c.claim)} | {_md(c.test)} | `{c.command}` | "
            f"{_md(c.measured)} | {_md(c.threshold)} | **{c.verdict}** |"
        )
    lines += ["", "## Machine", "", "| | |", "|---|---|"]
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
    lines += [f"| {labels.get(k, k)} | {_md(v)} |" for k, v in machine.items()]
    lines += ["", "## Sweep", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_md(v)} |" for k, v in sweep.items()]
    for c in claims:
        if c.details is None or c.details.empty:
            continue
        lines += ["", f"## ({c.key}) {c.claim}", "", _frame_md(c.details)]
    return "\n".join(lines) + "\n"


def _frame_md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = [_fmt(v, 3) if isinstance(v, float) else _md(v) for v in row]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


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
}


def latex_escape(text: str) -> str:
    """Plain text -> LaTeX that typesets the same characters."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def macro_name(*parts: str) -> str:
    """``Claim`` + parts, letters only (TeX control words cannot hold digits or dashes)."""
    name = "".join(re.sub(r"[^A-Za-z]", "", p[:1].upper() + p[1:]) for p in parts if p)
    if not name:
        raise ValueError("empty macro name")
    return name


def macro_values(
    claims: Sequence[Claim], machine: Mapping[str, str], sweep: Mapping[str, str]
) -> dict[str, str]:
    """Every macro the paper may use -> its plain-text value (not yet escaped)."""
    values: dict[str, str] = {}
    for c in claims:
        values[macro_name("Claim", c.macro, "Verdict")] = c.verdict
        for stem, value in c.numbers.items():
            values[macro_name("Claim", c.macro, stem)] = value
    values["ThresholdBalanced"] = f"{BALANCED_TOLERANCE:.0%}"
    values["ThresholdGain"] = f"{GAIN_MIN:g}"
    values["ThresholdMasked"] = f"{MASKED_MIN:.0%}"
    values["ThresholdSpeedup"] = f"{SPEEDUP_CLAIM:g}"
    for key, value in machine.items():
        prefix = "Version" if key in ("Python", "Torch", "MPI", "MpiPy") else "Machine"
        values[macro_name(prefix, key)] = value
    for key, value in sweep.items():
        values[macro_name("Sweep", key)] = value
    return values


def render_macros(
    claims: Sequence[Claim], machine: Mapping[str, str], sweep: Mapping[str, str]
) -> str:
    """``\\newcommand{\\Name}{value}`` for every number the paper quotes."""
    lines = [
        "% Generated by `python -m bls_dlrm.claims`; do not edit (git-ignored).",
        "% Every number the paper quotes is one of these macros.",
    ]
    for name, value in macro_values(claims, machine, sweep).items():
        lines.append(f"\\newcommand{{\\{name}}}{{{latex_escape(value)}}}")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bls_dlrm.claims",
        description="Test the paper's claims on a sweep's tables; write the claims table "
        "(Markdown) and the paper's number macros (LaTeX).",
    )
    parser.add_argument("--tables", type=Path, default=Path("results/tables"))
    parser.add_argument("--out", type=Path, default=Path("results/claims.md"))
    parser.add_argument("--macros", type=Path, default=Path("paper/macros.tex"))
    args = parser.parse_args(argv)
    runs_path = args.tables / "runs.parquet"
    if not runs_path.is_file():
        print(f"error: {runs_path}: no such table (run `bls-dlrm tables`)", file=sys.stderr)
        return 1
    runs = bp.annotate_runs(pd.read_parquet(runs_path))
    per_iteration = None
    per_path = args.tables / "per_iteration.parquet"
    if per_path.is_file():
        per_iteration = pd.read_parquet(per_path, columns=["run_id", "iteration", "checksum"])
    claims = evaluate(runs, per_iteration)
    machine = machine_info(runs)
    sweep = sweep_info(runs)
    _write(args.out, render_markdown(claims, machine, sweep, str(args.tables)))
    _write(args.macros, render_macros(claims, machine, sweep))
    for c in claims:
        print(f"({c.key}) {c.verdict:>15}: {c.measured}")
    print(f"wrote {args.out} and {args.macros}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
