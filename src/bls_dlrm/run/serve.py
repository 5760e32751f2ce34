"""Serving: query latency under an offered load, and the capacity each series sustains.

``mpiexec -bind-to core -n P bls-dlrm serve --config run.yaml --out OUT [--rate Q | --loads
F,F,...] [--find-capacity --slo-ms X --percentile 99]``

The closed loop of :mod:`bls_dlrm.run.infer` starts every batch as soon as the lag bound lets
it, so its per-batch latency grows with the lag bound by construction. Here batches follow
arrivals instead (:mod:`bls_dlrm.run.serving`): after a synchronised start, a rank starts
batch ``i`` no earlier than the batch's close time, then runs the same pipeline as the
closed loop (:class:`bls_dlrm.run.infer.Pipeline`: lookups, the exchange posted through
``torch.distributed``, bottom MLP, complete as the lag bound requires, top MLP). While it
waits for a batch to close it finishes the exchanges that arrive meanwhile, so a finished
batch's predictions never wait for the next arrival (and it keeps calling into the
group, sleeping ``POLL_S`` between calls, so its own sends leave while it idles).

One launch, every series of the run config (shuffled per load, like the closed loop):

1. **Calibration** (``serve.reference``: a series, or a list of candidates): the
   closed-loop throughput of each over ``calibrate_iterations`` full batches, in queries/s
   of the mean query size. The highest is the reference capacity that ``loads`` are
   fractions of, and its series the reference (with ``serve_reference``, it is also served:
   "the best synchronous series", chosen by a rule fixed before the loads run).
2. **Loads**: for every offered rate (``rates``, or ``loads`` x the reference capacity) and
   series, an open-loop run of ``duration_s`` seconds of arrivals. Each logs to
   ``OUT/<series>/load~<k>/rank{r}.jsonl`` (iteration records with ``t_close`` and
   ``batch_samples``); rank 0 writes its queries (``queries.parquet``: arrival, size,
   batch, latency) beside them.
3. **Capacity** (``capacity``): per series, bisection of the offered rate for the highest
   one whose latency percentile stays under the SLO and whose queue stays bounded, as
   MLPerf's load generator searches its Server scenario; probes log to
   ``OUT/<series>/capacity~<k>/``.

Rank 0 writes ``OUT/serve.json``: the settings, the calibration, one summary per run
(achieved rate, p50/p90/p99/p99.9 query latency, backlog at the end, stable) and the
capacities found.

Clocks: every rank counts arrivals from its own start instant, the end of a barrier plus
a margin on its own monotonic clock, and logs it (``t_origin`` in its header). A
query's latency is computed from times since those instants, gathered to rank 0, so no
clock reading crosses ranks: hosts whose clocks differ agree to within the barrier's exit
skew (microseconds on one host, about one network latency across hosts). The
calibration's closed-loop makespan spans ranks, so it takes their times on rank 0's clock
(offsets measured by :mod:`bls_dlrm.logs.clocks`); every run logs these offsets before and after
it, as the closed loop does.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bls_dlrm import theory
from bls_dlrm.run.config import (
    ConfigError,
    RunConfig,
    add_config_arguments,
    apply_override,
    config_from,
    parse_override,
    read_config_file,
)
from bls_dlrm.run.pipeline import say_once
from bls_dlrm.run.serving import (
    QuerySizes,
    Schedule,
    ServeSpec,
    query_latencies,
    schedule,
    summarise,
)
from bls_dlrm.series import Series, SeriesError

#: Start margin: a rank's start instant lies this far after it leaves the start barrier.
START_MARGIN_S = 0.05
#: How often a rank waiting for a batch to close looks for arrived exchanges (sleeping).
POLL_S = 0.0005


@dataclass
class CapacitySearch:
    slo_ms: float = 60.0
    percentile: float = 99.0
    probes: int = 6  # bisection steps per series
    low: float = 0.1  # search interval, fractions of the series' own closed-loop capacity
    high: float = 1.0

    def validate(self) -> None:
        if not self.slo_ms > 0:
            raise ConfigError(f"serve.capacity.slo_ms: must be > 0, got {self.slo_ms!r}")
        if not 0 < self.percentile < 100:
            raise ConfigError("serve.capacity.percentile: must be in (0, 100)")
        if not (isinstance(self.probes, int) and self.probes >= 1):
            raise ConfigError("serve.capacity.probes: must be an integer >= 1")
        if not 0 < self.low < self.high:
            raise ConfigError("serve.capacity: need 0 < low < high")


@dataclass
class ServeConfig:
    """The ``serve`` section of a run config (every key also a command-line flag)."""

    rates: list[float] | None = None  # offered rates, queries/s
    loads: list[float] | None = None  # or fractions of the reference capacity
    reference: str | list[str] = "mpi"  # series (or candidates) `loads` refer to
    serve_reference: bool = False  # also serve the reference (first, if not listed)
    calibrate_iterations: int = 100
    duration_s: float = 5.0
    warmup_s: float = 0.5
    sizes: dict[str, Any] = field(default_factory=lambda: {"kind": "constant", "samples": 64})
    max_batch: int = 512
    max_wait_s: float = 0.005
    seed: int = 0
    capacity: dict[str, Any] | None = None  # CapacitySearch keys; None: no search

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ServeConfig:
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            known = ", ".join(sorted(cls.__dataclass_fields__))
            raise ConfigError(f"serve.{unknown[0]}: unknown key (known: {known})")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def query_sizes(self) -> QuerySizes:
        try:
            return QuerySizes.from_dict(self.sizes)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"serve.{exc}") from None

    def search(self) -> CapacitySearch | None:
        if self.capacity is None:
            return None
        try:
            search = CapacitySearch(**self.capacity)
        except TypeError as exc:
            raise ConfigError(f"serve.capacity: {exc}") from None
        search.validate()
        return search

    def references(self) -> list[Series]:
        """The reference candidates, in config order."""
        texts = [self.reference] if isinstance(self.reference, str) else self.reference
        if not isinstance(texts, list) or not texts:
            raise ConfigError("a series or a non-empty list of series")
        try:
            return [Series.parse(t) for t in texts]
        except SeriesError as exc:
            raise ConfigError(str(exc)) from None

    def spec(self, rate: float) -> ServeSpec:
        return ServeSpec(
            rate_qps=float(rate),
            duration_s=float(self.duration_s),
            sizes=self.query_sizes(),
            max_batch=int(self.max_batch),
            max_wait_s=float(self.max_wait_s),
            seed=int(self.seed),
            warmup_s=float(self.warmup_s),
        )

    def validate(self) -> None:
        if self.rates is not None and self.loads is not None:
            raise ConfigError("serve: give rates or loads, not both")
        for key in ("rates", "loads"):
            values = getattr(self, key)
            if values is not None and (
                not isinstance(values, list) or not values or not all(v > 0 for v in values)
            ):
                raise ConfigError(f"serve.{key}: a non-empty list of numbers > 0")
        try:
            self.references()
        except ConfigError as exc:
            raise ConfigError(f"serve.reference: {exc}") from None
        if not (isinstance(self.calibrate_iterations, int) and self.calibrate_iterations >= 1):
            raise ConfigError("serve.calibrate_iterations: must be an integer >= 1")
        try:
            self.spec(1.0).validate()
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"serve.{exc}") from None
        self.search()


# -- one rank's open loop ---------------------------------------------------------------


def _agree_start(comm) -> float:
    """The instant arrivals are counted from, on this rank's own monotonic clock: the end
    of a barrier (every rank leaves it at nearly the same moment) plus a margin. No clock
    value crosses ranks, so hosts whose monotonic clocks differ agree all the same; the
    error is the barrier's exit skew (microseconds on one host, about a network latency
    across hosts)."""
    comm.Barrier()
    return time.monotonic() + START_MARGIN_S


def _open_loop(
    ctx,
    series: Series,
    group,
    out_dir: Path,
    sched: Schedule,
    spec,
    order,
    index,
    extra: dict[str, Any],
):
    """Run one offered load's batches on this rank; returns (t_origin, start[], done[])."""
    import torch
    from mpi4py import MPI

    from bls_dlrm.logs import clocks
    from bls_dlrm.logs import writer as writer_mod
    from bls_dlrm.run.pipeline import Pipeline, gc_paused, series_header
    from bls_dlrm.run.serving import gather

    comm = MPI.COMM_WORLD
    n = sched.num_batches
    warm = int(np.searchsorted(sched.close, spec.warmup_s, side="left"))
    # A delay is a multiple of a full batch's work (the dataset's batch size, as in the
    # closed loop); a smaller batch carries the same multiple of its own work.
    fill = np.minimum(sched.batch_samples() / ctx.store.batch_size, 1.0)
    run_ctx = _run_context(ctx, warm, max(n - warm, 1), scale=fill)
    gc.collect()  # before the start instant: the loop's own collect is then quick
    clock_sync = clocks.measure(comm)  # offsets to rank 0's clock, before the run
    t_origin = _agree_start(comm)
    header = series_header(
        run_ctx,
        series,
        out_dir,
        order,
        index,
        t_origin=t_origin,
        clock_sync=clock_sync,
        serve=spec.to_dict() | {"batches": n} | extra,
    )
    start = np.full(n, np.nan)
    with gc_paused(), torch.inference_mode(), writer_mod.RunLogWriter(out_dir, header) as writer:
        pipe = Pipeline(run_ctx, series, group, writer, None, None)
        for i in range(n):
            lo, hi = sched.batch_range(i)
            batch = gather(ctx.store, lo, hi)
            close = t_origin + float(sched.close[i])
            while True:  # idle until the batch closes; finish what arrives meanwhile
                pipe.progress()
                now = time.monotonic()
                if now >= close:
                    break
                time.sleep(min(close - now, POLL_S))
            start[i] = time.monotonic()
            pipe.post(i, batch, t_close=close)
            pipe.bound()
        pipe.drain()
        writer.close(clock_sync=clocks.measure(comm))  # and after it
    done = np.array([pipe.times[i][1] for i in range(n)])
    return t_origin, start, done


