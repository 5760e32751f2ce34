"""``bls-dlrm bench-a2a``: OSU-style alltoallv benchmark of gloo, mpi and bls.

Two modes, each collective (and API) in its own ``mpiexec`` launch (a gloo group in the
same processes slows MPI down, so they never share one), repetitions interleaved so that
machine noise hits every collective alike, medians over repetitions:

* ``latency``: per message size (bytes per peer), warm-up then measured exchanges, each
  completed before the next; per exchange the latency is the maximum over ranks;
  p50/p99 over exchanges. ``native`` is mpi4py's blocking ``Alltoallv`` on numpy buffers,
  the reference for the per-call cost (``--baseline native``); ``mpi`` is the same call
  behind the engine's interface. ``--vary-counts`` draws new counts for every exchange
  (each rank sends the same bytes +- a few rows), which measures the general path beside
  the repeated-counts path.
* ``schedule``: a delay schedule from :mod:`bls_dlrm.delays` on top of a fixed local work
  per iteration (a sleep by default, so the collective is measured and not CPU
  contention; ``--work cpu`` for a CPU-bound loop). The loop is the one of DLRM inference:
  work -> post -> complete what the lag bound requires. It reports the makespan, the
  speedup over the synchronous baseline and the ideal speedup from
  :mod:`bls_dlrm.theory` computed from the measured work times of the same run, and the
  share of the ideal reached.

Two APIs (``--api engine``, ``torch`` or ``engine,torch``):

* ``engine``: :class:`~bls_dlrm.comm.BLSAlltoallv` and the synchronous baselines behind its
  ``post`` / ``trim`` / ``drain`` interface;
* ``torch``: ``torch.distributed`` on a default group of the backend "gloo", "mpisync"
  (for ``mpi``) or "bls" (``bls:L``, ``pg_options=BLSOptions(lag_bound=L)``). Latency mode
  calls the blocking ``all_to_all_single`` per exchange. Schedule mode is plain torch code:
  work -> ``all_to_all_single(async_op=True)`` -> wait the oldest Work while more than ``L``
  are in flight (so up to ``L + 1`` right after a post; ``L`` = 0 for the synchronous
  backends). Nothing else: no polling, no ``is_completed``, so the backend alone must drive
  the progress that masks a delay.

With both APIs, the rows of each collective stand side by side; a torch row's ratios
refer to the baseline through torch, and schedule rows add ``makespan_ratio_to_engine``.
``--bind core`` starts the ranks with ``mpiexec -bind-to core`` (one core each).

Output: one JSON line per collective, API and size (or schedule), with ``api`` (``engine``,
``torch``, or ``mpi4py`` for ``native``), to ``--out`` and stdout, and a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# "mpi" is MPI's own Waitall; the rest are Backoff presets (the driver never imports MPI)
WAITS = ("polite", "yield", "sleep", "mpi")
#: collective names; "native" is mpi4py's blocking Alltoallv on numpy buffers (latency mode)
NAMES = ("gloo", "mpi", "bls", "native", "floor")
#: the APIs a collective runs through: the engine (post/trim/drain) or torch.distributed
APIS = ("engine", "torch")
#: the api field of "native" rows: neither API, MPI itself
NATIVE_API = "mpi4py"

SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "KIB": 1024, "M": 1 << 20, "MIB": 1 << 20}


def parse_size(text: str) -> int:
    """'64KiB' -> 65536; plain numbers are bytes."""
    t = text.strip().upper()
    digits = t.rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = t[len(digits) :]
    if not digits or unit not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 4096, 64KiB, 1MiB)")
    return int(float(digits) * SIZE_UNITS[unit])


@dataclass(frozen=True)
class CollectiveSpec:
    """``name[:L[:transport[:wait]]]``, e.g. ``mpi``, ``bls:8``, ``bls:0:ialltoallv:mpi``."""

    name: str
    lag_bound: int = 0
    transport: str = "p2p"
    wait: str = "polite"  # a Backoff preset, or "mpi": MPI's own Waitall (comparison only)

    @classmethod
    def parse(cls, text: str) -> CollectiveSpec:
        parts = text.split(":")
        name = parts[0]
        if name not in NAMES:
            raise argparse.ArgumentTypeError(f"unknown collective {name!r} in {text!r}")
        try:
            lag = int(parts[1]) if len(parts) > 1 else 0
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad lag bound in {text!r}") from None
        spec = cls(name, lag, *parts[2:4])
        if spec.name != "bls" and (spec.lag_bound or len(parts) > 2):
            raise argparse.ArgumentTypeError(f"{name} is synchronous: no lag bound/transport")
        if spec.transport not in ("p2p", "ialltoallv") or spec.wait not in WAITS:
            raise argparse.ArgumentTypeError(f"bad transport or wait in {text!r}")
        return spec

    @property
    def label(self) -> str:
        if self.name != "bls":
            return self.name
        extra = "" if self.transport == "p2p" and self.wait == "polite" else f":{self.transport}"
        extra += "" if self.wait == "polite" else f":{self.wait}"
        return f"bls:{self.lag_bound}{extra}"


# -- worker (runs on every rank under mpiexec) ------------------------------------------

#: torch.distributed backend of each collective name (``--api torch``)
TORCH_BACKENDS = {"gloo": "gloo", "mpi": "mpisync", "bls": "bls", "floor": "blsfloor"}


def _make_engine(spec: CollectiveSpec):
    """The engine-API collective (post/trim/drain) and the torch module if gloo needs it."""
    from mpi4py import MPI

    from bls_dlrm.comm import make_collective
    from bls_dlrm.comm.engine import BLSAlltoallv

    if spec.name == "gloo":
        import torch.distributed as dist

        from bls_dlrm.comm import init_torch

        init_torch("gloo")
        return make_collective("gloo", keep_history=True), dist
    if spec.name == "bls":
        from bls_dlrm.comm.engine import Backoff

        backoff = None if spec.wait == "mpi" else Backoff.preset(spec.wait)
        coll = BLSAlltoallv(
            MPI.COMM_WORLD,
            spec.lag_bound,
            transport=spec.transport,
            backoff=backoff,
            keep_history=True,
        )
        return coll, None
    return make_collective("mpi", keep_history=True), None


def _init_torch_group(spec: CollectiveSpec):
    """``dist.init_process_group`` with the backend of ``spec`` (``--api torch``)."""
    import torch.distributed as dist

    from bls_dlrm.comm import BLSOptions

    if spec.name == "bls":
        options = BLSOptions(lag_bound=spec.lag_bound, transport=spec.transport)
        dist.init_process_group(TORCH_BACKENDS["bls"], pg_options=options)
    elif spec.name == "floor":  # torch's dispatch alone: a Work completed at once
        from bls_dlrm.comm.native import register_floor

        register_floor()
        dist.init_process_group(TORCH_BACKENDS["floor"])
    else:
        dist.init_process_group(TORCH_BACKENDS[spec.name])
    return dist


def _count_matrices(size: int, n: int, exchanges: int, vary: bool, seed: int) -> np.ndarray:
    """Rows from rank ``src`` to ``dst`` per exchange, shape (exchanges, size, size).

    Without ``vary`` every entry is ``n``. With it every exchange draws new counts of
    ``n +- k`` rows (``k`` = 4, or fewer for tiny messages), the same on every rank, so each
    rank sends about the same bytes per exchange but never the counts of the exchange before.
    """
    counts = np.full((exchanges, size, size), n, dtype=np.int64)
    k = min(4, n - 1)
    if vary and k > 0:
        rng = np.random.default_rng([seed, size, n])
        counts += rng.integers(-k, k + 1, size=counts.shape)
    return counts


def _latency_native(comm, counts: np.ndarray, rank: int, warmup: int, iters: int):
    """mpi4py's blocking ``Alltoallv`` on numpy buffers: the reference per-call cost."""
    import time

    from mpi4py import MPI

    send = np.arange(counts[:, rank, :].sum(axis=1).max(), dtype=np.float32) + rank
    recv = np.empty(counts[:, :, rank].sum(axis=1).max(), dtype=np.float32)
    args = []
    for c in counts:
        sc, rc = c[rank, :], c[:, rank]
        sd = np.concatenate(([0], np.cumsum(sc)[:-1]))
        rd = np.concatenate(([0], np.cumsum(rc)[:-1]))
        args.append(
            (
                [send, (sc.tolist(), sd.tolist()), MPI.FLOAT],
                [recv, (rc.tolist(), rd.tolist()), MPI.FLOAT],
            )
        )
    if not _varies(counts):  # one argument set, as a program with fixed counts would keep
        args = [args[0]] * len(counts)
    times = np.empty(iters)
    comm.Barrier()
    for i in range(warmup + iters):
        sarg, rarg = args[i]
        t0 = time.perf_counter()
        comm.Alltoallv(sarg, rarg)
        if i >= warmup:
            times[i - warmup] = time.perf_counter() - t0
    _check_received(recv, counts[-1], rank, "native")
    return times


