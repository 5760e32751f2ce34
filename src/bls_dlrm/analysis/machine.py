"""What was run and where: the machine, the sweep's facts, the runs and workloads, for the
claims table's opening and the paper's macros.
"""

from __future__ import annotations

import math
import os
import platform
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bls_dlrm.analysis.judge import NA, _annotated, _fmt, _repetition_column, _stress
from bls_dlrm.analysis.workloads import NO_DELAY_KINDS, most_common
from bls_dlrm.series import series_sort_key


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
    value = most_common(runs[column])
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


_SWEEP_KEYS = (
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


def sweep_info(runs: pd.DataFrame) -> dict[str, str]:
    """What the sweep covered, for the setup section of the paper."""
    runs = _annotated(runs)
    if runs.empty:
        return dict.fromkeys(_SWEEP_KEYS, NA)
    lags = sorted({int(v) for v in runs.loc[runs["collective"] == "bls", "lag_bound"].dropna()})
    series = sorted(runs["series"].unique(), key=series_sort_key)
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


def _columns_by_key(runs: pd.DataFrame, *words: str) -> list[str]:
    """Columns whose last dotted key contains one of ``words`` (header or config alike)."""
    return [c for c in runs.columns if any(w in c.rsplit(".", 1)[-1].lower() for w in words)]


def _distinct(runs: pd.DataFrame, columns: Sequence[str]) -> str:
    values: list[str] = []
    for c in columns:
        for v in runs[c].dropna().unique():
            text = f"{v}"
            if text not in values:
                values.append(text)
    return _join(values)


def _by_workload(runs: pd.DataFrame, column: str) -> str:
    """``value`` if one value over all runs, else ``value (workloads); ...``."""
    if column not in runs.columns:
        return NA
    groups = runs.groupby(runs[column].astype(str))["workload"].unique()
    if len(groups) == 1:
        return str(groups.index[0])
    return "; ".join(f"{k} ({', '.join(map(str, v))})" for k, v in groups.items())


def _data_source(runs: pd.DataFrame) -> str:
    cols = [c for c in ("config.dataset", "config.tags.dataset", "config.tags.data") if c in runs]
    if not cols:
        return NA
    text = runs[cols].astype(str).agg(" ".join, axis=1).str.lower()
    criteo = text.str.contains("criteo")
    if criteo.all():
        return "Criteo (real click logs, preprocessed)"
    if not criteo.any():
        return "synthetic (seeded generator, `bls-dlrm make-data`)"
    return "synthetic and Criteo (see the workloads below)"


def run_info(runs: pd.DataFrame, protocol: Mapping[str, Any]) -> dict[str, str]:
    """What was run, for the opening of the claims table: data, delays, placement, counts."""
    runs = _annotated(runs)
    if runs.empty:
        return {}
    delayed = runs[runs["scenario_class"] == "delayed"] if "scenario_class" in runs else runs
    kinds = sorted(set(delayed["delay_kind"])) if len(delayed) else []
    delay_modes = _distinct(
        runs, [c for c in runs.columns if c.startswith("config.delay.") and c.endswith("mode")]
    )
    delays = "none"
    if kinds:
        delays = f"{_join(kinds)} (workloads {_join(sorted(set(delayed['workload'])))})"
        if delay_modes != NA:
            delays += f"; delay mode {delay_modes}"
    return {
        "Data": _data_source(runs),
        "Injected delays": delays,
        "Ranks per run": _by_workload(runs, "world_size"),
        "Placement": _by_workload(runs, "placement"),
        "Cores per rank": _distinct(runs, _columns_by_key(runs, "cores_per_rank")),
        "Hosts per run": _most_common_text(runs, "hosts"),
        "Repetitions": sweep_info(runs)["Repetitions"],
        "Measured iterations per run": _join(sorted(runs["measured_iterations"].unique())),
        "Series order seed": _distinct(runs, _columns_by_key(runs, "shuffle", "order_seed")),
        "Stress scenarios (never judged)": _join(_stress(runs, protocol)),
    }


def workload_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per workload: class, delay, placement, ranks, repetitions, and the room the
    theory leaves (median ideal speedup of the BLS series with the largest lag bound), with
    the per-rank work spread where the tables carry it (columns named ``*work_cv*``)."""
    runs = _annotated(runs)
    if runs.empty:
        return pd.DataFrame()
    cv_cols = [c for c in runs.columns if "work_cv" in c.lower()]
    rep = _repetition_column(runs)
    rows = []
    for w, df in runs.groupby("workload", sort=False):
        bls = df[df["collective"] == "bls"].dropna(subset=["lag_bound"])
        top = bls[bls["lag_bound"] == bls["lag_bound"].max()] if len(bls) else bls
        row = {
            "workload": w,
            "class": df["scenario_class"].iloc[0] if "scenario_class" in df else NA,
            "delay": f"{df['delay_kind'].iloc[0]} {_fmt(df['delay_ms'].iloc[0], 1)} ms"
            if df["delay_kind"].iloc[0] not in NO_DELAY_KINDS
            else "none",
            "placement": df["placement"].iloc[0] if "placement" in df else NA,
            "ranks": _join(sorted(df["world_size"].unique())),
            "repetitions": int(df[rep].nunique()) if rep else NA,
            "series": int(df["series"].nunique()),
            "ideal speedup (largest L)": float(top["ideal_speedup"].median())
            if len(top) and "ideal_speedup" in top
            else math.nan,
        }
        for c in cv_cols:
            row[c] = float(pd.to_numeric(df[c], errors="coerce").median())
        rows.append(row)
    return pd.DataFrame(rows)
