"""Captions: what a figure's runs were, read from their header columns, never by hand."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bls_dlrm.analysis.workloads import (
    UNRECORDED,
    _is_delayed,
    annotate_runs,
)
from bls_dlrm.series import is_missing


def missing_note(wanted: Iterable[str], present: Iterable[str], what: str = "series") -> str:
    """A one-line note naming what a sweep lacks (empty when nothing is missing)."""
    have = set(present)
    lacking = [w for w in wanted if w not in have]
    if not lacking:
        return ""
    return f"not in this sweep ({what}): {', '.join(lacking)}"


#: Columns that name a run's dataset, most specific first.
DATASET_COLUMNS = ("config.tags.dataset", "config.dataset", "dataset")


#: Values of a ``config.delay.*`` column that say how an injected delay is spent.
DELAY_MODES = {
    "busy": "busy work on the rank's core",
    "work": "busy work on the rank's core",
    "compute": "busy work on the rank's core",
    "spin": "busy work on the rank's core",
    "cpu": "busy work on the rank's core",
    "sleep": "sleeping",
    "noisy": "a competing process on the rank's core",
    "noisy-neighbour": "a competing process on the rank's core",
    "noisy_neighbour": "a competing process on the rank's core",
}


def _span(values: Iterable[Any]) -> str:
    """``5`` or ``3-5`` (integers) from a set of values; ``?`` for none."""
    nums = sorted({int(v) for v in values if not is_missing(v)})
    if not nums:
        return "?"
    return str(nums[0]) if nums[0] == nums[-1] else f"{nums[0]}-{nums[-1]}"


def _join_words(words: Sequence[str]) -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _dataset_kind(runs: pd.DataFrame) -> tuple[str, list[str]]:
    for col in DATASET_COLUMNS:
        if col in runs.columns:
            names = sorted({Path(str(v)).name for v in runs[col] if not is_missing(v)})
            if names:
                criteo = [n for n in names if "criteo" in n.lower() and "synthetic" not in n]
                if criteo and len(criteo) == len(names):
                    return "Criteo", names
                if criteo:
                    return "mixed", names
                return "synthetic", names
    return "unrecorded", []


def _delay_modes(runs: pd.DataFrame) -> list[str]:
    modes = set()
    for col in runs.columns:
        if not col.startswith("config.delay."):
            continue
        for value in runs[col].dropna().unique():
            text = str(value).strip().lower()
            if text in DELAY_MODES:
                modes.add(DELAY_MODES[text])
    return sorted(modes)


def sweep_facts(runs: pd.DataFrame) -> dict[str, Any]:
    """What a caption must say about ``runs`` (the runs a figure draws), from the tables.

    Keys: ``ranks`` (sorted world sizes), ``placements`` (sorted :func:`placement_of`
    values), ``repetitions`` (``"5"`` or ``"3-5"``: runs per workload and series),
    ``iterations`` (measured iterations per run, same form), ``warmup`` (or ``"?"``),
    ``data`` (``synthetic``, ``Criteo``, ``mixed`` or ``unrecorded``), ``datasets``,
    ``delay_kinds`` (injected delay kinds, sorted), ``delay_modes`` (how delays are spent,
    if logged), ``stress`` (workloads of the stress class).
    """
    df = runs if "workload" in runs.columns else annotate_runs(runs)
    facts: dict[str, Any] = {
        "runs": len(df),
        "ranks": sorted({int(v) for v in df.get("world_size", pd.Series()).dropna()}),
        "placements": sorted(set(df["placement"])) if "placement" in df.columns else [],
        "repetitions": "?",
        "iterations": "?",
        "warmup": "?",
        "data": "unrecorded",
        "datasets": [],
        "delay_kinds": [],
        "delay_modes": [],
        "stress": [],
    }
    if df.empty:
        return facts
    facts["repetitions"] = _span(df.groupby(["workload", "series"]).size())
    for key, cols in (
        ("iterations", ("measured_iterations", "config.iterations")),
        ("warmup", ("config.warmup",)),
    ):
        col = next((c for c in cols if c in df.columns and df[c].notna().any()), None)
        if col is not None:
            facts[key] = _span(df[col])
    facts["data"], facts["datasets"] = _dataset_kind(df)
    delayed = df[df["scenario_class"] == "delayed"]
    if "stress" in set(df["scenario_class"]):
        stress = df[df["scenario_class"] == "stress"]
        delayed = pd.concat([delayed, stress[stress.apply(_is_delayed, axis=1)]])
        facts["stress"] = sorted(set(stress["workload"]))
    facts["delay_kinds"] = sorted(set(delayed["delay_kind"]))
    facts["delay_modes"] = _delay_modes(delayed)
    return facts


def caption(runs: pd.DataFrame, *, stress_label: bool = True) -> str:
    """One or two sentences for a figure's caption, computed from the runs it draws.

    Example: "2 ranks, bound one per core; 5 repetitions of 300 measured iterations
    (3 warm-up) per series; synthetic data (kaggle-50k); injected delays (synthetic:
    rotating, straggler; busy work on the rank's core)." Runs of the stress class are
    described apart, as a stress scenario no claim is judged on (when ``stress_label``).
    """
    df = runs if "workload" in runs.columns else annotate_runs(runs)
    if df.empty:
        return "No runs."
    stress = df[df["scenario_class"] == "stress"] if stress_label else df.iloc[0:0]
    main = df.drop(index=stress.index)
    text = _describe(main) if not main.empty else ""
    if not stress.empty:
        f = sweep_facts(stress)
        ranks = _join_words([str(r) for r in f["ranks"]]) or "?"
        text += (
            f" Stress scenario {', '.join(f['stress'])} ({ranks} ranks, "
            f"{_join_words(f['placements'])}; {f['repetitions']} repetitions): "
            "no claim is judged on it."
        )
    return text.strip()


def _describe(runs: pd.DataFrame) -> str:
    f = sweep_facts(runs)
    ranks = _join_words([str(r) for r in f["ranks"]]) or "?"
    parts = [f"{ranks} ranks, {_join_words(f['placements']) or UNRECORDED}"]
    warm = f" ({f['warmup']} warm-up)" if f["warmup"] != "?" else ""
    parts.append(
        f"{f['repetitions']} repetitions of {f['iterations']} measured iterations{warm} per series"
    )
    data = {
        "synthetic": "synthetic data",
        "Criteo": "Criteo data",
        "mixed": "synthetic and Criteo data",
    }.get(f["data"], "data source not recorded")
    if f["datasets"]:
        data += f" ({', '.join(f['datasets'])})"
    parts.append(data)
    if f["delay_kinds"]:
        how = f"; {_join_words(f['delay_modes'])}" if f["delay_modes"] else ""
        parts.append(f"injected delays (synthetic: {', '.join(f['delay_kinds'])}{how})")
    else:
        parts.append("no injected delays")
    return "; ".join(parts) + "."