def _varies(counts: np.ndarray) -> bool:
    return bool((counts != counts[0]).any())


def _check_received(recv, counts: np.ndarray, rank: int, what: str) -> None:
    """Raise unless ``recv`` holds what the last exchange (``counts``) sent to ``rank``.

    Rank ``p`` sends ``arange + p``; the piece for ``rank`` starts at its displacement.
    Checked once, after the timed loop, so a benchmark never reports a broken exchange.
    """
    got = np.asarray(recv[: int(counts[:, rank].sum())], dtype=np.float32)
    offset = 0
    for p, c in enumerate(counts[:, rank].tolist()):
        start = int(counts[p, :rank].sum())
        want = np.arange(start, start + c, dtype=np.float32) + p
        if not np.array_equal(got[offset : offset + c], want):
            raise RuntimeError(f"{what}: wrong data from rank {p} in the last exchange")
        offset += c


def _latency_engine(coll, comm, counts: np.ndarray, rank: int, warmup: int, iters: int):
    import time

    import torch

    send = torch.arange(int(counts[:, rank, :].sum(axis=1).max()), dtype=torch.float32) + rank
    recv = torch.empty(int(counts[:, :, rank].sum(axis=1).max()), dtype=torch.float32)
    if _varies(counts):
        splits = [(c[rank, :].tolist(), c[:, rank].tolist()) for c in counts]
    else:  # None, None: the equal split every call
        splits = [(None, None)] * len(counts)
    times = np.empty(iters)
    comm.Barrier()
    for i in range(warmup + iters):
        sc, rc = splits[i]
        t0 = time.perf_counter()
        coll.post(send, sc, rc, recv)
        coll.trim()  # L = 0: complete it; its sends are reaped by the next post
        if i >= warmup:
            times[i - warmup] = time.perf_counter() - t0
    _check_received(recv.numpy(), counts[-1], rank, "engine")
    return times


