"""Run logs: typed records, the JSON-lines writer of one rank, and the strict reader of a run.

Every number in the tables and figures comes from these logs, so the format is a contract
between the inference loop (writer) and :mod:`bls_dlrm.analysis.tables` (reader):

- one file per rank and run, ``<run_dir>/rank{r}.jsonl``, one JSON object per line;
- first line a :class:`Header` (``"record": "header"``, ``"schema": 1``), then one
  :class:`Iteration` per iteration in order ``0..n-1`` (warm-up iterations first), last line
  a :class:`Footer` with totals over the measured iterations. A file without a footer is an
  incomplete run;
- times are seconds from ``time.monotonic()``: one clock per host, shared by the ranks of a
  host, so times of ranks on one host can be compared directly. To compare hosts, each
  rank's offset to rank 0's clock is measured through MPI at the start and at the end of a
  run (:mod:`bls_dlrm.logs.clocks`) and logged in the header and the footer
  (``clock_offset_s``, ``clock_error_s``, ``clock_sync_t``); the wall-clock
  ``started_utc`` is provenance only.

A log is written as ``rank{r}.jsonl.partial``, flushed line by line so a killed rank leaves
what it had done, and renamed to ``rank{r}.jsonl`` only after the footer is written and
synced. An interrupted run therefore never leaves a file that looks complete, and the
workflow can tell finished runs from broken ones by file name alone (:func:`is_complete`).

The reader (:func:`read_run`) is strict on purpose: a figure drawn from a half-written or
mixed-up run folder is worse than an error naming the file and line.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Self, TextIO

import msgspec

__all__ = [
    "BINDINGS",
    "COLLECTIVES",
    "SCHEMA_VERSION",
    "ClockSync",
    "Footer",
    "Header",
    "IncompleteRunError",
    "Iteration",
    "LogFormatError",
    "RankLog",
    "RunLog",
    "RunLogWriter",
    "git_revision",
    "is_complete",
    "partial_path",
    "rank_path",
    "read_rank",
    "read_run",
    "runtime_versions",
]

SCHEMA_VERSION = 1
COLLECTIVES = ("gloo", "mpi", "bls")
BINDINGS = ("core", "none")  # how ranks were placed: bound one per core, or not bound
CLOCK = "time.monotonic"

_RANK_FILE = re.compile(r"^rank(\d+)\.jsonl$")
_PARTIAL_FILE = re.compile(r"^rank(\d+)\.jsonl\.partial$")
_HEX = re.compile(r"[0-9a-f]+")


class LogFormatError(ValueError):
    """A log line or record breaks the format; the message starts with ``file:line``."""


class IncompleteRunError(ValueError):
    """A run folder lacks a finished log for some rank (missing, ``.partial`` or no footer).

    The message names the run folder and every affected rank file with the reason, so the
    workflow can report which run to redo.
    """


def rank_path(run_dir: str | os.PathLike[str], rank: int) -> Path:
    """Path of rank ``rank``'s finished log in ``run_dir``."""
    return Path(run_dir) / f"rank{rank}.jsonl"


def partial_path(run_dir: str | os.PathLike[str], rank: int) -> Path:
    """Path of rank ``rank``'s log while it is being written."""
    return Path(run_dir) / f"rank{rank}.jsonl.partial"


# --------------------------------------------------------------------------------------
# Records
#
# The record types are msgspec Structs: their annotations are the log's schema, and the
# reader decodes each line straight into them (types, required fields and ranges checked by
# msgspec). What a type cannot say (pipeline order of the times, the footer adding up, one
# run across ranks) is checked by the reader below. The writer still produces the lines
# with ``json.dumps`` of ``to_dict()``, so logs keep their exact bytes.

_Count = Annotated[int, msgspec.Meta(ge=0)]
_Seconds = Annotated[float, msgspec.Meta(ge=0)]
_HexDigest = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]+$")]


class ClockSync(NamedTuple):
    """One measurement of a rank's monotonic clock against rank 0's.

    ``offset_s`` is this rank's clock minus rank 0's (a time ``t`` on this rank is
    ``t - offset_s`` on rank 0's clock), ``error_s`` bounds how far the true offset can be
    from it (half the round trip it was measured with), ``t`` is this rank's clock reading
    at the measurement. Rank 0 logs ``(0, 0, t)``.
    """

    offset_s: float
    error_s: float
    t: float

    def fields(self) -> dict[str, float]:
        """The record fields that carry it."""
        return {
            "clock_offset_s": self.offset_s,
            "clock_error_s": self.error_s,
            "clock_sync_t": self.t,
        }


_CLOCK_FIELDS = ("clock_offset_s", "clock_error_s", "clock_sync_t")


