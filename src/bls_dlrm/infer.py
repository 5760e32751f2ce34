"""One rank's distributed DLRM inference loop: where the model meets the collective.

``mpiexec -n P bls-dlrm infer --config run.yaml [--set key=value ...] --out RUN_DIR``

Model-parallel tables, data-parallel MLPs (DESIGN.md, "DLRM inference"): rank ``r`` holds
the tables its sharding plan gives it and looks them up for the *global* batch; the
alltoallv hands every rank its batch slice of every table; each rank then runs the bottom
MLP, the interaction and the top MLP on its own slice. Per iteration ``i``::

    delay(i) -> lookup(i) -> post(i) -> bottom MLP(i) -> complete what the lag bound
    requires (exchange i - L) and, without waiting, any later exchange whose data is
    already here -> interaction + top MLP for each completed one -> predictions

and all exchanges still in flight are completed at the end (drain). With ``L = 0`` this is
the reference DLRM's synchronous exchange overlapped with the bottom MLP.

The injected delay is extra local work at the start of the iteration, before the lookups
(one documented point, logged as ``delay_s``). Warm-up iterations run the same loop but are
flagged in the log and left out of every measure. When a run asks for more iterations than
the dataset holds batches, batches are reused cyclically.

Each rank writes ``RUN_DIR/rank{r}.jsonl`` (:mod:`bls_dlrm.records`), with a checksum of its
predictions per iteration: equal checksums across collectives and lag bounds are the
bit-identity that the tests assert.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

COLLECTIVES = ("gloo", "mpi", "bls")
PLANS = ("contiguous", "balanced", "unbalanced")


class ConfigError(ValueError):
    """A run configuration that cannot run; the message names the key."""


@dataclass
class ModelSpec:
    name: str = "tiny"  # a named config of bls_dlrm.model (tiny, kaggle, terabyte)
    max_rows: int | None = None  # cap on rows per table
    seed: int = 0  # weight seed


@dataclass
class RunConfig:
    """Everything one inference run needs; every key can be overridden with ``--set``."""

    dataset: str = ""  # a dataset directory made by `bls-dlrm make-data` or `criteo`
    model: ModelSpec = field(default_factory=ModelSpec)
    plan: str = "contiguous"  # table placement: contiguous, balanced, unbalanced
    collective: str = "bls"  # gloo, mpi or bls
    lag_bound: int = 0  # L for bls; must be 0 for the synchronous collectives
    transport: str = "p2p"  # bls transport: p2p or ialltoallv
    timeout_s: float = 300.0  # a blocked exchange raises after this long
    delay: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})  # DelaySpec
    warmup: int = 2  # iterations run but not measured
    iterations: int = 20  # measured iterations
    threads: int = 1  # torch intra-op threads per rank
    verify_data: bool = True  # hash the dataset files on open
    repetition: int = 0  # repetition number (recorded; no effect on the run)
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

    def validate(self) -> None:
        from .delays import DelaySpec

        if not self.dataset:
            raise ConfigError("dataset: give the dataset directory (bls-dlrm make-data)")
        if self.collective not in COLLECTIVES:
            raise ConfigError(f"collective: {self.collective!r} is not one of {COLLECTIVES}")
        if self.plan not in PLANS:
            raise ConfigError(f"plan: {self.plan!r} is not one of {PLANS}")
        if not isinstance(self.lag_bound, int) or self.lag_bound < 0:
            raise ConfigError(f"lag_bound: must be an integer >= 0, got {self.lag_bound!r}")
        if self.collective != "bls" and self.lag_bound:
            raise ConfigError(f"lag_bound: {self.collective} is synchronous, lag_bound must be 0")
        if self.transport not in ("p2p", "ialltoallv"):
            raise ConfigError(f"transport: {self.transport!r} is not p2p or ialltoallv")
        for key in ("warmup", "iterations", "threads"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < (1 if key != "warmup" else 0):
                raise ConfigError(f"{key}: must be a positive integer, got {value!r}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s: must be positive, got {self.timeout_s!r}")
        try:
            DelaySpec.from_dict(self.delay)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"delay: {exc}") from None
        try:
            self.model_config()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"model: {exc}") from None

    def model_config(self):
        from .model import get_config

        overrides = {"seed": self.model.seed}
        if self.model.max_rows is not None:
            overrides["max_rows"] = self.model.max_rows
        return get_config(self.model.name, **overrides)


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


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config, apply ``key=value`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"--config {path}: no such file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--config {path}: expected a mapping of keys")
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {k} is not a mapping")
        node[keys[-1]] = value
    try:
        return RunConfig.from_dict(data)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


# -- the loop ----------------------------------------------------------------------------


def batch_slices(batch_size: int, ranks: int) -> list[tuple[int, int]]:
    """Contiguous sample ranges, one per rank, sizes differing by at most one."""
    if batch_size < ranks:
        raise ConfigError(f"batch size {batch_size} is smaller than the {ranks} ranks")
    base, extra = divmod(batch_size, ranks)
    bounds, start = [], 0
    for r in range(ranks):
        stop = start + base + (r < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def checksum(predictions) -> str:
    """Hex digest of the prediction bytes (float32, C order)."""
    return hashlib.blake2b(predictions.numpy().tobytes(), digest_size=16).hexdigest()


@dataclass
class _Pending:
    iteration: int
    exchange: Any
    bottom: Any
    t_start: float
    t_lookup: float
    t_posted: float
    t_bottom: float
    delay_s: float
    compute_s: float


def run(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    predictions_out: str | Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run inference on this rank (under mpiexec); returns this rank's footer as a dict."""
    import torch
    from mpi4py import MPI

    from . import records
    from .comm import init_torch, make_collective
    from .data import BatchStore
    from .delays import DelaySpec, inject
    from .model import DenseModel, EmbeddingShard, plan_shards

    torch.set_num_threads(cfg.threads)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    mcfg = cfg.model_config()
    store = BatchStore(cfg.dataset, expect_config=mcfg, verify=cfg.verify_data and rank == 0)
    plan = plan_shards(list(mcfg.rows), size, cfg.plan)
    mine = plan[rank]
    shard = EmbeddingShard(mcfg, mine)
    dense_model = DenseModel(mcfg)
    d = mcfg.embedding_dim
    slices = batch_slices(store.batch_size, size)
    lo, hi = slices[rank]
    n_mine = hi - lo
    send_counts = [(b - a) * len(mine) for a, b in slices]
    recv_counts = [n_mine * len(tables) for tables in plan]
    table_counts = [len(tables) for tables in plan]

    def received_parts(recv):
        """The exchange's peer blocks as (table ids, (n_mine, |T_p|, d)) for ``top``."""
        blocks = recv.split(recv_counts)
        return [
            (tables, block.view(n_mine, k, d))
            for tables, block, k in zip(plan, blocks, table_counts, strict=True)
        ]

    total = cfg.warmup + cfg.iterations
    delays = DelaySpec.from_dict(cfg.delay).schedule(size, total)

    if cfg.collective == "gloo":
        init_torch("gloo")
    coll = make_collective(
        cfg.collective, cfg.lag_bound, timeout=cfg.timeout_s, transport=cfg.transport
    )
    run_id = cfg.run_id or Path(out_dir).name
    config_dict = cfg.to_dict() | {
        "ranks": size,
        "batch_size": store.batch_size,
        "plan_tables": plan,
    }
    lag = cfg.lag_bound if cfg.collective == "bls" else 0
    comm.Barrier()
    header = records.Header.new(
        run_id=run_id,
        rank=rank,
        world_size=size,
        collective=cfg.collective,
        lag_bound=lag,
        config=config_dict,
    )
    preds_kept = [] if predictions_out is not None else None
    bar = _progress(rank, total, progress)
    pending: list[_Pending] = []

    def finish(done_exchanges, writer) -> None:
        for ex in done_exchanges:
            p = pending.pop(0)
            assert p.exchange is ex
            t0 = time.monotonic()
            preds = dense_model.top(p.bottom, received_parts(ex.recv))
            t_done = time.monotonic()
            if preds_kept is not None:
                preds_kept.append(preds.clone())
            writer.write(
                records.Iteration(
                    iteration=p.iteration,
                    warmup=p.iteration < cfg.warmup,
                    samples=n_mine,
                    t_start=p.t_start,
                    t_lookup=p.t_lookup,
                    t_posted=p.t_posted,
                    t_bottom=p.t_bottom,
                    t_completed=ex.stats.t_complete,
                    t_done=t_done,
                    wait_s=ex.stats.wait_s,
                    delay_s=p.delay_s,
                    compute_s=p.compute_s + (t_done - t0),
                    lag=ex.stats.lag,
                    checksum=checksum(preds),
                )
            )
            if bar is not None:
                bar.update(1)
                elapsed = bar.format_dict["elapsed"]
                if elapsed > 0:  # the whole batch, all ranks: rank 0's view of the rate
                    bar.set_postfix_str(f"{bar.n * store.batch_size / elapsed:,.0f} samples/s")

    with torch.inference_mode(), records.RunLogWriter(out_dir, header) as writer:
        for i in range(total):
            t_start = time.monotonic()
            delay_s = inject(delays[rank, i]) if delays[rank, i] > 0 else 0.0
            t_work = time.monotonic()
            batch = store.batch(i % store.num_batches)
            embedded = shard.lookup(batch.sparse)  # (B, len(mine), d)
            t_lookup = time.monotonic()
            ex = coll.post(embedded.view(-1, d), send_counts, recv_counts)
            t_posted = ex.stats.t_posted  # a synchronous collective completes inside post
            t_bottom_start = time.monotonic()
            bottom = dense_model.bottom(batch.dense[lo:hi])
            t_bottom = time.monotonic()
            compute = (t_lookup - t_work) + (t_bottom - t_bottom_start)
            pending.append(
                _Pending(i, ex, bottom, t_start, t_lookup, t_posted, t_bottom, delay_s, compute)
            )
            # what the lag bound requires, then whatever has already arrived (never waits)
            finish(coll.trim() + coll.poll(), writer)
        finish(coll.drain(), writer)
        footer = writer.close()
    coll.close()
    if cfg.collective == "gloo":
        import torch.distributed as dist

        dist.destroy_process_group()
    if bar is not None:
        bar.close()
    if preds_kept is not None:
        out = Path(predictions_out)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / f"preds_rank{rank}.npy", torch.stack(preds_kept).numpy())
    return {"footer": str(footer)}


def _progress(rank: int, total: int, enabled: bool | None):
    if rank != 0:
        return None
    from tqdm import tqdm

    disable = None if enabled is None else not enabled  # None: only on a terminal
    return tqdm(total=total, desc="infer", unit="it", disable=disable, file=sys.stderr)


# -- command line ------------------------------------------------------------------------


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="bls-dlrm infer", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", type=Path, help="YAML run config (keys: see RunConfig)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted for nested, value as YAML)",
    )
    p.add_argument("--out", type=Path, required=True, help="run folder for the logs")
    p.add_argument("--predictions", type=Path, help="also save predictions (.npy per rank)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on rank 0 (default: only on a terminal)",
    )
    return p


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    args = args or build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:  # before any MPI work: every rank says the same, rank 0 prints
        _say_once(f"bls-dlrm infer: bad config: {exc}")
        return 2
    run(cfg, args.out, predictions_out=args.predictions, progress=args.progress)
    return 0


def _say_once(message: str) -> None:
    import os

    if os.environ.get("PMI_RANK", "0") == "0":
        print(message, file=sys.stderr)