def _run_context(ctx, warmup: int, iterations: int, scale=None):
    """``ctx`` for a run of ``warmup + iterations`` batches: its config and the delay
    schedule of that many batches (each batch's delays times ``scale``, if given)."""
    from bls_dlrm.delays import DelaySpec

    delays = DelaySpec.from_dict(ctx.cfg.delay).schedule(ctx.size, warmup + iterations)
    if scale is not None:
        delays = delays[:, : len(scale)] * scale[None, :]
    return replace(ctx, cfg=replace(ctx.cfg, warmup=warmup, iterations=iterations), delays=delays)


def _measure(ctx, series, group, out_dir, cfg: ServeConfig, rate, order, index, extra):
    """One open-loop run at ``rate``: every rank runs it; rank 0 returns its summary and
    its queries (one row each), the others ``(None, None)``."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    spec = cfg.spec(rate)
    sched = schedule(spec)
    t_origin, start, done = _open_loop(
        ctx, series, group, out_dir, sched, spec, order, index, extra
    )
    # Times since each rank's own start instant: comparable across ranks and hosts.
    starts = comm.gather(start - t_origin, root=0)
    dones = comm.gather(done - t_origin, root=0)
    if ctx.rank != 0:
        return None, None
    done_all = np.vstack(dones)
    queries = query_latencies(sched, done_all, 0.0, ctx.size, spec.warmup_s)
    queries.to_parquet(out_dir / "queries.parquet", index=False)
    # Backlog: batches closed within the arrival window that some rank had not started
    # when the window ended (a queue that grows means an overloaded, unstable run).
    latest_start = np.vstack(starts).max(axis=0)
    closed = sched.close <= spec.duration_s
    backlog = int(np.sum(closed & (latest_start > spec.duration_s)))
    summary = (
        summarise(queries, spec.duration_s, spec.warmup_s)
        | {
            "series": series.folder,
            "rate_qps": float(rate),
            "batches": int(sched.num_batches),
            "mean_batch_samples": float(sched.batch_samples().mean()) if sched.num_batches else 0.0,
            "backlog_batches": backlog,
            "stable": backlog <= max(3, int(0.01 * sched.num_batches)),
            "run_dir": str(out_dir),
        }
        | extra
    )
    return summary, queries


@dataclass(frozen=True)
class Calibration:
    """A series' closed-loop capacity in queries/s, and the theory's limits on the same
    work (:mod:`bls_dlrm.theory`): synchronous (1 / mean of the per-iteration maximum work)
    and unbounded lag (1 / the largest per-rank mean work)."""

    capacity_qps: float
    ideal_sync_qps: float
    ideal_unbounded_qps: float


def _calibrate(ctx, series, group, cfg: ServeConfig, out_dir: Path, order, index) -> Calibration:
    """Closed-loop capacity of ``series`` on full batches (every rank gets the same)."""
    from mpi4py import MPI

    from bls_dlrm.logs import clocks
    from bls_dlrm.run.pipeline import run_series

    comm = MPI.COMM_WORLD
    n = cfg.calibrate_iterations
    warm = min(10, n)
    run_ctx = _run_context(ctx, warm, n)
    comm.Barrier()
    times: dict[int, tuple[float, float, float]] = {}
    run_series(run_ctx, series, group, out_dir, None, order, index, False, times)
    measured = [times[i] for i in range(warm, warm + n)]
    first = min(t for t, _, _ in measured)
    last = max(t for _, t, _ in measured)
    # on rank 0's clock: a rank on another host reads another monotonic clock
    offset = clocks.measure(comm).offset_s
    firsts, lasts = comm.allgather(first - offset), comm.allgather(last - offset)
    work = np.vstack(comm.allgather([w for _, _, w in measured]))  # (ranks, n)
    per_query = ctx.store.batch_size * n / cfg.query_sizes().mean()  # queries of n batches
    return Calibration(
        capacity_qps=per_query / (max(lasts) - min(firsts)),
        ideal_sync_qps=per_query / theory.makespan_sync(work),
        ideal_unbounded_qps=per_query / theory.makespan_unbounded(work),
    )


def run(cfg: RunConfig, serve: ServeConfig, out_dir: str | Path) -> dict[str, Any] | None:
    """Every step of one serving launch on this rank; rank 0 returns the report."""
    from mpi4py import MPI

    from bls_dlrm.run.pipeline import make_context, open_groups

    comm = MPI.COMM_WORLD
    out_dir = Path(out_dir)
    ctx = make_context(cfg, total=1)
    ctx = replace(ctx, allow_empty=True)
    series = cfg.series_list()
    candidates = serve.references()
    groups, close_groups = open_groups(cfg, [*series, *candidates])
    rng = np.random.default_rng(cfg.shuffle_seed + cfg.repetition)
    report: dict[str, Any] = {
        "serve": asdict(serve),
        "ranks": ctx.size,
        "runs": [],
        "capacity": {},
    }
    # 1. calibration
    measured = {
        s.folder: _calibrate(
            ctx, s, groups[s.folder], serve, out_dir / s.folder / "calibrate", candidates, k
        )
        for k, s in enumerate(candidates)
    }
    # the highest capacity (every rank has the same numbers: they are gathered)
    reference = max(candidates, key=lambda s: measured[s.folder].capacity_qps)
    ref = measured[reference.folder]
    ref_qps = ref.capacity_qps
    report["calibration"] = {
        "series": reference.folder,
        "capacity_qps": ref_qps,
        "ideal_sync_qps": ref.ideal_sync_qps,
        "ideal_unbounded_qps": ref.ideal_unbounded_qps,
        "candidates": {label: asdict(c) for label, c in measured.items()},
    }
    if serve.serve_reference and reference.folder not in {s.folder for s in series}:
        series = [reference, *series]
    report["series"] = [s.folder for s in series]
    rates = serve.rates or [f * ref_qps for f in (serve.loads or [])]
    loads = serve.loads or [None] * len(rates)
    # 2. offered loads, series shuffled per load
    for k, (rate, load) in enumerate(zip(rates, loads, strict=True)):
        order = [series[j] for j in rng.permutation(len(series))]
        for index, s in enumerate(order):
            extra = {"load": load, "load_index": k}
            summary, _ = _measure(
                ctx,
                s,
                groups[s.folder],
                out_dir / s.folder / f"load~{k}",
                serve,
                rate,
                order,
                index,
                extra,
            )
            if summary is not None:
                report["runs"].append(summary)
                _say(
                    f"{s.folder}: {rate:,.0f} q/s -> p99 {summary['p99_ms']:.1f} ms"
                    f"{'' if summary['stable'] else ' (unstable)'}"
                )
    # 3. capacity at the SLO
    search = serve.search()
    if search is not None:
        for s in series:
            own = measured.get(s.folder) or _calibrate(
                ctx,
                s,
                groups[s.folder],
                serve,
                out_dir / s.folder / "capacity-calibrate",
                series,
                0,
            )
            report["capacity"][s.folder] = _bisect(
                ctx, s, groups[s.folder], serve, search, own, out_dir / s.folder, series
            )
    comm.Barrier()
    close_groups()
    if ctx.rank == 0:
        (out_dir / "serve.json").write_text(json.dumps(report, indent=2, default=_jsonable))
        return report
    return None


def _bisect(
    ctx, s, group, serve: ServeConfig, search: CapacitySearch, own: Calibration, out, order
):
    """Highest offered rate (queries/s) whose latency percentile stays under the SLO.

    Bisection between ``search.low`` and ``search.high`` times the series' own closed-loop
    capacity (``own``), taken to pass and to fail: each probe halves the interval, so the
    result lies within ``(high - low) / 2**probes`` of the true capacity. When no probe
    passes, ``capacity_qps`` is None and ``below_qps`` the lowest rate that failed.
    """
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    own_qps = own.capacity_qps
    key = f"p{search.percentile:g}".replace(".", "_") + "_ms"
    lo, hi = search.low * own_qps, search.high * own_qps
    passed, probes = None, []
    for k in range(search.probes):
        rate = (lo + hi) / 2
        extra = {"capacity_probe": k}
        summary, queries = _measure(
            ctx, s, group, out / f"capacity~{k}", serve, rate, order, 0, extra
        )
        ok = None
        if summary is not None:
            value = _percentile_of(queries, search.percentile)
            ok = bool(value * 1e3 <= search.slo_ms and summary["stable"])
            summary[key] = value * 1e3
            probes.append(summary | {"passed": ok})
        ok = comm.bcast(ok, root=0)  # rank 0 judged it; every rank takes the same branch
        if ok:
            passed, lo = rate, rate
        else:
            hi = rate
    if ctx.rank != 0:
        return None
    return {
        "capacity_qps": passed,
        "below_qps": None if passed is not None else hi,
        "resolution_qps": (search.high - search.low) * own_qps / 2**search.probes,
        "closed_loop_qps": own_qps,
        "ideal_sync_qps": own.ideal_sync_qps,
        "ideal_unbounded_qps": own.ideal_unbounded_qps,
        "slo_ms": search.slo_ms,
        "percentile": search.percentile,
        "probes": probes,
    }


def _percentile_of(queries, q: float) -> float:
    """The ``q``-th percentile latency (s) of the measured queries (inf without any)."""
    lat = queries.loc[~queries["warmup"], "latency_s"].to_numpy()
    return float(np.percentile(lat, q)) if len(lat) else float("inf")


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {value!r}")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- command line ------------------------------------------------------------------------


def keys_help() -> str:
    """The ``serve`` keys with their defaults (the epilog of ``serve --help``)."""
    d, c = ServeConfig(), CapacitySearch()
    return f"""serve keys (section `serve` of the YAML file, or --set serve.KEY=VALUE):
  rates                 offered rates, queries/s (or --rate Q, repeatable)
  loads                 or: fractions of the reference capacity (--loads 0.3,1.0)
  reference             a series or a list of candidates, e.g. [gloo, mpi, "bls:0"]: each
                        is calibrated closed loop; the highest capacity is the reference
                        (default {d.reference})
  serve_reference       also serve the reference series (default {str(d.serve_reference).lower()})
  calibrate_iterations  closed-loop full batches per calibration (default {d.calibrate_iterations})
  duration_s            seconds of arrivals per run, warm-up included (default {d.duration_s:g})
  warmup_s              queries arriving earlier are not measured (default {d.warmup_s:g})
  sizes                 samples per query: {{kind: constant, samples}}, {{kind: lognormal,
                        median, sigma, max}} or {{kind: table, path, max}} (one size per
                        line, drawn uniformly) (default {d.sizes})
  max_batch             a batch closes at this many samples ... (default {d.max_batch})
  max_wait_s            ... or this long after its first query (default {d.max_wait_s:g})
  seed                  seed of arrivals and sizes (default {d.seed})
  capacity              capacity search (or --find-capacity): slo_ms (default {c.slo_ms:g}),
                        percentile ({c.percentile:g}), probes ({c.probes}), low, high (the
                        search interval, fractions of the series' closed-loop capacity:
                        {c.low:g}, {c.high:g})