def _clock_sync(record: Any) -> ClockSync | None:
    values = [getattr(record, name) for name in _CLOCK_FIELDS]
    if all(v is None for v in values):
        return None
    return ClockSync(*values)


def _clock_problem(record: Any) -> str | None:
    """Why the clock fields of a header or footer are unusable, or None if they are fine."""
    values = [getattr(record, name) for name in _CLOCK_FIELDS]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        return f"clock fields {', '.join(_CLOCK_FIELDS)} go together (some are missing)"
    for name, v in zip(_CLOCK_FIELDS, values, strict=True):
        if not math.isfinite(v):
            return f"field {name!r} must be a finite number, got {v!r}"
    if values[1] < 0:
        return f"field 'clock_error_s' must be >= 0, got {values[1]!r}"
    return None


class Header(msgspec.Struct, tag_field="record", tag="header"):
    """What a run was: identity, full resolved config, software and clock.

    ``lag_bound`` is the BLS bound ``L`` (None for the synchronous baselines, which behave
    as ``L = 0``, or for an unbounded BLS run). ``t0`` is the monotonic clock reading taken
    together with the wall-clock ``started_utc`` (provenance: when the run was made). The
    clock fields hold the offset to rank 0's clock measured right before the run
    (:class:`ClockSync`); the footer holds the one measured right after it.
    """

    run_id: str
    rank: _Count
    world_size: _Count
    collective: str
    lag_bound: _Count | None
    config: dict[str, Any]
    versions: dict[str, Any]
    host: str
    git_rev: str | None
    clock: str
    t0: float
    started_utc: str
    # Optional (absent from older logs, read as None): the run's place in a launch of
    # several series and where it ran. ``series_order`` lists the series labels in the
    # order this launch ran them, ``series_index`` is this run's position in it and
    # ``shuffle_seed`` the seed that shuffled it; ``cores`` are the CPU ids this rank may
    # run on (its affinity), ``cores_per_rank`` their number, ``binding`` "core" (one rank
    # bound per core) or "none".
    series_order: list[str] | None = None
    series_index: _Count | None = None
    shuffle_seed: int | None = None
    cores: list[_Count] | None = None
    cores_per_rank: _Count | None = None
    binding: str | None = None
    # Open loop only (`bls-dlrm serve`): the instant this rank counts arrivals from, on its
    # own monotonic clock (the end of a barrier plus a margin); per rank, not in config.
    t_origin: float | None = None
    # Optional (absent from older logs, read as None; all three or none): this rank's
    # monotonic clock against rank 0's, measured through MPI right before the run
    # (:class:`ClockSync`; the footer has the one measured right after it).
    clock_offset_s: float | None = None
    clock_error_s: float | None = None
    clock_sync_t: float | None = None
    # The log format version; the reader refuses any other (and a header without it).
    schema: int = SCHEMA_VERSION

    @classmethod
    def new(
        cls,
        *,
        run_id: str,
        rank: int,
        world_size: int,
        collective: str,
        lag_bound: int | None,
        config: dict[str, Any],
        versions: dict[str, Any] | None = None,
        host: str | None = None,
        git_rev: str | Literal["auto"] | None = "auto",
        series_order: list[str] | None = None,
        series_index: int | None = None,
        shuffle_seed: int | None = None,
        cores: list[int] | None = None,
        cores_per_rank: int | None = None,
        binding: str | None = None,
        t_origin: float | None = None,
        clock_sync: ClockSync | None = None,
    ) -> Header:
        """A header stamped now: clock reading, UTC time, host, versions and git revision.

        The inference loop calls this right before its first iteration, so ``t0`` and
        ``started_utc`` describe the same instant. Pass ``git_rev=None`` to record that the
        revision is unknown without asking git; the default ``"auto"`` asks git.
        ``clock_sync`` is the offset to rank 0's clock measured right before the run
        (:func:`bls_dlrm.logs.clocks.measure`).
        """
        t0 = time.monotonic()
        started = datetime.now(UTC).isoformat()
        header = cls(
            run_id=run_id,
            rank=rank,
            world_size=world_size,
            collective=collective,
            lag_bound=lag_bound,
            config=config,
            versions=runtime_versions() if versions is None else versions,
            host=socket.gethostname() if host is None else host,
            git_rev=git_revision() if git_rev == "auto" else git_rev,
            clock=CLOCK,
            t0=t0,
            started_utc=started,
            series_order=series_order,
            series_index=series_index,
            shuffle_seed=shuffle_seed,
            cores=cores,
            cores_per_rank=cores_per_rank,
            binding=binding,
            t_origin=t_origin,
            **(clock_sync.fields() if clock_sync is not None else {}),
        )
        header.validate()
        return header

    @property
    def clock_sync(self) -> ClockSync | None:
        """The offset to rank 0's clock measured before the run (None in older logs)."""
        return _clock_sync(self)

    def validate(self) -> None:
        """Raise ValueError if a field has a value no reader would accept."""
        _check_header(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The header line as a JSON-ready dict (with ``record`` and ``schema``)."""
        return (
            {
                "record": "header",
                "schema": self.schema,
                "run_id": self.run_id,
                "rank": self.rank,
                "world_size": self.world_size,
                "collective": self.collective,
                "lag_bound": self.lag_bound,
                "config": self.config,
                "versions": self.versions,
                "host": self.host,
                "git_rev": self.git_rev,
                "clock": self.clock,
                "t0": self.t0,
                "started_utc": self.started_utc,
                "series_order": self.series_order,
                "series_index": self.series_index,
                "shuffle_seed": self.shuffle_seed,
                "cores": self.cores,
                "cores_per_rank": self.cores_per_rank,
                "binding": self.binding,
            }
            | ({"t_origin": self.t_origin} if self.t_origin is not None else {})
            | _clock_dict(self)
        )


class Iteration(msgspec.Struct, tag_field="record", tag="iteration", gc=False):
    """One iteration on one rank: phase times, waits, delay, lag and predictions checksum.

    Times (``t_*``) are monotonic clock readings in seconds:

    - ``t_start``: the iteration's local work starts;
    - ``t_lookup``: its embedding lookups are done;
    - ``t_posted``: its exchange is posted;
    - ``t_bottom``: its bottom MLP is done;
    - ``t_completed``: its exchange completed on this rank (all pieces arrived);
    - ``t_done``: its predictions are done.

    Under a lag bound ``L > 0`` the last two may fall after later iterations have started.
    ``wait_s`` is the time blocked in the collective for this iteration's completion,
    ``delay_s`` the injected delay, ``compute_s`` the local work (lookup + bottom MLP +
    interaction/top MLP, waits and delay excluded). ``lag`` is how many iterations this rank
    was ahead of the slowest peer when it blocked (0 if it did not block). ``checksum`` is a
    hex digest of the prediction bytes of this rank's batch slice: equal checksums across
    collectives and lag bounds show that predictions are bit-identical.
    """

    iteration: _Count
    warmup: bool
    samples: _Count
    t_start: float
    t_lookup: float
    t_posted: float
    t_bottom: float
    t_completed: float
    t_done: float
    wait_s: _Seconds
    delay_s: _Seconds
    compute_s: _Seconds
    lag: _Count
    checksum: _HexDigest
    # Open loop only (`bls-dlrm serve`; absent from closed-loop logs, read as None): when the
    # batch closed (monotonic, like t_start: its last query had arrived or it had waited
    # long enough) and its global size in samples (``samples`` is this rank's slice).
    t_close: float | None = None
    batch_samples: _Count | None = None

    def to_dict(self) -> dict[str, Any]:
        """The iteration line as a dict of primitives (cheap: called inside the timed loop)."""
        if self.t_close is not None:
            return self._base_dict() | {
                "t_close": self.t_close,
                "batch_samples": self.batch_samples,
            }
        return self._base_dict()

    def _base_dict(self) -> dict[str, Any]:
        return {
            "record": "iteration",
            "iteration": self.iteration,
            "warmup": self.warmup,
            "samples": self.samples,
            "t_start": self.t_start,
            "t_lookup": self.t_lookup,
            "t_posted": self.t_posted,
            "t_bottom": self.t_bottom,
            "t_completed": self.t_completed,
            "t_done": self.t_done,
            "wait_s": self.wait_s,
            "delay_s": self.delay_s,
            "compute_s": self.compute_s,
            "lag": self.lag,
            "checksum": self.checksum,
        }


class Footer(msgspec.Struct, tag_field="record", tag="footer", gc=False):
    """Totals of one rank's log; its presence is what makes the log complete.

    ``iterations`` counts all iterations (warm-up included); the other totals are over the
    measured ones. ``elapsed_s`` runs from the first measured ``t_start`` to the last
    ``t_done`` on this rank (0 without measured iterations). The clock fields (optional,
    as in the header) hold the offset to rank 0's clock measured right after the run.
    """

    iterations: _Count
    measured_iterations: _Count
    samples: _Count
    elapsed_s: _Seconds
    wait_s: _Seconds
    delay_s: _Seconds
    compute_s: _Seconds
    status: str = "ok"
    clock_offset_s: float | None = None
    clock_error_s: float | None = None
    clock_sync_t: float | None = None

    @classmethod
    def summarise(cls, iterations: list[Iteration]) -> Footer:
        """The footer that belongs to these iterations (what the reader checks against)."""
        totals = _Totals()
        for it in iterations:
            totals.add(it)
        return totals.footer()

    @property
    def clock_sync(self) -> ClockSync | None:
        """The offset to rank 0's clock measured after the run (None in older logs)."""
        return _clock_sync(self)

    def to_dict(self) -> dict[str, Any]:
        """The footer line as a JSON-ready dict."""
        return {
            "record": "footer",
            "iterations": self.iterations,
            "measured_iterations": self.measured_iterations,
            "samples": self.samples,
            "elapsed_s": self.elapsed_s,
            "wait_s": self.wait_s,
            "delay_s": self.delay_s,
            "compute_s": self.compute_s,
            "status": self.status,
        } | _clock_dict(self)


def _clock_dict(record: Header | Footer) -> dict[str, float]:
    """The clock fields of a header or footer for its line (none if not measured)."""
    sync = record.clock_sync
    return {} if sync is None else sync.fields()


@dataclass(slots=True)
class _Totals:
    """Running sums for the footer, kept by the writer so closing costs nothing extra."""

    iterations: int = 0
    measured: int = 0
    samples: int = 0
    wait_s: float = 0.0
    delay_s: float = 0.0
    compute_s: float = 0.0
    first_start: float | None = None
    last_done: float | None = None

    def add(self, it: Iteration) -> None:
        self.iterations += 1
        if it.warmup:
            return
        self.measured += 1
        self.samples += it.samples
        self.wait_s += it.wait_s
        self.delay_s += it.delay_s
        self.compute_s += it.compute_s
        if self.first_start is None:
            self.first_start = it.t_start
        if self.last_done is None or it.t_done > self.last_done:
            self.last_done = it.t_done

    def footer(self) -> Footer:
        elapsed = 0.0
        if self.first_start is not None and self.last_done is not None:
            elapsed = self.last_done - self.first_start
        return Footer(
            iterations=self.iterations,
            measured_iterations=self.measured,
            samples=self.samples,
            elapsed_s=elapsed,
            wait_s=self.wait_s,
            delay_s=self.delay_s,
            compute_s=self.compute_s,
            status="ok",
        )


# --------------------------------------------------------------------------------------
# Environment stamps for the header


def runtime_versions() -> dict[str, Any]:
    """Versions of python, torch, numpy, mpi4py and the MPI library, for the header.

    Package versions come from installed metadata, so nothing heavy is imported. The MPI
    library string is only read if ``mpi4py.MPI`` is already imported: importing it here
    would initialise MPI as a side effect.
    """
    versions: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for package in ("torch", "numpy", "mpi4py", "mpich"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    mpi = sys.modules.get("mpi4py.MPI")
    library = None
    if mpi is not None:
        try:
            library = " ".join(mpi.Get_library_version().split())
        except Exception:  # an MPI that cannot answer is recorded as unknown, not fatal
            library = None
    versions["mpi_library"] = library
    return versions


def git_revision(path: str | os.PathLike[str] | None = None) -> str | None:
    """The checked-out git commit of the source tree (``-dirty`` if modified), else None.

    Runs from an installed package or an exported archive have no repository; the header
    then records None rather than failing the run.
    """
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = rev.stdout.strip()
    if not commit:
        return None
    return commit + ("-dirty" if status.returncode == 0 and status.stdout.strip() else "")


# --------------------------------------------------------------------------------------
# Writer


def _dumps(record: dict[str, Any]) -> str:
    # allow_nan=False: a NaN time is a bug in the loop and must fail where it happens.
    return json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"


class RunLogWriter:
    """Writes one rank's log: header at open, one line per iteration, footer at close.

    Use as a context manager::

        with RunLogWriter(run_dir, header) as log:
            for ...:
                log.write(Iteration(...))
            log.close()            # or log.close(footer)

    Lines go to ``rank{r}.jsonl.partial``, line-buffered so every record reaches the OS as
    soon as it is written: a rank killed with ``kill -9`` leaves its log up to its last
    iteration. :meth:`close` writes the footer, fsyncs and renames the file to
    ``rank{r}.jsonl`` in one atomic step. Leaving the context by an exception, or without
    calling :meth:`close`, appends an ``incomplete`` record with the reason and keeps the
    ``.partial`` name. A finished log of the same rank left by an earlier attempt is removed
    at open, so a run folder never mixes attempts.
    """

    def __init__(self, run_dir: str | os.PathLike[str], header: Header) -> None:
        header.validate()
        first_line = _dumps(header.to_dict())  # a config that is not JSON fails before any file
        self.run_dir = Path(run_dir)
        self.header = header
        self.rank = header.rank
        self.path = rank_path(self.run_dir, self.rank)
        self.partial = partial_path(self.run_dir, self.rank)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self._file: TextIO | None = open(self.partial, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._totals = _Totals()
        self._next = 0
        self._closed = False
        self._file.write(first_line)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.abort("the log was left without close(): no footer was written")
            raise RuntimeError(
                f"{self.partial}: RunLogWriter left without close(); the log stays incomplete"
            )
        self.abort(f"{exc_type.__name__}: {exc}")

    @property
    def iterations_written(self) -> int:
        """How many iteration records this writer has written."""
        return self._next

    def write(self, iteration: Iteration) -> None:
        """Append one iteration record (numbers must follow 0, 1, 2, ...; warm-up first)."""
        f = self._file
        if f is None:
            raise ValueError(f"{self.partial}: write() after the log was closed")
        if iteration.iteration != self._next:
            raise ValueError(
                f"{self.partial}: iteration {iteration.iteration} written where "
                f"{self._next} was expected (iterations are logged in order, none skipped)"
            )
        if iteration.warmup and self._totals.measured:
            raise ValueError(
                f"{self.partial}: warm-up iteration {iteration.iteration} after measured ones"
            )
        f.write(_dumps(iteration.to_dict()))
        self._totals.add(iteration)
        self._next += 1

    def close(self, footer: Footer | None = None, *, clock_sync: ClockSync | None = None) -> Path:
        """Write the footer (computed from the written iterations if not given), sync, rename.

        A given footer must agree with the written iterations in its counts; a mismatch
        raises before the rename and leaves the log incomplete. ``clock_sync``, the offset
        to rank 0's clock measured after the run, goes into the footer. Returns the final
        path.
        """
        f = self._file
        if f is None:
            raise ValueError(f"{self.partial}: close() called twice")
        expected = self._totals.footer()
        if footer is None:
            footer = expected
        else:
            for name in ("iterations", "measured_iterations", "samples"):
                if getattr(footer, name) != getattr(expected, name):
                    raise ValueError(
                        f"{self.partial}: footer {name}={getattr(footer, name)} but the log "
                        f"holds {getattr(expected, name)}"
                    )
        if clock_sync is not None:
            footer = msgspec.structs.replace(footer, **clock_sync.fields())
        problem = _clock_problem(footer)
        if problem:
            raise ValueError(f"{self.partial}: footer {problem}")
        f.write(_dumps(footer.to_dict()))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._file = None
        os.replace(self.partial, self.path)
        _fsync_dir(self.run_dir)
        self._closed = True
        return self.path

    def abort(self, reason: str) -> None:
        """Mark the log incomplete with ``reason`` and close it, keeping the ``.partial`` name."""
        f = self._file
        self._closed = True
        if f is None:
            return
        self._file = None
        try:
            record = {
                "record": "incomplete",
                "reason": reason,
                "iterations_written": self._next,
                "utc": datetime.now(UTC).isoformat(),
            }
            f.write(_dumps(record))
            f.flush()
        finally:
            f.close()


def _fsync_dir(path: Path) -> None:
    """Make a rename durable; not every file system lets a directory be opened for this."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------
# Reader


@dataclass(slots=True)
class RankLog:
    """One rank's parsed and checked log."""

    path: Path
    header: Header
    iterations: list[Iteration]
    footer: Footer

    @property
    def measured(self) -> list[Iteration]:
        """The iterations after warm-up: the ones every statistic is computed from."""
        return [it for it in self.iterations if not it.warmup]


@dataclass(slots=True)
class RunLog:
    """A whole run: every rank's log, checked to belong together."""

    run_dir: Path
    ranks: list[RankLog] = field(default_factory=list)

    @property
    def header(self) -> Header:
        """Rank 0's header (run-wide fields are equal on every rank)."""
        return self.ranks[0].header

    @property
    def run_id(self) -> str:
        return self.header.run_id

    @property
    def world_size(self) -> int:
        return self.header.world_size

    @property
    def collective(self) -> str:
        return self.header.collective

    @property
    def lag_bound(self) -> int | None:
        return self.header.lag_bound

    @property
    def config(self) -> dict[str, Any]:
        return self.header.config

    def __iter__(self) -> Iterator[RankLog]:
        return iter(self.ranks)


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} is not allowed")


# For error messages only (the slow path): NaN and Infinity are not JSON and never valid in
# a log, and the plain parse tells what kind of record a broken line meant to be.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)

# Every line after the header: an iteration or the footer, told apart by ``record``.
_LINE_DECODER = msgspec.json.Decoder(Iteration | Footer)
_TYPES: dict[str, type[Iteration] | type[Footer]] = {"iteration": Iteration, "footer": Footer}

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]*)`$")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _lookup(record: Any, path: str) -> Any:
    """The value at a msgspec path such as ``.cores[1]`` (``...`` if it cannot be found)."""
    value = record
    for key, index in _STEP.findall(path):
        try:
            value = value[key] if key else value[int(index)]
        except (KeyError, IndexError, TypeError):
            return ...
    return value


def _explain(exc: msgspec.ValidationError, record: Any) -> str:
    """A validation error as ``field 'name': what was expected, got value``."""
    m = _AT.match(str(exc))
    assert m is not None  # the pattern matches any text
    msg, path = m["msg"], m["path"] or ""
    name = path.lstrip(".")
    if missing := _MISSING.match(msg):
        return f"missing field {f'{name}.' if name else ''}{missing['name']!r}"
    if not name:
        return msg
    value = _lookup(record, path)
    got = "" if value is ... else f" (value {value!r})"
    return f"field {name!r}: {msg[:1].lower()}{msg[1:]}{got}"


def _check_header(d: dict[str, Any]) -> Header:
    """A header record (a dict of one line) -> Header, or ValueError saying what is wrong."""
    schema = d.get("schema")
    if not _is_int(schema) or schema != SCHEMA_VERSION:
        raise ValueError(f"schema {schema!r} is not supported (this reader knows {SCHEMA_VERSION})")
    try:
        header = msgspec.convert(d, Header)
    except msgspec.ValidationError as exc:
        raise ValueError(_explain(exc, d)) from None
    if header.binding is not None and header.binding not in BINDINGS:
        raise ValueError(f"binding must be one of {', '.join(BINDINGS)}, got {header.binding!r}")
    order, index = header.series_order, header.series_index
    if order is not None and index is not None and index >= len(order):
        raise ValueError(
            f"series_index {index} is not below the {len(order)} entries of series_order"
        )
    if not header.run_id:
        raise ValueError("run_id must not be empty")
    if header.world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {header.world_size}")
    if header.rank >= header.world_size:
        raise ValueError(f"rank {header.rank} is not below world_size {header.world_size}")
    if header.collective not in COLLECTIVES:
        raise ValueError(
            f"collective must be one of {', '.join(COLLECTIVES)}, got {header.collective!r}"
        )
    if not math.isfinite(header.t0):
        raise ValueError(f"field 't0' must be a finite number, got {header.t0!r}")
    if problem := _clock_problem(header):
        raise ValueError(problem)
    try:
        datetime.fromisoformat(header.started_utc)
    except ValueError:
        raise ValueError(f"started_utc is not an ISO time: {header.started_utc!r}") from None
    return header


def _order_problem(it: Iteration) -> str | None:
    """Why the times of an iteration break the pipeline order, or None if they do not.

    The order every collective obeys: lookup, post, complete, predict; the bottom MLP runs
    somewhere between start and predictions.
    """
    order = [
        ("t_start", it.t_start),
        ("t_lookup", it.t_lookup),
        ("t_posted", it.t_posted),
        ("t_completed", it.t_completed),
        ("t_done", it.t_done),
    ]
    for (a, ta), (b, tb) in itertools.pairwise(order):
        if tb < ta:
            return f"{b}={tb!r} is before {a}={ta!r}"
    if not it.t_start <= it.t_bottom <= it.t_done:
        return f"t_bottom={it.t_bottom!r} is outside t_start..t_done"
    return None


def _footer_mismatch(footer: Footer, iterations: list[Iteration]) -> str | None:
    """Why the footer does not sum up the iterations, or None if it does."""
    expected = Footer.summarise(iterations)
    for name in ("iterations", "measured_iterations", "samples"):
        if getattr(footer, name) != getattr(expected, name):
            return (
                f"footer {name}={getattr(footer, name)} but the log holds {getattr(expected, name)}"
            )
    for name in ("elapsed_s", "wait_s", "delay_s", "compute_s"):
        got, want = getattr(footer, name), getattr(expected, name)
        if not math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
            return f"footer {name}={got!r} but the iterations sum to {want!r}"
    return None


def _parse_line(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        record = _DECODER.decode(line)
    except ValueError as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise LogFormatError(f"{path}:{lineno}: malformed JSON: {msg}") from None
    if not isinstance(record, dict):
        raise LogFormatError(f"{path}:{lineno}: a record must be a JSON object")
    return record


def _line_text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


def _slow_record(path: Path, lineno: int, line: bytes) -> Iteration | Footer:
    """A line after the header that the fast decoder refused: say exactly what is wrong.

    Parses the line as plain JSON to learn which record it meant to be, then validates it as
    that type; raises :class:`LogFormatError` (``file:line: kind: reason``).
    """
    record = _parse_line(path, lineno, _line_text(line))
    kind = record.get("record")
    where = f"{path}:{lineno}: {kind or 'record'}"
    if kind == "header":
        raise LogFormatError(f"{where}: second header record")
    if kind == "incomplete":
        raise LogFormatError(f"{where}: log marked incomplete ({record.get('reason')})")
    if kind not in _TYPES:
        raise LogFormatError(f"{where}: unknown record type {kind!r}")
    try:
        return msgspec.convert(record, _TYPES[kind])
    except msgspec.ValidationError as exc:
        raise LogFormatError(f"{where}: {_explain(exc, record)}") from None


def _incomplete_reason(path: Path) -> str:
    """Why a ``.partial`` log stopped: its ``incomplete`` record, or a guess from its end."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        return f"unreadable ({exc})"
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("record") == "incomplete":
            return f"stopped: {record.get('reason')}"
        if isinstance(record, dict) and record.get("record") == "iteration":
            return (
                f"stopped after iteration {record.get('iteration')} with no reason "
                "recorded (killed?)"
            )
        break
    return "stopped with no iteration and no reason recorded (killed?)"


def read_rank(path: str | os.PathLike[str]) -> RankLog:
    """Parse and check one finished rank log (``rank{r}.jsonl``).

    Raises :class:`LogFormatError` (``file:line: reason``) for malformed lines, wrong record
    order, missing or mistyped fields, non-contiguous iterations or a footer that does not
    sum up the iterations, and :class:`IncompleteRunError` if the footer is missing.
    """
    path = Path(path)
    lines = path.read_bytes().splitlines()
    if not lines:
        raise IncompleteRunError(f"{path}: empty log (no header, no footer)")
    first = _parse_line(path, 1, _line_text(lines[0]))
    kind = first.get("record")
    try:
        if kind != "header":
            raise ValueError(f"first record must be the header, got {kind!r}")
        header = _check_header(first)
    except ValueError as exc:
        raise LogFormatError(f"{path}:1: {kind or 'record'}: {exc}") from None
    footer: Footer | None = None
    iterations: list[Iteration] = []
    append = iterations.append
    decode = _LINE_DECODER.decode
    last_start = -math.inf
    measured = False
    for lineno, line in enumerate(lines[1:], start=2):
        if footer is not None:
            kind = _parse_line(path, lineno, _line_text(line)).get("record")
            raise LogFormatError(f"{path}:{lineno}: {kind!r} record after the footer")
        try:
            record = decode(line)
        except msgspec.DecodeError:
            record = _slow_record(path, lineno, line)
        try:
            if type(record) is Iteration:
                it = record
                if not (
                    it.t_start <= it.t_lookup <= it.t_posted <= it.t_completed <= it.t_done
                    and it.t_start <= it.t_bottom <= it.t_done
                ):
                    raise ValueError(_order_problem(it))
                if it.iteration != len(iterations):
                    raise ValueError(
                        f"iteration {it.iteration} where {len(iterations)} was expected "
                        "(iterations must run 0, 1, 2, ... without gaps)"
                    )
                if it.warmup:
                    if measured:
                        raise ValueError(f"warm-up iteration {it.iteration} after measured ones")
                else:
                    measured = True
                if it.t_start < last_start:
                    raise ValueError(
                        f"iteration {it.iteration} starts before iteration {it.iteration - 1}"
                    )
                last_start = it.t_start
                append(it)
            else:
                footer = record
                if footer.status != "ok":
                    raise ValueError(f"status must be 'ok', got {footer.status!r}")
                if problem := _clock_problem(footer):
                    raise ValueError(problem)
                mismatch = _footer_mismatch(footer, iterations)
                if mismatch:
                    raise ValueError(mismatch)
        except ValueError as exc:
            what = "iteration" if type(record) is Iteration else "footer"
            raise LogFormatError(f"{path}:{lineno}: {what}: {exc}") from None
    if footer is None:
        raise IncompleteRunError(
            f"{path}: footer missing after {len(iterations)} iterations (run did not finish)"
        )
    return RankLog(path=path, header=header, iterations=iterations, footer=footer)


def _scan(run_dir: Path) -> tuple[dict[int, Path], dict[int, Path]]:
    """Finished and partial rank logs in a folder, by rank."""
    done: dict[int, Path] = {}
    partial: dict[int, Path] = {}
    for entry in run_dir.iterdir():
        if m := _RANK_FILE.match(entry.name):
            done[int(m.group(1))] = entry
        elif m := _PARTIAL_FILE.match(entry.name):
            partial[int(m.group(1))] = entry
    return done, partial


def read_run(run_dir: str | os.PathLike[str]) -> RunLog:
    """Read and cross-check every rank's log of one run folder.

    The world size comes from the headers. Raises :class:`IncompleteRunError` naming the
    run folder and each affected rank (missing file, only ``.partial``, footer missing) and
    :class:`LogFormatError` for malformed logs or logs that do not belong together
    (different run_id, config, collective, lag bound, world size or iteration count).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    done, partial = _scan(run_dir)
    problems: list[tuple[int, str]] = []
    for rank in sorted(partial):
        reason = _incomplete_reason(partial[rank])
        if rank in done:
            problems.append((rank, f"{partial[rank].name} is being written ({reason})"))
        else:
            problems.append((rank, f"only {partial[rank].name} exists ({reason})"))
    logs: dict[int, RankLog] = {}
    for rank in sorted(set(done) - set(partial)):
        try:
            log = read_rank(done[rank])
        except IncompleteRunError:
            problems.append((rank, f"{done[rank].name} has no footer"))
            continue
        if log.header.rank != rank:
            raise LogFormatError(f"{log.path}:1: header says rank {log.header.rank}")
        logs[rank] = log
    world_sizes = {log.header.world_size for log in logs.values()}
    if len(world_sizes) > 1:
        raise LogFormatError(
            f"{run_dir}: rank logs disagree on world_size: "
            + ", ".join(f"{log.path.name}={log.header.world_size}" for log in logs.values())
        )
    # Without a readable header the highest rank file seen is the best guess of the size.
    world_size = world_sizes.pop() if world_sizes else max([*done, *partial], default=-1) + 1
    if world_size == 0:
        raise IncompleteRunError(f"{run_dir}: no rank logs (rank*.jsonl) in the run folder")
    extra = sorted(r for r in {*done, *partial} if r >= world_size)
    if extra:
        raise LogFormatError(
            f"{run_dir}: logs of ranks {extra} beyond world_size {world_size} "
            "(left over from another run?)"
        )
    for rank in range(world_size):
        if rank not in done and rank not in partial:
            problems.append((rank, f"rank{rank}.jsonl missing"))
    if problems:
        raise IncompleteRunError(
            f"incomplete run {run_dir}: "
            + "; ".join(f"rank {rank}: {why}" for rank, why in sorted(problems))
        )
    ranks = [logs[r] for r in range(world_size)]
    _check_consistent(run_dir, ranks)
    return RunLog(run_dir=run_dir, ranks=ranks)


def _check_consistent(run_dir: Path, ranks: list[RankLog]) -> None:
    """Logs of one run must describe the same run and the same iteration sequence."""
    first = ranks[0]
    for log in ranks[1:]:
        for name in ("run_id", "collective", "lag_bound", "config", "clock"):
            a, b = getattr(first.header, name), getattr(log.header, name)
            if a != b:
                shown = "" if name == "config" else f" ({a!r} vs {b!r})"
                raise LogFormatError(
                    f"{run_dir}: {first.path.name} and {log.path.name} disagree on {name}{shown}"
                )
        if len(log.iterations) != len(first.iterations):
            raise LogFormatError(
                f"{run_dir}: {first.path.name} has {len(first.iterations)} iterations, "
                f"{log.path.name} has {len(log.iterations)}"
            )
        for a, b in zip(first.iterations, log.iterations, strict=True):
            if a.warmup != b.warmup:
                raise LogFormatError(
                    f"{run_dir}: iteration {a.iteration} is warm-up in {first.path.name} "
                    f"but not in {log.path.name} (or the reverse)"
                )


def _last_line(path: Path) -> bytes:
    """The last non-empty line of a file, read from its end (logs can be long)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        block = min(size, 65536)
        f.seek(size - block)
        tail = f.read(block)
    lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
    return lines[-1]


def is_complete(run_dir: str | os.PathLike[str]) -> bool:
    """True only if every rank's log of the run is finished (renamed and ending in a footer).

    A cheap check for the workflow: reads rank 0's header for the world size and each
    file's last line; :func:`read_run` does the full validation.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    done, partial = _scan(run_dir)
    if partial or 0 not in done:
        return False
    try:
        with open(done[0], encoding="utf-8") as f:
            header = json.loads(f.readline())
        world_size = header["world_size"]
        if not _is_int(world_size) or world_size < 1 or set(done) != set(range(world_size)):
            return False
        for path in done.values():
            last = json.loads(_last_line(path))
            if not isinstance(last, dict) or last.get("record") != "footer":
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True
