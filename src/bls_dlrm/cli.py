"""``bls-dlrm``: the artifact's command line.

Subcommands, in the order the workflow uses them:

- ``make-data``   write a synthetic dataset (uniform or Zipf indices, pooling skew)
- ``criteo``      fetch (URL or local file, checksum) and preprocess Criteo Kaggle/Terabyte
- ``infer``       one distributed inference run (start it under ``mpiexec -n P``)
- ``serve``       open-loop serving: query latency under offered load (``mpiexec -n P``)
- ``tables``      run logs -> tidy Parquet tables
- ``serve-tables`` serving reports (serve.json) -> serving and capacity tables
- ``bench-a2a``   alltoallv benchmark: gloo vs mpi vs bls (launches its own ranks)
- ``bench-model`` single-process DLRM inference throughput
- ``bench-hosts`` the same DLRM launches on one host and on namespace hosts (root)
- ``bench-torchrec`` TorchRec's sharded DLRM: its own forward over gloo and mpisync against
  the pipelined loop over bls (needs the TorchRec extra; see :mod:`bls_dlrm.torchrec`)
- ``ideal``       ideal speedup of a lag bound on a delay schedule (theory, no MPI)
- ``mpiexec``     this environment's ``mpiexec``; inside a Slurm job whose node layout a job
  step removed (Snakemake's Slurm executor does), restored first from ``scontrol``, so
  the ranks spread over the allocation's nodes (see :mod:`bls_dlrm.launch`)

Errors in a multi-rank run: an exception on any rank (a timeout, a count mismatch, an error
in the model code) is printed with the rank and ends the whole MPI job
(``MPI.COMM_WORLD.Abort``), so that every rank exits non-zero within seconds of the first
error, even when a peer is stuck (alive but not posting) and would otherwise keep the others
waiting in ``MPI_Finalize``. Logs of such a run stay ``rank*.jsonl.partial``. Errors found
before any MPI work (a bad config or option) end with exit status 2, as in a single process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

# Set by MPICH's hydra (and other PMI launchers) in every rank it starts.
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "MPI_LOCALNRANKS")


def _make_data(args: argparse.Namespace) -> int:
    from bls_dlrm.data import generate_synthetic
    from bls_dlrm.model import get_config

    overrides = {"seed": args.model_seed}
    if args.max_rows is not None:
        overrides["max_rows"] = args.max_rows
    config = get_config(args.model, **overrides)
    out = generate_synthetic(
        args.out,
        config,
        args.batches,
        args.batch_size,
        args.seed,
        index_dist=args.index_dist,
        zipf_alpha=args.zipf_alpha,
        zipf_alpha_range=args.zipf_alpha_range,
        pooling=args.pooling,
        pooling_k=args.pooling_k,
        pooling_max=args.pooling_max,
        pooling_sigma=args.pooling_sigma,
        per_table=args.per_table,
        overwrite=args.overwrite,
    )
    print(out)
    return 0


def _per_table(text: str) -> dict[int, dict]:
    """``--per-table`` JSON: {"table id": {knob: value}} -> {int: dict}."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--per-table is not JSON: {exc}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise argparse.ArgumentTypeError('--per-table needs {"table id": {knob: value}}')
    try:
        return {int(t): v for t, v in raw.items()}
    except ValueError:
        raise argparse.ArgumentTypeError("--per-table keys must be table ids") from None


def _criteo(args: argparse.Namespace) -> int:
    from bls_dlrm.data import fetch, preprocess_criteo
    from bls_dlrm.data.criteo import prepare_source

    src = Path(args.source)
    if args.record is not None:  # verified once, then trusted while the file is unchanged
        if args.sha256 is None:
            raise ValueError("--record needs --sha256")
        src = prepare_source(
            args.source,
            args.sha256,
            args.record,
            fetch_to=args.fetch_to,
            member=args.member,
            kind=args.kind,
        )
    elif args.fetch_to is not None:
        src = fetch(args.source, args.fetch_to, sha256=args.sha256, member=args.member)
    if args.verify_only:
        print(src)
        return 0
    if args.out is None:
        raise ValueError("--out is required (unless --verify-only)")
    out = preprocess_criteo(
        src,
        args.out,
        batch_size=args.batch_size,
        kind=args.kind,
        max_rows=args.max_rows,
        limit=args.limit,
        overwrite=args.overwrite,
    )
    print(out)
    return 0


