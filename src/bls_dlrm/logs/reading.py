"""The strict reader of a run's logs.

The reader (:func:`read_run`) is strict on purpose: a figure drawn from a half-written or
mixed-up run folder is worse than an error naming the file and line.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from bls_dlrm.logs.records import (
    _PARTIAL_FILE,
    _RANK_FILE,
    _TYPES,
    Footer,
    Header,
    IncompleteRunError,
    Iteration,
    LogFormatError,
    _check_header,
    _clock_problem,
    _explain,
    _is_int,
)


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