def _latency_torch(dist, comm, counts: np.ndarray, rank: int, warmup: int, iters: int):
    """Blocking ``dist.all_to_all_single`` (``async_op=False``) per exchange."""
    import time

    import torch

    send = torch.arange(int(counts[:, rank, :].sum(axis=1).max()), dtype=torch.float32) + rank
    recv = torch.empty(int(counts[:, :, rank].sum(axis=1).max()), dtype=torch.float32)
    if _varies(counts):
        calls = []
        for c in counts:
            sc, rc = c[rank, :].tolist(), c[:, rank].tolist()
            calls.append((recv[: sum(rc)], send[: sum(sc)], rc, sc))
    else:  # no split sizes: the equal split every call
        calls = [(recv, send, None, None)] * len(counts)
    times = np.empty(iters)
    comm.Barrier()
    for i in range(warmup + iters):
        out, inp, rc, sc = calls[i]
        t0 = time.perf_counter()
        dist.all_to_all_single(out, inp, rc, sc)
        if i >= warmup:
            times[i - warmup] = time.perf_counter() - t0
    if dist.get_backend() != TORCH_BACKENDS["floor"]:  # the floor moves no data
        _check_received(recv.numpy(), counts[-1], rank, "torch")
    return times


def _schedule_engine(coll, comm, send, d, args, rank: int):
    """work -> post -> trim; returns (elapsed, time waiting, max lag, work per iteration)."""
    import time

    from bls_dlrm.delays import cpu_work, inject

    work_fn = inject if args.work == "sleep" else cpu_work
    work = np.empty(args.iters)
    for _ in range(args.warmup):  # warm-up without delays
        coll.post(send, None, None)
        coll.drain()
    comm.Barrier()
    t_start = time.monotonic()
    for i in range(args.iters):
        work[i] = work_fn(args.work_s + d[rank, args.warmup + i])
        coll.post(send, None, None)
        coll.trim()
    coll.drain()
    elapsed = time.monotonic() - t_start
    stats = coll.history[-args.iters :]
    waited = float(sum(s.wait_s for s in stats))
    return elapsed, waited, max(s.lag for s in stats), work


