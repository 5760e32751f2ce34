"""Run logs: the typed records and the JSON-lines writer of one rank.

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

The strict reader is :mod:`bls_dlrm.logs.reading`.
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

from bls_dlrm.logs.provenance import git_revision, runtime_versions

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
