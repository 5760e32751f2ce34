"""The test protocol (``config/protocol.yaml``): read, validated, and queried.

What each claim is judged on (workloads, metric, lag bound, threshold, repetitions) comes
only from this file, checked against ``workflow/schemas/protocol.schema.yaml``; claims and
figures read it through here, so a threshold drawn on a figure is the one judged.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from typing import Any

import yaml

from bls_dlrm.analysis.compare import BOOTSTRAP_SEED, CONFIDENCE
from bls_dlrm.paths import PROTOCOL, PROTOCOL_SCHEMA, project_path

RATIO_METRICS = ("throughput_ratio", "ideal_fraction", "prediction_ratio")


#: Metrics of the serving sweep (serving.parquet, capacity.parquet: bls_dlrm.run.serving).
SERVING_METRICS = ("capacity_ratio", "p99_gain")


class ProtocolError(ValueError):
    """The protocol file is missing, unreadable or breaks its schema (message names the key)."""


def _key_path(parts: Sequence[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def load_protocol(
    path: str | os.PathLike[str] | None = None, schema: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Read and validate the protocol; :class:`ProtocolError` names the file and key.

    The result carries two extra keys: ``_path`` (the file) and ``_sha256`` (its digest,
    quoted in the claims table so a changed protocol is visible).
    """
    import jsonschema

    p = project_path(path if path is not None else PROTOCOL)
    s = project_path(schema if schema is not None else PROTOCOL_SCHEMA)
    try:
        raw = p.read_bytes()
        data = yaml.safe_load(raw)
    except OSError as exc:
        raise ProtocolError(f"{p}: cannot read the protocol: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ProtocolError(f"{p}: not valid YAML: {exc}") from exc
    try:
        schema_doc = yaml.safe_load(s.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ProtocolError(f"{s}: cannot read the protocol schema: {exc}") from exc
    validator = jsonschema.Draft202012Validator(schema_doc)
    errors = list(validator.iter_errors(data))
    if errors:
        # The deepest key is the most specific one to name (an unknown op, not "its parent
        # then lacks a value").
        depth = max(len(e.absolute_path) for e in errors)
        err = jsonschema.exceptions.best_match(e for e in errors if len(e.absolute_path) == depth)
        raise ProtocolError(f"{p}: {_key_path(list(err.absolute_path))}: {err.message}")
    stress = set(data.get("stress_workloads") or ())
    for group in ("claims", "checks"):
        for i, entry in enumerate(data.get(group) or ()):
            names = entry.get("workloads")
            timed = (*RATIO_METRICS, *SERVING_METRICS)
            if entry.get("metric") in timed and isinstance(names, list):
                bad = sorted(stress & set(names))
                if bad:
                    raise ProtocolError(
                        f"{p}: {group}[{i}].workloads: {bad} are stress_workloads, "
                        "which no timing claim or check may be judged on"
                    )
    macros = [e["macro"] for g in ("claims", "checks") for e in data.get(g) or ()]
    dup = sorted({m for m in macros if macros.count(m) > 1})
    if dup:
        raise ProtocolError(f"{p}: macro stems must be unique, repeated: {dup}")
    data["_path"] = str(p)
    data["_sha256"] = hashlib.sha256(raw).hexdigest()
    return data


def figure_protocol(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The claims protocol (``config/protocol.yaml``), as :mod:`bls_dlrm.analysis.claims` reads it.

    Uses the claims module's own loader when it has one (so figures and the claims table
    read the same validated file; an invalid one raises), else parses the YAML. An absent
    file gives ``{}``: a figure then draws no threshold rather than one written into the
    notebook.
    """
    file = project_path(path or PROTOCOL)
    if not file.is_file():
        return {}
    return dict(load_protocol(file))


def protocol_claims(
    protocol: dict[str, Any], figure: str | None = None, metric: str | None = None
) -> list[dict[str, Any]]:
    """The claims and checks of a protocol (optionally: drawn on ``figure``, judged on
    ``metric``) that have a threshold."""
    entries = [*protocol.get("claims", []), *protocol.get("checks", [])]
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or "threshold" not in entry:
            continue
        if figure is not None and entry.get("figure") != figure:
            continue
        if metric is not None and entry.get("metric") != metric:
            continue
        out.append(entry)
    return out


def interval_settings(protocol: dict[str, Any]) -> dict[str, Any]:
    """``confidence``, ``seed`` and ``n_resamples`` of the protocol's ``statistics``
    section (defaults where absent), as keywords of :func:`speedup_intervals`."""
    stats = protocol.get("statistics") or {}
    return {
        "confidence": float(stats.get("confidence", CONFIDENCE)),
        "seed": int(stats.get("seed", BOOTSTRAP_SEED)),
        "n_resamples": int(stats["n_resamples"]) if "n_resamples" in stats else None,
    }


def threshold_text(threshold: dict[str, Any]) -> str:
    """``> 1.8x``, ``>= 0.9``, ``within 0.95-1.05``: a threshold spec for a legend."""
    op = threshold.get("op")
    if op == "within":
        return f"within {threshold['low']:g}-{threshold['high']:g}"
    return f"{op} {threshold.get('value', math.nan):g}"