def _schedule_torch(dist, lag: int, comm, send, d, args, rank: int):
    """The same loop as plain torch code writes it: work -> ``all_to_all_single(async_op=True)``
    -> wait the oldest Work while more than ``L`` are in flight. Nothing else: no polling, no
    ``is_completed``. ``L`` = 0 for the synchronous backends (post, then wait it)."""
    import time
    from collections import deque

    import torch

    from bls_dlrm.delays import cpu_work, inject

    work_fn = inject if args.work == "sleep" else cpu_work
    outs = [torch.empty_like(send) for _ in range(lag + 1)]  # one per Work in flight
    work = np.empty(args.iters)
    for k in range(args.warmup):  # warm-up without delays
        dist.all_to_all_single(outs[k % (lag + 1)], send, async_op=True).wait()
    comm.Barrier()
    waited = 0.0
    works: deque = deque()
    t_start = time.monotonic()
    for i in range(args.iters):
        work[i] = work_fn(args.work_s + d[rank, args.warmup + i])
        works.append(dist.all_to_all_single(outs[i % (lag + 1)], send, async_op=True))
        while len(works) > lag:
            t0 = time.monotonic()
            works.popleft().wait()
            waited += time.monotonic() - t0
    while works:
        t0 = time.monotonic()
        works.popleft().wait()
        waited += time.monotonic() - t0
    elapsed = time.monotonic() - t_start
    return elapsed, waited, None, work