def _bench_model(args: argparse.Namespace) -> int:
    from bls_dlrm.harness.bench_model import bench_single_process

    for pooling in args.pooling:
        result = bench_single_process(
            args.model, args.max_rows, args.batch_size, pooling, threads=args.threads
        )
        print(json.dumps(result))
    return 0


def _ideal(args: argparse.Namespace) -> int:
    import numpy as np

    from bls_dlrm import theory
    from bls_dlrm.delays import DelaySpec

    spec = DelaySpec.from_dict(
        {"kind": args.schedule, "size_s": args.delay_factor * args.work_s, "seed": args.seed}
    )
    work = args.work_s + spec.schedule(args.ranks, args.iterations)
    for lag in args.lag_bounds:
        row = {
            "schedule": args.schedule,
            "ranks": args.ranks,
            "lag_bound": lag,
            "ideal_speedup": theory.ideal_speedup(work, lag),
            "ideal_makespan_s": theory.ideal_makespan(work, lag),
            "sync_makespan_s": theory.makespan_sync(work),
            "mean_work_s": float(np.mean(work)),
        }
        print(json.dumps(row))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bls-dlrm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("make-data", help="write a synthetic dataset")
    p.add_argument("--model", default="tiny", help="model config name (tiny, kaggle, terabyte)")
    p.add_argument("--max-rows", type=int, help="cap on rows per table")
    p.add_argument("--model-seed", type=int, default=0)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--index-dist", default="uniform", help="uniform or zipf")
    p.add_argument("--zipf-alpha", type=float, default=1.05, help="Zipf exponent of every table")
    p.add_argument(
        "--zipf-alpha-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="draw each table's Zipf exponent from [LO, HI] with the seed",
    )
    p.add_argument(
        "--pooling",
        default="fixed",
        help="fixed, uniform, heavy (per sample) or bursty (one heavy-tailed factor per "
        "table and batch)",
    )
    p.add_argument("--pooling-k", type=int, default=1, help="k (median of heavy/bursty)")
    p.add_argument("--pooling-max", type=int, help="cap on lookups per sample (heavy/bursty)")
    p.add_argument(
        "--pooling-sigma", type=float, default=1.0, help="lognormal shape (heavy/bursty)"
    )
    p.add_argument(
        "--per-table",
        type=_per_table,
        metavar="JSON",
        help='overrides per table id, e.g. \'{"2": {"pooling": "bursty", "pooling_k": 96}}\'',
    )
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_make_data)

    p = sub.add_parser("criteo", help="fetch and preprocess Criteo Kaggle or Terabyte")
    p.add_argument("source", help="URL or local path of train.txt / day_N (.gz allowed)")
    p.add_argument("--fetch-to", type=Path, help="copy/download the source here first")
    p.add_argument("--sha256", help="expected checksum of the fetched file")
    p.add_argument("--member", help="file to extract from a tar archive (e.g. train.txt)")
    p.add_argument(
        "--record",
        type=Path,
        help="verification record: check --sha256 once (also of a local file), reuse after",
    )
    p.add_argument(
        "--verify-only", action="store_true", help="check (and fetch) the source, no preprocessing"
    )
    p.add_argument("--kind", default="kaggle", choices=("kaggle", "terabyte"))
    p.add_argument("--max-rows", type=int, help="hashing range cap per table")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--limit", type=int, help="read only the first N samples")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--out", type=Path)
    p.set_defaults(func=_criteo)

    from bls_dlrm.run import infer

    p = sub.add_parser("infer", help="one distributed inference run (under mpiexec)")
    infer.build_parser(p)
    p.set_defaults(func=lambda a: infer.main(args=a))

    from bls_dlrm.run import serve

    p = sub.add_parser(
        "serve", help="query latency under offered load, capacity at a latency SLO (mpiexec)"
    )
    serve.build_parser(p)
    p.set_defaults(func=lambda a: serve.main(args=a))

    p = sub.add_parser("tables", help="run logs -> Parquet tables", add_help=False)
    p = sub.add_parser("serve-tables", help="serving reports -> Parquet tables", add_help=False)
    p = sub.add_parser(
        "mpiexec", help="this environment's mpiexec, Slurm node layout restored", add_help=False
    )
    p.set_defaults(func=None)

    p = sub.add_parser("bench-a2a", help="alltoallv benchmark: gloo vs mpi vs bls")
    from bls_dlrm.harness import bench_a2a

    bench_a2a.build_parser(p)
    p.set_defaults(func=bench_a2a.run)

    p = sub.add_parser("bench-hosts", help="DLRM launches on one host vs namespace hosts")
    from bls_dlrm.harness import bench_hosts

    bench_hosts.build_parser(p)
    p.set_defaults(func=bench_hosts.run)

    p = sub.add_parser("bench-torchrec", help="TorchRec over gloo/mpisync vs pipelined over bls")
    from bls_dlrm.torchrec import bench as bench_torchrec  # imports torchrec only when run

    bench_torchrec.add_arguments(p)
    p.set_defaults(func=bench_torchrec.main)

    p = sub.add_parser("bench-model", help="single-process inference throughput")
    p.add_argument("--model", default="kaggle")
    p.add_argument("--max-rows", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument(
        "--pooling", type=int, nargs="+", default=[1, 10], help="indices per lookup (one run each)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_bench_model)

    p = sub.add_parser("ideal", help="ideal speedup of lag bounds on a delay schedule")
    p.add_argument("--schedule", default="rotating")
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--work-s", type=float, default=0.01)
    p.add_argument("--delay-factor", type=float, default=2.5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lag-bounds", type=int, nargs="+", default=[0, 1, 2, 4, 8])
    p.set_defaults(func=_ideal)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tables"]:  # its own parser, so its --help is complete
        from bls_dlrm.analysis.collect import main_tables

        return main_tables(argv[1:])
    if argv[:1] == ["serve-tables"]:
        from bls_dlrm.run.serving import main_tables as serve_tables

        return serve_tables(argv[1:])
    if argv[:1] == ["mpiexec"]:  # every argument is mpiexec's
        from bls_dlrm.launch import exec_mpiexec

        try:
            exec_mpiexec(argv[1:])
        except (RuntimeError, FileNotFoundError) as exc:
            print(f"bls-dlrm mpiexec: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SystemExit as exc:
        if exc.code not in (None, 0) and _mpi_started():
            abort_job(args.command, exc)
        raise
    except (ValueError, FileNotFoundError) as exc:
        if _mpi_started():  # after MPI work began: a peer may be waiting for this rank
            abort_job(args.command, exc)
        # before any MPI work: a bad option or config, exit 2 on every rank (as in one process)
        print(f"bls-dlrm {args.command}: {exc}", file=sys.stderr)
        return 2
    except BaseException as exc:
        if _mpi_started() or _launched_ranks() > 1:
            abort_job(args.command, exc)
        raise


def _launched_ranks() -> int:
    """World size announced by an MPI launcher in the environment (1 if none)."""
    for var in _LAUNCHER_SIZE_VARS:
        try:
            return int(os.environ[var])
        except (KeyError, ValueError):
            continue
    return 1


def _mpi_started() -> bool:
    """True once this process has initialised MPI (and not yet finalised it).

    Never imports mpi4py itself: initialising MPI only to ask would make a rank wait for
    its peers in ``MPI_Init``.
    """
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized()


def abort_job(command: str, exc: BaseException) -> None:
    """Print ``exc`` with this rank's number and end the whole MPI job, if it has peers.

    Returns (without aborting) when the world has one rank, so the caller goes on with the
    single-process behaviour. MPI is initialised here if the error came before it was: the
    peers are then in (or on their way to) ``MPI_Init`` and the abort reaches them too.
    """
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size <= 1:
        return
    what = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SystemExit) else str(exc)
    # One write, the summary first: the launcher forwards output asynchronously and
    # MPI_Abort tears its proxies down, so a late line could be lost; the pause gives
    # the forwarding time on an error path that is about to end the job anyway.
    sys.stderr.write(
        f"bls-dlrm {command}: rank {rank} of {size} failed: {what}\n"
        + "".join(traceback.format_exception(exc))
        + f"bls-dlrm {command}: aborting all {size} ranks (MPI_Abort)\n"
    )
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(0.5)
    comm.Abort(1)


if __name__ == "__main__":
    sys.exit(main())
