"""The run config of one inference launch: a dataclass, its validation, YAML and ``--set``
overrides, and the ``--help`` that lists every key.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bls_dlrm.series import BACKENDS, COLLECTIVES, Series, SeriesError

PLANS = ("contiguous", "balanced", "unbalanced", "hot")


BINDINGS = ("auto", "core", "none")


TRANSPORTS = ("p2p", "ialltoallv")


class ConfigError(ValueError):
    """A run configuration that cannot run; the message names the key."""


@dataclass
class ModelSpec:
    name: str = "tiny"  # a named config of bls_dlrm.model (tiny, kaggle, terabyte)
    max_rows: int | None = None  # cap on rows per table
    seed: int = 0  # weight seed


@dataclass
class RunConfig:
    """Everything one inference launch needs; every key can be overridden with ``--set``.

    ``bls-dlrm infer --help`` lists the keys with their choices (:data:`KEY_HELP`).
    """

    dataset: str = ""  # a dataset directory made by `bls-dlrm make-data` or `criteo`
    model: ModelSpec = field(default_factory=ModelSpec)
    plan: str = "contiguous"  # table placement (PLANS)
    collective: str = "bls"  # gloo, mpi or bls (the one series when `series` is not given)
    lag_bound: int = 0  # L for bls; must be 0 for the synchronous collectives
    series: list[str] | None = None  # several series in one launch, e.g. [gloo, mpi, "bls:4"]
    shuffle_seed: int = 0  # series order: default_rng(shuffle_seed + repetition)
    transport: str = "p2p"  # bls transport: p2p or ialltoallv
    timeout_s: float = 300.0  # a blocked exchange raises after this long
    delay: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})  # DelaySpec
    warmup: int = 2  # iterations run but not measured
    iterations: int = 20  # measured iterations
    threads: int = 1  # torch intra-op threads per rank
    binding: str = "auto"  # how the launcher placed ranks: core, none (auto: from affinity)
    verify_data: bool = True  # hash the dataset files on open
    repetition: int = 0  # repetition number (recorded; seeds the series order)
    run_id: str = ""  # default: the output folder's name
    tags: dict[str, Any] = field(default_factory=dict)  # free-form labels for the tables

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        data = dict(data)
        model = data.pop("model", {}) or {}
        if isinstance(model, str):
            model = {"name": model}
        _check_keys(model, ModelSpec, "model.")
        _check_keys(data, cls, "")
        cfg = cls(model=ModelSpec(**model), **data)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def series_list(self) -> list[Series]:
        """The series of this launch, in config order."""
        if self.series is None:
            return [Series(self.collective, self.lag_bound)]
        try:
            return [Series.parse(text) for text in self.series]
        except SeriesError as exc:
            raise ConfigError(str(exc)) from None

    def series_order(self) -> list[Series]:
        """The order the series run in: shuffled by ``shuffle_seed + repetition``."""
        series = self.series_list()
        rng = np.random.default_rng(self.shuffle_seed + self.repetition)
        return [series[k] for k in rng.permutation(len(series))]

    def validate(self) -> None:
        from bls_dlrm.delays import DelaySpec

        if not self.dataset:
            raise ConfigError("dataset: give the dataset directory (bls-dlrm make-data)")
        if self.collective not in COLLECTIVES:
            raise ConfigError(f"collective: {self.collective!r} is not one of {COLLECTIVES}")
        if self.plan not in PLANS:
            raise ConfigError(f"plan: {self.plan!r} is not one of {PLANS}")
        if not _is_int(self.lag_bound) or self.lag_bound < 0:
            raise ConfigError(f"lag_bound: must be an integer >= 0, got {self.lag_bound!r}")
        if self.collective != "bls" and self.lag_bound:
            raise ConfigError(f"lag_bound: {self.collective} is synchronous, lag_bound must be 0")
        if self.series is not None:
            if not isinstance(self.series, list) or not self.series:
                raise ConfigError(
                    f"series: a non-empty list like [gloo, mpi, 'bls:4'], got {self.series!r}"
                )
            labels = [s.folder for s in self.series_list()]
            twice = sorted({x for x in labels if labels.count(x) > 1})
            if twice:
                raise ConfigError(f"series: {twice[0]} is listed twice")
        for key in ("shuffle_seed", "repetition"):
            value = getattr(self, key)
            if not _is_int(value) or value < 0:
                raise ConfigError(f"{key}: must be an integer >= 0, got {value!r}")
        if self.transport not in TRANSPORTS:
            raise ConfigError(f"transport: {self.transport!r} is not p2p or ialltoallv")
        if self.binding not in BINDINGS:
            raise ConfigError(f"binding: {self.binding!r} is not one of {BINDINGS}")
        for key in ("warmup", "iterations", "threads"):
            value = getattr(self, key)
            if not _is_int(value) or value < (1 if key != "warmup" else 0):
                raise ConfigError(f"{key}: must be a positive integer, got {value!r}")
        if not isinstance(self.timeout_s, int | float) or not self.timeout_s > 0:
            raise ConfigError(f"timeout_s: must be positive, got {self.timeout_s!r}")
        if not isinstance(self.delay, dict):
            raise ConfigError(f"delay: must be a mapping (kind, size_s, ...), got {self.delay!r}")
        try:
            DelaySpec.from_dict(self.delay)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"delay: {exc}") from None
        try:
            self.model_config()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"model: {exc}") from None

    def model_config(self):
        from bls_dlrm.model import get_config

        overrides = {"seed": self.model.seed}
        if self.model.max_rows is not None:
            overrides["max_rows"] = self.model.max_rows
        return get_config(self.model.name, **overrides)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(data: dict[str, Any], cls: type, prefix: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text!r}: empty key")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_override(data: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    """Set ``data[k1][k2]...`` to ``value`` (an override's keys), making mappings on the way."""
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {text!r}: {k} is not a mapping")
    node[keys[-1]] = value


def read_config_file(path: str | Path | None) -> dict[str, Any]:
    """A YAML config file as a mapping ({} without a file); errors name the file."""
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of keys")
    return data


def config_from(data: dict[str, Any], overrides: list[str] = ()) -> RunConfig:
    """A run config from a mapping (not changed) and ``key=value`` overrides, validated."""
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value, text)
    try:
        return RunConfig.from_dict(data)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config, apply ``key=value`` overrides, validate."""
    return config_from(read_config_file(path), overrides)


def keys_help() -> str:
    """The run keys with their choices and defaults (the epilog of ``infer --help``)."""
    from bls_dlrm.delays import DISTRIBUTIONS, KINDS, MODES

    d = RunConfig()

    def join(xs) -> str:
        return ", ".join(xs)

    return f"""run keys (YAML file and/or --set KEY=VALUE, dotted for nested keys):
  dataset         dataset directory (bls-dlrm make-data or criteo); required
  model.name      tiny, kaggle or terabyte (default {d.model.name})
  model.max_rows  cap on rows per table (default: none)
  model.seed      weight seed (default {d.model.seed})
  plan            table placement: {join(PLANS)} (default {d.plan})
  series          series of this launch, a list of gloo, mpi, bls:L (L = lag bound >= 0),
                  e.g. [gloo, mpi, "bls:0", "bls:1", "bls:4"]; logs go to OUT/<label>/
                  (labels gloo, mpi, bls-L4). Default: the one series collective/lag_bound,
                  logs in OUT
  collective      {join(COLLECTIVES)} (default {d.collective}): torch.distributed backends
                  {join(BACKENDS[c] for c in COLLECTIVES)}; used when series is not given
  lag_bound       L >= 0 for bls, 0 for gloo and mpi (default {d.lag_bound})
  shuffle_seed    seed of the series order, default_rng(shuffle_seed + repetition)
                  (default {d.shuffle_seed})
  repetition      repetition number, >= 0 (default {d.repetition})
  transport       bls transport: {join(TRANSPORTS)} (default {d.transport})
  timeout_s       seconds before a blocked exchange raises (default {d.timeout_s:g})
  delay.kind      {join(KINDS)} (default none)
  delay.mode      {join(MODES)}: compute on the rank's core or sleep (default busy)
  delay.size_s    delay in seconds; delay.seed, delay.ranks (straggler), delay.p,
                  delay.distribution ({join(DISTRIBUTIONS)}), delay.sigma (random),
                  delay.factors (heterogeneous), delay.path (trace .npy/.csv)
  warmup          unmeasured iterations (default {d.warmup})
  iterations      measured iterations (default {d.iterations})
  threads         torch threads per rank (default {d.threads})
  binding         how the launcher placed ranks: {join(BINDINGS)} (default {d.binding}:
                  "core" when this rank may run on one core only); launch with
                  mpiexec -bind-to core
  verify_data     hash the dataset files on open (default {str(d.verify_data).lower()})
  run_id, tags    labels for the tables
"""


def add_config_arguments(p: argparse.ArgumentParser, config_help: str, out_help: str) -> None:
    """``--config FILE``, ``--set KEY=VALUE`` (repeatable) and ``--out DIR``."""
    p.add_argument("--config", type=Path, help=config_help)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted for nested, value as YAML)",
    )
    p.add_argument("--out", type=Path, required=True, help=out_help)