The run keys (dataset, model, plan, series, delay, ...) are those of `bls-dlrm infer --help`;
`series` lists the series served besides the reference.
"""


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="bls-dlrm serve")
    p.description = __doc__
    p.epilog = keys_help()
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_config_arguments(
        p,
        "YAML run config: infer's keys plus `serve` (serve.duration_s=3 with --set)",
        "folder for the logs and serve.json",
    )
    p.add_argument(
        "--rate",
        type=float,
        action="append",
        metavar="QPS",
        help="offered rate in queries/s (repeat for several; serve.rates)",
    )
    p.add_argument(
        "--loads",
        type=lambda t: [float(x) for x in t.split(",")],
        help="offered rates as fractions of the reference series' closed-loop "
        "capacity, e.g. 0.3,0.7,1.0,1.3 (serve.loads)",
    )
    p.add_argument("--duration", type=float, help="seconds of arrivals per run (serve.duration_s)")
    p.add_argument(
        "--find-capacity",
        action="store_true",
        help="bisect each series' highest rate whose percentile latency stays "
        "under --slo-ms (serve.capacity)",
    )
    p.add_argument("--slo-ms", type=float, default=None, help="latency bound (default 60)")
    p.add_argument("--percentile", type=float, default=None, help="judged percentile (99)")
    return p


def load_serve_config(args) -> tuple[RunConfig, ServeConfig]:
    data = read_config_file(args.config)
    serve_data = dict(data.pop("serve", None) or {})
    run_overrides = []
    for text in args.overrides:
        if text.startswith("serve."):
            keys, value = parse_override(text)
            apply_override(serve_data, keys[1:], value, text)
        else:
            run_overrides.append(text)
    if args.rate and args.loads:
        raise ConfigError("--rate and --loads: give one of them, not both")
    if args.rate:
        serve_data["rates"], serve_data["loads"] = list(args.rate), None
    if args.loads:
        serve_data["loads"], serve_data["rates"] = args.loads, None
    if args.duration is not None:
        serve_data["duration_s"] = args.duration
    if args.find_capacity or args.slo_ms is not None or args.percentile is not None:
        capacity = dict(serve_data.get("capacity") or {})
        if args.slo_ms is not None:
            capacity["slo_ms"] = args.slo_ms
        if args.percentile is not None:
            capacity["percentile"] = args.percentile
        serve_data["capacity"] = capacity
    cfg = config_from(data, run_overrides)
    serve = ServeConfig.from_dict(serve_data)
    if not serve.rates and not serve.loads and serve.capacity is None:
        raise ConfigError("serve: give --rate, --loads or --find-capacity")
    return cfg, serve


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    args = args or build_parser().parse_args(argv)
    try:
        cfg, serve = load_serve_config(args)
    except (ConfigError, OSError) as exc:
        say_once(f"bls-dlrm serve: bad config: {exc}")
        return 2
    report = run(cfg, serve, args.out)
    if report is not None:
        _say(f"serve: report in {Path(args.out) / 'serve.json'}")
    return 0
