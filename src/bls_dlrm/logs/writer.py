"""The JSON-lines writer of one rank's log: line by line to ``rank{r}.jsonl.partial``,
flushed so a killed rank leaves what it had done, renamed to ``rank{r}.jsonl`` only after
the footer is written and synced (see :mod:`bls_dlrm.logs.records` for the format)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TextIO

import msgspec

from bls_dlrm.logs.records import (
    ClockSync,
    Footer,
    Header,
    Iteration,
    _clock_problem,
    _Totals,
    partial_path,
    rank_path,
)


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