def _worker(args: argparse.Namespace) -> None:
    import torch
    from mpi4py import MPI

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    spec = CollectiveSpec.parse(args.collective)
    api = args.api
    coll = dist = None
    if spec.name == "native":
        api = NATIVE_API
    elif api == "torch":
        dist = _init_torch_group(spec)
    else:
        coll, dist = _make_engine(spec)
    common = {"collective": spec.label, "api": api, "ranks": size, "bind": args.bind}
    out = []
    if args.mode == "latency":
        for nbytes in args.sizes:
            n = max(nbytes // 4, 1)
            counts = _count_matrices(size, n, args.warmup + args.iters, args.vary_counts, args.seed)
            if api == NATIVE_API:
                times = _latency_native(comm, counts, rank, args.warmup, args.iters)
            elif api == "torch":
                times = _latency_torch(dist, comm, counts, rank, args.warmup, args.iters)
            else:
                times = _latency_engine(coll, comm, counts, rank, args.warmup, args.iters)
            lat = np.empty_like(times) if rank == 0 else None
            comm.Reduce(times, lat, op=MPI.MAX, root=0)
            if rank == 0:
                out.append(
                    {
                        "mode": "latency",
                        **common,
                        "bytes_per_peer": n * 4,
                        "vary_counts": bool(args.vary_counts),
                        "p50_us": float(np.percentile(lat, 50) * 1e6),
                        "p99_us": float(np.percentile(lat, 99) * 1e6),
                        "mean_us": float(lat.mean() * 1e6),
                    }
                )
    else:
        from bls_dlrm.delays import DelaySpec

        delay = DelaySpec.from_dict(
            {"kind": args.schedule, "size_s": args.delay_factor * args.work_s, "seed": args.seed}
        )
        d = delay.schedule(size, args.warmup + args.iters)
        n = max(args.size // 4, 1)
        send = torch.arange(n * size, dtype=torch.float32) + rank
        lag = spec.lag_bound if spec.name == "bls" else 0
        if api == "torch":
            result = _schedule_torch(dist, lag, comm, send, d, args, rank)
        else:
            result = _schedule_engine(coll, comm, send, d, args, rank)
        elapsed, waited, max_lag, work = result
        works = np.empty((size, args.iters)) if rank == 0 else None
        comm.Gather(work, works, root=0)
        elapsed_all = comm.gather((elapsed, waited, max_lag), root=0)
        if rank == 0:
            from bls_dlrm import theory

            lags = [g for _, _, g in elapsed_all if g is not None]
            out.append(
                {
                    "mode": "schedule",
                    **common,
                    "schedule": args.schedule,
                    "work": args.work,
                    "work_s": args.work_s,
                    "delay_factor": args.delay_factor,
                    "iterations": args.iters,
                    "bytes_per_peer": n * 4,
                    "makespan_s": max(e for e, _, _ in elapsed_all),
                    "wait_s_mean": float(np.mean([w for _, w, _ in elapsed_all])),
                    "max_lag": max(lags) if lags else None,
                    "work_mean_s": float(works.mean()),
                    "ideal_makespan_s": theory.ideal_makespan(works, lag),
                    "ideal_sync_makespan_s": theory.makespan_sync(works),
                    "ideal_speedup": theory.ideal_speedup(works, lag),
                }
            )
    if coll is not None:
        coll.close()
    if dist is not None:
        dist.destroy_process_group()
    if rank == 0:
        Path(args.result).write_text("".join(json.dumps(r) + "\n" for r in out))


# -- driver ------------------------------------------------------------------------------


def _jobs(specs: list[CollectiveSpec], apis: list[str]) -> list[tuple[CollectiveSpec, str]]:
    """One launch per collective and API; "native" is neither API and runs once."""
    jobs = []
    for spec in specs:
        if spec.name == "native":
            jobs.append((spec, NATIVE_API))
        elif spec.name == "floor":  # torch only
            jobs.append((spec, "torch"))
        else:
            jobs.extend((spec, api) for api in apis)
    return jobs


def _run_one(spec: CollectiveSpec, api: str, args: argparse.Namespace, out: Path) -> list[dict]:
    from bls_dlrm.launch import run_mpi

    # The worker is `bls-dlrm bench-a2a --worker`: it parses the driver's own options, and an
    # error on any rank ends the whole launch (bls_dlrm.cli).
    argv = ["python", "-m", "bls_dlrm.cli", "bench-a2a", "--worker"]
    argv += ["--collective", spec.label, "--api", "engine" if api == NATIVE_API else api]
    argv += ["--result", str(out), "--mode", args.mode, "--sizes", ",".join(map(str, args.sizes))]
    argv += ["--size", str(args.size), "--schedule", args.schedule, "--work", args.work]
    argv += ["--work-s", str(args.work_s), "--delay-factor", str(args.delay_factor)]
    argv += ["--seed", str(args.seed), "--warmup", str(args.warmup), "--iters", str(args.iters)]
    argv += ["--bind", args.bind] + (["--vary-counts"] if args.vary_counts else [])
    bind = None if args.bind == "none" else args.bind
    try:
        run_mpi(args.ranks, argv, timeout=args.timeout, bind=bind)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"bench-a2a: {spec.label} ({api}) failed:\n{exc.stderr[-4000:]}") from None
    return [json.loads(line) for line in out.read_text().splitlines()]


def _summarise(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    """Medians over repetitions, with ratios to the baseline measured in the same run.

    The baseline of a row is ``--baseline`` through the same API (``mpi`` through torch is
    the "mpisync" backend), or, for ``native``, the one native series. In schedule mode,
    with both APIs, each torch row also gets its makespan over the engine's.
    """
    key = ("bytes_per_peer",) if args.mode == "latency" else ("schedule",)
    metric = "p50_us" if args.mode == "latency" else "makespan_s"
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        api = r.get("api", "engine")
        groups.setdefault((r["collective"], api, *(r[k] for k in key)), []).append(r)
    summary = []
    for (label, api, *rest), reps in groups.items():
        s = {"collective": label, "api": api, **dict(zip(key, rest, strict=True))}
        s["reps"] = len(reps)
        for field, value in reps[0].items():
            if field in s or field == "rep" or isinstance(value, bool):
                continue
            if field == "max_lag" and value is not None:  # the largest lag of any repetition
                s[field] = max(r[field] for r in reps)
            elif isinstance(value, float):
                s[field] = statistics.median(r[field] for r in reps)
            elif isinstance(value, int | str):  # the same in every repetition (ranks, bind)
                s[field] = value
        summary.append(s)
    by = {(s["collective"], s["api"], *(s[k] for k in key)): s for s in summary}

    def baseline(s: dict) -> dict | None:
        rest = tuple(s[k] for k in key)
        same = by.get((args.baseline, s["api"], *rest))
        return same or by.get((args.baseline, NATIVE_API, *rest))

    for s in summary:
        base = baseline(s)
        if base is not None and base.get(metric):
            ref = base[metric]
            if args.mode == "latency":
                s[f"ratio_to_{args.baseline}"] = s[metric] / ref
            else:
                s["speedup"] = ref / s[metric]
                s["share_of_ideal"] = s["speedup"] / s["ideal_speedup"]
        if args.mode == "schedule" and s["api"] == "torch":
            engine = by.get((s["collective"], "engine", *(s[k] for k in key)))
            if engine is not None:
                s["makespan_ratio_to_engine"] = s[metric] / engine[metric]
    return summary


def _print_table(summary: list[dict], args: argparse.Namespace) -> None:
    if args.mode == "latency":
        cols = [
            "collective",
            "api",
            "bytes_per_peer",
            "p50_us",
            "p99_us",
            f"ratio_to_{args.baseline}",
        ]
    else:
        cols = [
            "collective",
            "api",
            "schedule",
            "makespan_s",
            "wait_s_mean",
            "max_lag",
            "speedup",
            "ideal_speedup",
            "share_of_ideal",
        ]
        if any("makespan_ratio_to_engine" in s for s in summary):
            cols.append("makespan_ratio_to_engine")
    # side by side: each collective's APIs next to each other
    order = {label: k for k, label in enumerate(dict.fromkeys(s["collective"] for s in summary))}
    rows = sorted(summary, key=lambda s: (s.get("bytes_per_peer", 0), order[s["collective"]]))
    print("  ".join(f"{c:>16}" for c in cols))
    for s in rows:
        cells = []
        for c in cols:
            v = s.get(c, "")
            v = "" if v is None else v
            cells.append(f"{v:>16.4g}" if isinstance(v, float) else f"{v!s:>16}")
        print("  ".join(cells))


def _api_list(text: str) -> list[str]:
    apis = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in apis if a not in APIS]
    if not apis or bad:
        raise argparse.ArgumentTypeError(f"--api: give engine, torch or engine,torch, got {text!r}")
    return list(dict.fromkeys(apis))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="bls-dlrm bench-a2a", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--ranks", type=int, default=4, help="MPI ranks (default 4)")
    p.add_argument(
        "--collectives",
        default="mpi,gloo,bls:0",
        help="comma list of name[:L[:transport[:wait]]] (default mpi,gloo,bls:0); "
        "'native' (latency mode) is mpi4py's blocking Alltoallv on numpy buffers; 'floor' "
        "(torch) a backend whose call returns a completed Work at once",
    )
    p.add_argument(
        "--api",
        type=_api_list,
        default=["engine"],
        help="engine (post/trim/drain), torch (torch.distributed: gloo, mpisync, bls) "
        "or engine,torch (both, side by side); default engine",
    )
    p.add_argument("--baseline", default="mpi", help="collective the ratios refer to")
    p.add_argument("--mode", choices=("latency", "schedule"), default="latency")
    p.add_argument(
        "--sizes",
        type=lambda t: [parse_size(x) for x in t.split(",")],
        default=[parse_size(x) for x in ("1KiB", "16KiB", "64KiB", "256KiB", "1MiB")],
        help="bytes per peer, comma list (latency mode)",
    )
    p.add_argument(
        "--vary-counts",
        action="store_true",
        help="latency mode: new counts every exchange (same bytes per rank +- a few rows)",
    )
    p.add_argument(
        "--size",
        type=parse_size,
        default=parse_size("64KiB"),
        help="bytes per peer (schedule mode)",
    )
    p.add_argument("--schedule", default="rotating", help="delay kind (schedule mode)")
    p.add_argument("--work-s", type=float, default=0.01, help="local work per iteration, s")
    p.add_argument("--delay-factor", type=float, default=2.5, help="delay = factor x work")
    p.add_argument("--work", choices=("sleep", "cpu"), default="sleep")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--reps", type=int, default=3, help="repetitions (interleaved)")
    p.add_argument(
        "--bind",
        choices=("core", "none"),
        default="none",
        help="rank placement: core (mpiexec -bind-to core) or none (default)",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per launch")
    p.add_argument("--out", type=Path, help="append the raw JSON lines here")
    # the worker: the same options plus these, one collective and API per launch
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--collective", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m bls_dlrm.harness.bench_a2a ...``: ``bls-dlrm bench-a2a ...`` without the
    CLI's other commands (the harness sits above the product, never the other way)."""
    parser = argparse.ArgumentParser(prog="bench-a2a", description=__doc__)
    build_parser(parser)
    return run(parser.parse_args(sys.argv[1:] if argv is None else argv))


def run(args: argparse.Namespace) -> int:
    if args.worker:
        if not args.collective or not args.result or len(args.api) != 1:
            raise ValueError("--worker needs --collective, --result and one --api")
        args.api = args.api[0]
        _worker(args)
        return 0
    from tqdm import tqdm

    specs = [CollectiveSpec.parse(t) for t in args.collectives.split(",")]
    if args.mode == "schedule" and any(s.name == "native" for s in specs):
        raise ValueError("native is a latency-mode reference; use mpi in schedule mode")
    if "torch" in args.api and any(s.name == "bls" and s.wait != "polite" for s in specs):
        raise ValueError("a bls wait other than polite exists only in the engine API")
    rows: list[dict] = []
    jobs = [(rep, spec, api) for rep in range(args.reps) for spec, api in _jobs(specs, args.api)]
    with tempfile.TemporaryDirectory() as tmp:
        for k, (rep, spec, api) in enumerate(tqdm(jobs, desc="bench-a2a", disable=None)):
            for row in _run_one(spec, api, args, Path(tmp) / f"{k}.jsonl"):
                row["rep"] = rep
                rows.append(row)
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    summary = _summarise(rows, args)
    for s in summary:
        print(json.dumps(s))
    _print_table(summary, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
