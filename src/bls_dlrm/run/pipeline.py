"""The distributed inference pipeline of one rank: the context built once per launch (model
parts, shards, dataset, process groups), the per-iteration pipeline that posts, waits and
finishes exchanges within the lag bound, and one series' run with its log. The closed
loop (:mod:`bls_dlrm.run.infer`) and the open loop (:mod:`bls_dlrm.run.serve`) drive it.
"""

from __future__ import annotations

import gc
import hashlib
import os
import socket
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bls_dlrm.run.config import ConfigError, RunConfig
from bls_dlrm.series import Series


def batch_slices(batch_size: int, ranks: int, allow_empty: bool = False) -> list[tuple[int, int]]:
    """Contiguous sample ranges, one per rank, sizes differing by at most one.

    A batch smaller than the rank count is refused unless ``allow_empty`` (the serving loop,
    whose batches follow the arrivals): the last ranks then get empty slices.
    """
    if batch_size < ranks and not allow_empty:
        raise ConfigError(f"batch size {batch_size} is smaller than the {ranks} ranks")
    base, extra = divmod(batch_size, ranks)
    bounds, start = [], 0
    for r in range(ranks):
        stop = start + base + (r < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def checksum(predictions) -> str:
    """Hex digest (blake2b, 16 bytes) of the prediction bytes (float32, C order)."""
    return hashlib.blake2b(predictions.numpy().tobytes(), digest_size=16).hexdigest()


def placement(binding: str = "auto") -> dict[str, Any]:
    """Where this rank runs: host, its cores (affinity), their number and the binding.

    ``binding="auto"`` reads it off the affinity: a rank allowed on exactly one core of a
    machine with more is bound ("core"), otherwise "none".
    """
    cores = sorted(os.sched_getaffinity(0))
    if binding == "auto":
        binding = "core" if len(cores) == 1 and (os.cpu_count() or 1) > 1 else "none"
    return {
        "host": socket.gethostname(),
        "cores": cores,
        "cores_per_rank": len(cores),
        "binding": binding,
    }


def table_costs(store) -> list[float]:
    """Expected lookups per batch of every table (mean over the dataset's batches).

    A pure function of the data, so every rank computes the same costs and plan.
    """
    total = np.zeros(store.num_tables, dtype=np.float64)
    for b in range(store.num_batches):
        total += store.numpy_batch(b)[1].sum(axis=1, dtype=np.int64)
    return list(total / max(store.num_batches, 1))


@dataclass
class _Pending:
    iteration: int
    layout: _Layout  # the batch's slices and exchange counts
    work: Any  # the torch.distributed Work of the exchange
    recv: Any  # its output tensor
    send: Any  # its input tensor (kept alive until the Work is finished)
    bottom: Any
    t_start: float
    t_lookup: float
    t_posted: float
    t_bottom: float
    delay_s: float
    compute_s: float
    t_close: float | None  # open loop: when the batch closed (its queries were all in)


@dataclass(frozen=True)
class _Layout:
    """Who holds what of a global batch of ``batch_size`` samples: this rank's slice and the
    exchange's element counts (rows of ``d`` floats), per peer."""

    batch_size: int
    lo: int
    hi: int
    send_counts: list[int]
    recv_counts: list[int]

    @property
    def n_mine(self) -> int:
        return self.hi - self.lo

    @property
    def recv_rows(self) -> int:
        return sum(self.recv_counts)


def _new_group(series: Series, cfg: RunConfig):
    """The process group of one series (collective on every rank, same order)."""
    from datetime import timedelta

    import torch.distributed as dist

    from bls_dlrm.comm import BLSOptions

    timeout = timedelta(seconds=cfg.timeout_s)
    if series.collective == "bls":
        options = BLSOptions(
            lag_bound=series.lag_bound, timeout_s=cfg.timeout_s, transport=cfg.transport
        )
        return dist.new_group(backend=series.backend, timeout=timeout, pg_options=options)
    return dist.new_group(backend=series.backend, timeout=timeout)


def make_context(cfg: RunConfig, total: int) -> _Context:
    """What every series of a launch shares, built once on this rank (under mpiexec):
    data, shards, model, the delay schedule of ``total`` iterations, placement, versions."""
    import torch
    from mpi4py import MPI

    from bls_dlrm.data import BatchStore
    from bls_dlrm.delays import DelaySpec
    from bls_dlrm.logs import provenance
    from bls_dlrm.model import DenseModel, EmbeddingShard, plan_shards

    torch.set_num_threads(cfg.threads)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    mcfg = cfg.model_config()
    store = BatchStore(cfg.dataset, expect_config=mcfg, verify=cfg.verify_data and rank == 0)
    costs = table_costs(store) if cfg.plan == "hot" else None
    plan = plan_shards(list(mcfg.rows), size, cfg.plan, costs=costs)
    delay_spec = DelaySpec.from_dict(cfg.delay)
    return _Context(
        cfg=cfg,
        rank=rank,
        size=size,
        store=store,
        plan=plan,
        shard=EmbeddingShard(mcfg, plan[rank]),
        dense_model=DenseModel(mcfg),
        delays=delay_spec.schedule(size, total),
        delay_mode=delay_spec.mode,
        place=placement(cfg.binding),
        embedding_dim=mcfg.embedding_dim,
        # Asked once per launch, not once per series: git runs two subprocesses.
        versions=provenance.runtime_versions(),
        git_rev=provenance.git_revision(),
    )


def open_groups(cfg: RunConfig, series: list[Series]):
    """One process group per series (labels deduplicated, created in list order on every
    rank), the default group first if none exists: ``(groups by label, close)``."""
    from datetime import timedelta

    import torch.distributed as dist

    from bls_dlrm import comm as _comm  # noqa: F401  (registers the backends bls and mpisync)

    own_default = not dist.is_initialized()
    if own_default:
        dist.init_process_group("gloo", timeout=timedelta(seconds=cfg.timeout_s))
    groups = {}
    for s in series:
        if s.folder not in groups:
            groups[s.folder] = _new_group(s, cfg)

    def close() -> None:
        if own_default:
            dist.destroy_process_group()
        else:
            for group in groups.values():
                dist.destroy_process_group(group)

    return groups, close


@dataclass
class _Context:
    """What every series of a launch shares: config, data, shards, model, delays, place."""

    cfg: RunConfig
    rank: int
    size: int
    store: Any
    plan: list[list[int]]
    shard: Any
    dense_model: Any
    delays: np.ndarray
    delay_mode: str
    place: dict[str, Any]
    embedding_dim: int
    versions: dict[str, Any]
    git_rev: str | None
    allow_empty: bool = False  # batches smaller than the rank count (serving)


class Pipeline:
    """One series on one rank: post iterations, finish them in order under the lag bound.

    :meth:`post` runs an iteration's first half (delay, lookups, the exchange posted async,
    bottom MLP); :meth:`bound` then waits the oldest exchanges while more than ``L`` are in
    flight and finishes, without waiting, every later one that has already arrived
    (interaction, top MLP, log record). The closed loop (:func:`run_series`) and the open
    serving loop (:mod:`bls_dlrm.run.serve`) are this same pipeline fed differently.
    """

    def __init__(self, ctx: _Context, series: Series, group, writer, preds_kept, bar) -> None:
        self.ctx, self.series, self.group, self.writer = ctx, series, group, writer
        self.preds_kept, self.bar = preds_kept, bar
        self.pending: deque[_Pending] = deque()
        self._layouts: dict[int, _Layout] = {}
        self.last_work = None  # the Work of the last finished iteration
        #: (t_start, t_done, work) of every finished iteration, by iteration number; work
        #: is its local compute plus injected delay (waits excluded), as theory.py takes it
        self.times: dict[int, tuple[float, float, float]] = {}

    def layout(self, batch_size: int) -> _Layout:
        """The slices and counts of a global batch of ``batch_size`` samples (cached)."""
        layout = self._layouts.get(batch_size)
        if layout is None:
            ctx = self.ctx
            slices = batch_slices(batch_size, ctx.size, allow_empty=ctx.allow_empty)
            lo, hi = slices[ctx.rank]
            mine = ctx.plan[ctx.rank]
            layout = _Layout(
                batch_size=batch_size,
                lo=lo,
                hi=hi,
                send_counts=[(b - a) * len(mine) for a, b in slices],
                recv_counts=[(hi - lo) * len(tables) for tables in ctx.plan],
            )
            self._layouts[batch_size] = layout
        return layout

    def post(self, i: int, batch, *, t_close: float | None = None) -> None:
        """Iteration ``i`` on ``batch`` (the global batch): delay, lookups, exchange posted
        asynchronously, bottom MLP; it joins the pending iterations."""
        import torch
        import torch.distributed as dist

        from bls_dlrm.delays import inject

        ctx = self.ctx
        d = ctx.embedding_dim
        t_start = time.monotonic()
        planned = ctx.delays[ctx.rank, i]
        delay_s = inject(planned, ctx.delay_mode) if planned > 0 else 0.0
        t_work = time.monotonic()
        layout = self.layout(batch.sparse.batch_size)
        send = ctx.shard.lookup(batch.sparse).view(-1, d)  # (B * len(mine), d)
        t_lookup = time.monotonic()
        recv = torch.empty((layout.recv_rows, d), dtype=send.dtype)
        work = dist.all_to_all_single(
            recv, send, layout.recv_counts, layout.send_counts, group=self.group, async_op=True
        )
        t_posted = time.monotonic()
        bottom = ctx.dense_model.bottom(batch.dense[layout.lo : layout.hi])
        t_bottom = time.monotonic()
        compute = (t_lookup - t_work) + (t_bottom - t_posted)
        self.pending.append(
            _Pending(
                i, layout, work, recv, send, bottom, t_start, t_lookup, t_posted, t_bottom,
                delay_s, compute, t_close,
            )
        )  # fmt: skip

    def bound(self) -> None:
        """Enforce the lag bound: wait the oldest while more than L are in flight, then
        finish every exchange that has already arrived."""
        while len(self.pending) > self.series.lag_bound:
            self.finish(self.pending.popleft(), True)
        self.finish_arrived()

    def finish_arrived(self) -> None:
        """Finish, in order and without waiting, the exchanges that have already arrived."""
        while self.pending and self.pending[0].work.is_completed():
            self.finish(self.pending.popleft(), False)

    def progress(self) -> None:
        """:meth:`finish_arrived`, and with nothing pending, a progress call on the group all
        the same (``is_completed`` of the last finished Work: every call into a "bls"
        group drives its messages). A BLS exchange completes when its data has *arrived*;
        its sends may still need this rank's progress (a large message leaves only when
        its receiver has asked for it), so an idle rank that made no call would hold its
        peers back until its next batch. A no-op for the other backends."""
        self.finish_arrived()
        if not self.pending and self.last_work is not None:
            self.last_work.is_completed()

    def drain(self) -> None:
        while self.pending:
            self.finish(self.pending.popleft(), True)

    def finish(self, p: _Pending, block: bool) -> None:
        """Complete ``p`` (waiting if ``block``), then its top MLP and log record."""
        from bls_dlrm.logs import records

        ctx = self.ctx
        t0 = time.monotonic()
        wait_s, lag = 0.0, 0
        if block and not p.work.is_completed():
            # blocked: this rank is ahead of some peer by the exchanges it has in flight
            lag = len(self.pending) + 1
            p.work.wait()
            wait_s = time.monotonic() - t0
        else:
            p.work.wait()  # already complete: returns at once, releases the buffers
        t_completed = time.monotonic()
        self.last_work = p.work
        # Diagnostics only: a backend whose Work carries its own exchange statistics (bls)
        # knows the true lag behind the slowest peer; other backends log the loop's view.
        stats = getattr(getattr(p.work, "exchange", None), "stats", None)
        if stats is not None and wait_s > 0:
            lag = int(getattr(stats, "lag", lag))
        t1 = time.monotonic()
        preds = ctx.dense_model.top(p.bottom, self._received_parts(p))
        t_done = time.monotonic()
        compute_s = p.compute_s + (t_done - t1)
        self.times[p.iteration] = (p.t_start, t_done, compute_s + p.delay_s)
        if self.preds_kept is not None:
            self.preds_kept.append(preds.clone())
        self.writer.write(
            records.Iteration(
                iteration=p.iteration,
                warmup=p.iteration < ctx.cfg.warmup,
                samples=p.layout.n_mine,
                t_start=p.t_start,
                t_lookup=p.t_lookup,
                t_posted=p.t_posted,
                t_bottom=p.t_bottom,
                t_completed=t_completed,
                t_done=t_done,
                wait_s=wait_s,
                delay_s=p.delay_s,
                compute_s=compute_s,
                lag=lag,
                checksum=checksum(preds),
                t_close=p.t_close,
                batch_samples=p.layout.batch_size if p.t_close is not None else None,
            )
        )
        bar = self.bar
        if bar is not None:
            bar.update(1)
            elapsed = bar.format_dict["elapsed"]
            if elapsed > 0:  # the whole batch, all ranks: rank 0's view of the rate
                bar.set_postfix_str(f"{bar.n * p.layout.batch_size / elapsed:,.0f} samples/s")

    def _received_parts(self, p: _Pending):
        """The exchange's peer blocks as (table ids, (n_mine, |T_p|, d)) for ``top``."""
        ctx = self.ctx
        blocks = p.recv.split(p.layout.recv_counts)
        return [
            (tables, block.view(p.layout.n_mine, len(tables), ctx.embedding_dim))
            for tables, block in zip(ctx.plan, blocks, strict=True)
        ]


def series_header(
    ctx: _Context,
    series: Series,
    out_dir: Path,
    order,
    index,
    t_origin=None,
    clock_sync=None,
    **extra,
):
    """The log header of one series on this rank (``extra``: more config keys;
    ``clock_sync``: the offset to rank 0's clock, :func:`bls_dlrm.logs.clocks.measure`)."""
    from bls_dlrm.logs import records

    cfg = ctx.cfg
    config_dict = (
        cfg.to_dict()
        | {
            "collective": series.collective,
            "lag_bound": series.lag_bound,
            "ranks": ctx.size,
            "batch_size": ctx.store.batch_size,
            "plan_tables": ctx.plan,
            "series_label": series.folder,
            "backend": series.backend,
        }
        | extra
    )
    return records.Header.new(
        run_id=(cfg.run_id + ("-" + series.folder if cfg.series is not None else ""))
        if cfg.run_id
        else out_dir.name,
        rank=ctx.rank,
        world_size=ctx.size,
        collective=series.collective,
        lag_bound=series.lag_bound,
        config=config_dict,
        host=ctx.place["host"],
        versions=ctx.versions,
        git_rev=ctx.git_rev,
        series_order=[s.folder for s in order],
        series_index=index,
        shuffle_seed=cfg.shuffle_seed,
        cores=ctx.place["cores"],
        cores_per_rank=ctx.place["cores_per_rank"],
        binding=ctx.place["binding"],
        t_origin=t_origin,
        clock_sync=clock_sync,
    )


def save_predictions(preds_kept, predictions_out: Path | None, rank: int, stack=True) -> None:
    """``preds_rank{r}.npy``: one row per iteration (``stack``), else every sample in order."""
    if preds_kept is None or predictions_out is None:
        return
    import torch

    predictions_out.mkdir(parents=True, exist_ok=True)
    joined = torch.stack(preds_kept) if stack else torch.cat(preds_kept)
    np.save(predictions_out / f"preds_rank{rank}.npy", joined.numpy())


@contextmanager
def gc_paused():
    """No automatic garbage collection inside a timed loop: collect now, then leave it to
    reference counting until the loop ends, and restore the collector.

    Python's full collections pause a rank for a time that grows with its heap: measured
    in one serving launch, 15, 37, 63 and 97 ms as the launch went on. A pause lands on
    whichever series runs at that moment (the later in a launch, the longer), a noise
    that has nothing to do with the collective measured. Cyclic garbage of one run waits
    for the end of that run, which is bounded by its iterations.
    """
    gc.collect()
    gc.freeze()  # survivors (imports, model, data) are never scanned again
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_series(
    ctx: _Context,
    series: Series,
    group,
    out_dir: Path,
    predictions_out: Path | None,
    order: list[Series],
    index: int,
    progress: bool | None,
    times: dict[int, tuple[float, float, float]] | None = None,
) -> Path:
    """The closed loop: every iteration starts as soon as the lag bound lets it.

    ``times``, if given, receives every iteration's (t_start, t_done, work)."""
    import torch
    from mpi4py import MPI

    from bls_dlrm.logs import clocks
    from bls_dlrm.logs import writer as writer_mod

    cfg, store = ctx.cfg, ctx.store
    total = cfg.warmup + cfg.iterations
    clock_sync = clocks.measure(MPI.COMM_WORLD)  # offsets to rank 0's clock, before the run
    header = series_header(ctx, series, out_dir, order, index, clock_sync=clock_sync)
    preds_kept = [] if predictions_out is not None else None
    bar = _progress(ctx.rank, total, progress, series.folder)
    with gc_paused(), torch.inference_mode(), writer_mod.RunLogWriter(out_dir, header) as writer:
        pipe = Pipeline(ctx, series, group, writer, preds_kept, bar)
        for i in range(total):
            pipe.post(i, store.batch(i % store.num_batches))
            pipe.bound()
        pipe.drain()
        footer = writer.close(clock_sync=clocks.measure(MPI.COMM_WORLD))  # and after it
    if bar is not None:
        bar.close()
    save_predictions(preds_kept, predictions_out, ctx.rank)
    if times is not None:
        times.update(pipe.times)
    return footer


def _progress(rank: int, total: int, enabled: bool | None, label: str = "infer"):
    if rank != 0:
        return None
    from tqdm import tqdm

    disable = None if enabled is None else not enabled  # None: only on a terminal
    return tqdm(total=total, desc=label, unit="it", disable=disable, file=sys.stderr)


def say_once(message: str) -> None:
    import os

    if os.environ.get("PMI_RANK", "0") == "0":
        print(message, file=sys.stderr)
