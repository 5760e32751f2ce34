"""One rank's distributed DLRM inference loop: where the model meets the collective.

``mpiexec -bind-to core -n P bls-dlrm infer --config run.yaml [--set key=value ...] --out OUT``

Model-parallel tables, data-parallel MLPs (DESIGN.md, "DLRM inference"): rank ``r`` holds
the tables its sharding plan gives it and looks them up for the *global* batch; the
alltoallv hands every rank its batch slice of every table; each rank then runs the bottom
MLP, the interaction and the top MLP on its own slice.

The exchange goes through ``torch.distributed``, as in the reference DLRM: every series is
the same loop on a process group of another backend. Per iteration ``i``::

    delay(i) -> lookup(i) -> dist.all_to_all_single(..., async_op=True) -> bottom MLP(i)
    -> wait the oldest Work while more than L are in flight -> finish, in order and
    without waiting, every later Work whose is_completed() is already true
    -> interaction + top MLP for each finished one -> predictions

and the Works still in flight are waited at the end (drain). ``L`` is the series' lag
bound, 0 for the synchronous series, so every synchronous series overlaps its exchange with
the bottom MLP exactly as BLS with ``L = 0`` does: it is the same code.

Series (``series`` key; default: the one series of ``collective`` and ``lag_bound``):

- ``gloo``: torch's gloo backend;
- ``mpi``: the synchronous MPI backend ``mpisync`` (mpi4py ``Alltoallv``);
- ``bls:L``: the BLS backend ``bls`` with lag bound ``L`` (``BLSOptions(lag_bound=L)``).

One launch builds the model, shards and dataset once, creates one process group per series
up front (the default group is gloo; then ``dist.new_group`` per series, in the listed
order on every rank) and runs the series in an order shuffled by
``numpy.random.default_rng(shuffle_seed + repetition)``, with a barrier between series.
With a ``series`` list each series writes its own run folder ``OUT/<label>/`` (labels
``gloo``, ``mpi``, ``bls-L4``); without it the logs go to ``OUT`` itself.

The injected delay is work at the start of the iteration, before the lookups (one
documented point, logged as ``delay_s``, the measured duration): by default the rank
computes on its own core (``delay.mode: busy``), or it sleeps (``delay.mode: sleep``).
Warm-up iterations run the same loop but are flagged in the log and left out of every
measure. When a run asks for more iterations than the dataset holds batches, batches are
reused cyclically.

Each rank writes ``rank{r}.jsonl`` (:mod:`bls_dlrm.logs.records`), with a checksum of its
predictions per iteration: equal checksums across series are the bit-identity that the
tests assert. The header records the series order, the rank's cores and the binding.

"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bls_dlrm.run.config import ConfigError, RunConfig, add_config_arguments, keys_help, load_config
from bls_dlrm.run.pipeline import make_context, open_groups, run_series, say_once


def run(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    predictions_out: str | Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run every series of ``cfg`` on this rank (under mpiexec).

    Returns ``{"footers": {label: path}, "order": [labels]}`` (and ``"footer"``, the last
    one's path). With a ``series`` list, logs go to ``out_dir/<label>/`` and predictions
    (if asked for) to ``predictions_out/<label>/``; without it, to the folders themselves.
    """
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    ctx = make_context(cfg, cfg.warmup + cfg.iterations)
    multi = cfg.series is not None
    order = cfg.series_order()
    groups, close_groups = open_groups(cfg, cfg.series_list())
    footers: dict[str, str] = {}
    # No cleanup on an error: a clean shutdown drains the groups, that is, waits once more
    # (up to timeout_s) for the very peers that failed. The error ends the whole job
    # instead (`bls-dlrm` aborts MPI_COMM_WORLD on any exception of a multi-rank run).
    for index, s in enumerate(order):
        out = Path(out_dir) / s.folder if multi else Path(out_dir)
        preds = None
        if predictions_out is not None:
            preds = Path(predictions_out) / s.folder if multi else Path(predictions_out)
        comm.Barrier()
        footers[s.folder] = str(
            run_series(ctx, s, groups[s.folder], out, preds, order, index, progress)
        )
    comm.Barrier()
    close_groups()
    return {
        "footers": footers,
        "order": [s.folder for s in order],
        "footer": footers[order[-1].folder],
    }


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="bls-dlrm infer")
    p.description = __doc__
    p.epilog = keys_help()
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_config_arguments(p, "YAML run config (run keys: below)", "run folder for the logs")
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
        say_once(f"bls-dlrm infer: bad config: {exc}")
        return 2
    run(cfg, args.out, predictions_out=args.predictions, progress=args.progress)
    return 0
