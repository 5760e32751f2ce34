"""``bls-dlrm bench-a2a``: OSU-style alltoallv benchmark of gloo, mpi and bls.

Two modes, each collective in its own ``mpiexec`` launch (a gloo group in the same
processes slows MPI down, so they never share one), repetitions interleaved so that
machine noise hits every collective alike, medians over repetitions:

* ``latency``: per message size (bytes per peer), warm-up then measured exchanges, each
  completed before the next; per exchange the latency is the maximum over ranks;
  p50/p99 over exchanges.
* ``schedule``: a delay schedule from :mod:`bls_dlrm.delays` on top of a fixed local work
  per iteration (a sleep by default, so the collective is measured and not CPU
  contention; ``--work cpu`` for a CPU-bound loop). The loop is the one of DLRM inference:
  work -> post -> complete what the lag bound requires. It reports the makespan, the
  speedup over the synchronous baseline and the ideal speedup from
  :mod:`bls_dlrm.theory` computed from the measured work times of the same run.

Output: one JSON line per collective and size (or schedule), to ``--out`` and stdout.
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
        if name not in ("gloo", "mpi", "bls"):
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


def _make(spec: CollectiveSpec):
    from mpi4py import MPI

    from .comm import make_collective
    from .comm.engine import BLSAlltoallv

    if spec.name == "gloo":
        import torch.distributed as dist

        from .comm import init_torch

        init_torch("gloo")
        return make_collective("gloo"), dist
    if spec.name == "bls":
        from .comm.engine import Backoff

        backoff = None if spec.wait == "mpi" else Backoff.preset(spec.wait)
        coll = BLSAlltoallv(
            MPI.COMM_WORLD, spec.lag_bound, transport=spec.transport, backoff=backoff
        )
        return coll, None
    return make_collective("mpi"), None


def _worker(args: argparse.Namespace) -> None:
    import time

    import torch
    from mpi4py import MPI

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    spec = CollectiveSpec.parse(args.collective)
    coll, dist = _make(spec)
    out = []
    if args.mode == "latency":
        for nbytes in args.sizes:
            n = max(nbytes // 4, 1)
            send = torch.arange(n * size, dtype=torch.float32) + rank
            recv = torch.empty_like(send)
            times = np.empty(args.iters)
            comm.Barrier()
            for i in range(args.warmup + args.iters):
                t0 = time.perf_counter()
                coll.post(send, None, None, recv)
                coll.trim()  # L = 0: complete it; its sends are reaped by the next post
                if i >= args.warmup:
                    times[i - args.warmup] = time.perf_counter() - t0
            lat = np.empty_like(times) if rank == 0 else None
            comm.Reduce(times, lat, op=MPI.MAX, root=0)
            if rank == 0:
                out.append(
                    {
                        "mode": "latency",
                        "collective": spec.label,
                        "ranks": size,
                        "bytes_per_peer": n * 4,
                        "p50_us": float(np.percentile(lat, 50) * 1e6),
                        "p99_us": float(np.percentile(lat, 99) * 1e6),
                        "mean_us": float(lat.mean() * 1e6),
                    }
                )
    else:
        from .delays import DelaySpec, cpu_work, sleep_for

        delay = DelaySpec.from_dict(
            {"kind": args.schedule, "size_s": args.delay_factor * args.work_s, "seed": args.seed}
        )
        d = delay.schedule(size, args.warmup + args.iters)
        n = max(args.size // 4, 1)
        send = torch.arange(n * size, dtype=torch.float32) + rank
        work_fn = sleep_for if args.work == "sleep" else cpu_work
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
        works = np.empty((size, args.iters)) if rank == 0 else None
        comm.Gather(work, works, root=0)
        elapsed_all = comm.gather((elapsed, waited, max(s.lag for s in stats)), root=0)
        if rank == 0:
            from . import theory

            lag = spec.lag_bound if spec.name == "bls" else 0
            out.append(
                {
                    "mode": "schedule",
                    "collective": spec.label,
                    "ranks": size,
                    "schedule": args.schedule,
                    "work": args.work,
                    "work_s": args.work_s,
                    "delay_factor": args.delay_factor,
                    "iterations": args.iters,
                    "bytes_per_peer": n * 4,
                    "makespan_s": max(e for e, _, _ in elapsed_all),
                    "wait_s_mean": float(np.mean([w for _, w, _ in elapsed_all])),
                    "max_lag": max(g for _, _, g in elapsed_all),
                    "work_mean_s": float(works.mean()),
                    "ideal_makespan_s": theory.ideal_makespan(works, lag),
                    "ideal_sync_makespan_s": theory.makespan_sync(works),
                    "ideal_speedup": theory.ideal_speedup(works, lag),
                }
            )
    coll.close()
    if dist is not None:
        dist.destroy_process_group()
    if rank == 0:
        Path(args.result).write_text("".join(json.dumps(r) + "\n" for r in out))


# -- driver ------------------------------------------------------------------------------


def _run_one(spec: CollectiveSpec, args: argparse.Namespace, out: Path) -> list[dict]:
    from .launch import run_mpi

    # The worker parses the driver's own options (build_parser) plus two of its own.
    argv = ["python", "-m", "bls_dlrm.bench_a2a", "--worker", "--collective", spec.label]
    argv += ["--result", str(out), "--mode", args.mode, "--sizes", ",".join(map(str, args.sizes))]
    argv += ["--size", str(args.size), "--schedule", args.schedule, "--work", args.work]
    argv += ["--work-s", str(args.work_s), "--delay-factor", str(args.delay_factor)]
    argv += ["--seed", str(args.seed), "--warmup", str(args.warmup), "--iters", str(args.iters)]
    try:
        run_mpi(args.ranks, argv, timeout=args.timeout)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"bench-a2a: {spec.label} failed:\n{exc.stderr[-4000:]}") from None
    return [json.loads(line) for line in out.read_text().splitlines()]


def _summarise(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    """Medians over repetitions, with ratios to the baseline measured in the same run."""
    key = ("bytes_per_peer",) if args.mode == "latency" else ("schedule",)
    metric = "p50_us" if args.mode == "latency" else "makespan_s"
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["collective"], *(r[k] for k in key)), []).append(r)
    summary = []
    for (label, *rest), reps in groups.items():
        s = {"collective": label, **dict(zip(key, rest, strict=True)), "reps": len(reps)}
        for field in reps[0]:
            if isinstance(reps[0][field], float):
                s[field] = statistics.median(r[field] for r in reps)
        summary.append(s)
    base = {
        tuple(s[k] for k in key): s[metric] for s in summary if s["collective"] == args.baseline
    }
    for s in summary:
        ref = base.get(tuple(s[k] for k in key))
        if ref:
            if args.mode == "latency":
                s[f"ratio_to_{args.baseline}"] = s[metric] / ref
            else:
                s["speedup"] = ref / s[metric]
                s["share_of_ideal"] = s["speedup"] / s["ideal_speedup"]
    return summary


def _print_table(summary: list[dict], args: argparse.Namespace) -> None:
    if args.mode == "latency":
        cols = ["collective", "bytes_per_peer", "p50_us", "p99_us", f"ratio_to_{args.baseline}"]
    else:
        cols = [
            "collective",
            "schedule",
            "makespan_s",
            "wait_s_mean",
            "max_lag",
            "speedup",
            "ideal_speedup",
            "share_of_ideal",
        ]
    print("  ".join(f"{c:>16}" for c in cols))
    for s in summary:
        cells = []
        for c in cols:
            v = s.get(c, "")
            cells.append(f"{v:>16.4g}" if isinstance(v, float) else f"{v!s:>16}")
        print("  ".join(cells))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="bls-dlrm bench-a2a", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--ranks", type=int, default=4, help="MPI ranks (default 4)")
    p.add_argument(
        "--collectives",
        default="mpi,gloo,bls:0",
        help="comma list of name[:L[:transport[:wait]]] (default mpi,gloo,bls:0)",
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
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per launch")
    p.add_argument("--out", type=Path, help="append the raw JSON lines here")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        return _worker_main(argv[1:])
    args = build_parser().parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    specs = [CollectiveSpec.parse(t) for t in args.collectives.split(",")]
    rows: list[dict] = []
    jobs = [(rep, spec) for rep in range(args.reps) for spec in specs]
    with tempfile.TemporaryDirectory() as tmp:
        for k, (rep, spec) in enumerate(tqdm(jobs, desc="bench-a2a", disable=None)):
            for row in _run_one(spec, args, Path(tmp) / f"{k}.jsonl"):
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


def _worker_main(argv: list[str]) -> int:
    p = build_parser(argparse.ArgumentParser(prog="bench_a2a worker"))
    p.add_argument("--collective", required=True, help="one name[:L[:transport[:wait]]]")
    p.add_argument("--result", required=True, help="file for rank 0's JSON lines")
    _worker(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(_worker_main(sys.argv[2:]))
    sys.exit(main())
