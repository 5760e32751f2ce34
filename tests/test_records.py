"""The run-log contract: writer -> reader round trip, atomic finish, strict parser errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bls_dlrm.logs.reading import is_complete, read_rank, read_run
from bls_dlrm.logs.records import (
    Footer,
    Header,
    IncompleteRunError,
    Iteration,
    LogFormatError,
    partial_path,
    rank_path,
)
from bls_dlrm.logs.writer import RunLogWriter

CONFIG = {"dataset": "synthetic-kaggle", "batch_size": 64, "delay": {"kind": "none"}}


def make_header(rank: int, world_size: int = 2, run_id: str = "run-a", **kw) -> Header:
    fields = {
        "run_id": run_id,
        "rank": rank,
        "world_size": world_size,
        "collective": "bls",
        "lag_bound": 1,
        "config": CONFIG,
        "versions": {"python": "3.12.3", "torch": "2.13.0"},
        "host": "node01",
        "git_rev": None,
        "clock": "time.monotonic",
        "t0": 100.0,
        "started_utc": "2026-01-14T10:00:00+00:00",
    }
    fields.update(kw)
    return Header(**fields)


def make_iteration(i: int, rank: int = 0, warmup: bool = False) -> Iteration:
    t = 100.0 + 0.01 * i + 0.001 * rank
    return Iteration(
        iteration=i,
        warmup=warmup,
        samples=32,
        t_start=t,
        t_lookup=t + 0.001,
        t_posted=t + 0.0012,
        t_bottom=t + 0.003,
        t_completed=t + 0.0035,
        t_done=t + 0.005,
        wait_s=0.0005 * (i % 2),
        delay_s=0.001 if i == 2 else 0.0,
        compute_s=0.004,
        lag=i % 2,
        checksum=f"{i:04x}{rank:04x}",
    )


def write_rank(run_dir: Path, rank: int, world_size: int = 2, n: int = 4, warmup: int = 1, **kw):
    with RunLogWriter(run_dir, make_header(rank, world_size, **kw)) as log:
        for i in range(n):
            log.write(make_iteration(i, rank, warmup=i < warmup))
        log.close()


def write_run(run_dir: Path, world_size: int = 2, **kw) -> None:
    for rank in range(world_size):
        write_rank(run_dir, rank, world_size, **kw)


def edit_lines(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("".join(line + "\n" for line in edit(lines)))


# --- writer and round trip -------------------------------------------------------------


def test_round_trip_gives_back_the_records(tmp_path):
    write_run(tmp_path, world_size=3, n=5, warmup=2)
    run = read_run(tmp_path)
    assert run.world_size == 3 and run.run_id == "run-a" and run.lag_bound == 1
    assert run.config == CONFIG
    for rank, log in enumerate(run):
        assert log.header == make_header(rank, 3)
        assert log.iterations == [make_iteration(i, rank, warmup=i < 2) for i in range(5)]
        assert [it.iteration for it in log.measured] == [2, 3, 4]
        assert log.footer == Footer.summarise(log.iterations)
        assert log.footer.iterations == 5 and log.footer.measured_iterations == 3
        assert log.footer.samples == 3 * 32
        assert log.footer.elapsed_s == pytest.approx(0.025)
    assert is_complete(tmp_path)


def test_each_line_is_one_json_record_with_type_and_schema(tmp_path):
    write_rank(tmp_path, 0, world_size=1, n=2)
    records = [json.loads(line) for line in rank_path(tmp_path, 0).read_text().splitlines()]
    assert [r["record"] for r in records] == ["header", "iteration", "iteration", "footer"]
    assert records[0]["schema"] == 1
    assert records[-1]["status"] == "ok"


def test_log_is_partial_and_flushed_until_close(tmp_path):
    log = RunLogWriter(tmp_path, make_header(0, 1))
    for i in range(3):
        log.write(make_iteration(i))
    assert not rank_path(tmp_path, 0).exists()
    lines = partial_path(tmp_path, 0).read_text().splitlines()  # readable while open
    assert [json.loads(x)["record"] for x in lines] == ["header"] + ["iteration"] * 3
    assert not is_complete(tmp_path)
    final = log.close()
    assert final == rank_path(tmp_path, 0) and final.exists()
    assert not partial_path(tmp_path, 0).exists()
    assert is_complete(tmp_path)


def test_exception_leaves_only_the_partial_marked_incomplete(tmp_path):
    with (
        pytest.raises(RuntimeError, match="boom"),
        RunLogWriter(tmp_path, make_header(0, 1)) as log,
    ):
        log.write(make_iteration(0))
        raise RuntimeError("boom")
    assert not rank_path(tmp_path, 0).exists()
    last = json.loads(partial_path(tmp_path, 0).read_text().splitlines()[-1])
    assert last["record"] == "incomplete" and last["reason"] == "RuntimeError: boom"
    assert last["iterations_written"] == 1
    assert not is_complete(tmp_path)
    with pytest.raises(IncompleteRunError, match=r"rank 0: only rank0\.jsonl\.partial.*boom"):
        read_run(tmp_path)


def test_leaving_the_context_without_close_is_an_error(tmp_path):
    with (
        pytest.raises(RuntimeError, match="without close"),
        RunLogWriter(tmp_path, make_header(0, 1)) as log,
    ):
        log.write(make_iteration(0))
    assert partial_path(tmp_path, 0).exists() and not rank_path(tmp_path, 0).exists()


def test_killed_rank_leaves_its_lines(tmp_path):
    """kill -9 gives no chance to clean up: the line-buffered log must already be on disk."""
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_records import make_header, make_iteration
        from bls_dlrm.logs.writer import RunLogWriter
        log = RunLogWriter({str(tmp_path)!r}, make_header(1, 2))
        for i in range(3):
            log.write(make_iteration(i, 1))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    write_rank(tmp_path, 0, n=4)
    lines = partial_path(tmp_path, 1).read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1])["iteration"] == 2
    with pytest.raises(IncompleteRunError) as err:
        read_run(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    assert "rank 1: only rank1.jsonl.partial exists" in message
    assert "stopped after iteration 2" in message and "killed" in message


def test_rerun_removes_the_finished_log_of_an_earlier_attempt(tmp_path):
    write_rank(tmp_path, 0, world_size=1)
    log = RunLogWriter(tmp_path, make_header(0, 1))
    assert not rank_path(tmp_path, 0).exists()
    log.abort("test")


def test_writer_rejects_gaps_warmup_after_measured_and_nan(tmp_path):
    with RunLogWriter(tmp_path, make_header(0, 1)) as log:
        log.write(make_iteration(0))
        with pytest.raises(ValueError, match="iteration 2 written where 1 was expected"):
            log.write(make_iteration(2))
        with pytest.raises(ValueError, match="warm-up iteration 1 after measured"):
            log.write(make_iteration(1, warmup=True))
        bad = make_iteration(1)
        bad.t_done = float("nan")
        with pytest.raises(ValueError):
            log.write(bad)
        log.write(make_iteration(1))
        log.close()
    assert len(read_run(tmp_path).ranks[0].iterations) == 2


def test_close_rejects_a_footer_that_does_not_match(tmp_path):
    with (
        pytest.raises(ValueError, match="footer samples=1 but the log holds 32"),
        RunLogWriter(tmp_path, make_header(0, 1)) as log,
    ):
        log.write(make_iteration(0))
        log.close(Footer(1, 1, 1, 0.005, 0.0, 0.0, 0.004))
    assert partial_path(tmp_path, 0).exists() and not rank_path(tmp_path, 0).exists()


def test_close_accepts_the_matching_footer(tmp_path):
    its = [make_iteration(i, warmup=i == 0) for i in range(3)]
    with RunLogWriter(tmp_path, make_header(0, 1)) as log:
        for it in its:
            log.write(it)
        log.close(Footer.summarise(its))
    assert read_run(tmp_path).ranks[0].footer == Footer.summarise(its)


def test_header_new_stamps_clock_time_host_and_versions():
    header = Header.new(
        run_id="r", rank=0, world_size=1, collective="gloo", lag_bound=None, config={}, git_rev=None
    )
    assert header.clock == "time.monotonic" and header.git_rev is None
    assert header.versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert "numpy" in header.versions and "mpi_library" in header.versions
    assert header.started_utc.endswith("+00:00") and header.host


def test_header_validation_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="collective must be one of"):
        RunLogWriter(tmp_path, make_header(0, collective="nccl"))
    with pytest.raises(ValueError, match="rank 2 is not below world_size 2"):
        RunLogWriter(tmp_path, make_header(2))
    with pytest.raises(ValueError, match="lag_bound"):
        RunLogWriter(tmp_path, make_header(0, lag_bound=-1))
    assert not any(tmp_path.iterdir())


def test_header_series_and_placement_fields_round_trip(tmp_path):
    placed = {
        "series_order": ["bls-L4", "gloo", "mpi"],
        "series_index": 1,
        "shuffle_seed": 11,
        "cores": [0, 3],
        "cores_per_rank": 2,
        "binding": "none",
    }
    its = [make_iteration(0)]
    with RunLogWriter(tmp_path, make_header(0, 1, **placed)) as log:
        log.write(its[0])
        log.close(Footer.summarise(its))
    header = read_run(tmp_path).ranks[0].header
    assert {k: getattr(header, k) for k in placed} == placed


def test_header_without_series_and_placement_fields_still_reads(tmp_path):
    """Logs written before these fields existed read with the fields as None."""
    write_rank(tmp_path, 0, world_size=1)
    fields = ("series_order", "series_index", "shuffle_seed", "cores", "cores_per_rank", "binding")

    def drop(lines):
        head = json.loads(lines[0])
        assert set(fields) <= set(head)
        return [json.dumps({k: v for k, v in head.items() if k not in fields}), *lines[1:]]

    edit_lines(rank_path(tmp_path, 0), drop)
    header = read_run(tmp_path).ranks[0].header
    assert header.series_order is None and header.binding is None and header.cores is None


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"binding": "socket"}, "binding must be one of"),
        ({"cores": [0, "1"]}, "cores"),
        ({"series_order": ["gloo"], "series_index": 1}, "series_index 1"),
        ({"cores_per_rank": -1}, "cores_per_rank"),
    ],
)
def test_header_rejects_bad_placement_fields(tmp_path, fields, match):
    with pytest.raises(ValueError, match=match):
        RunLogWriter(tmp_path, make_header(0, **fields))


# --- strict parser ---------------------------------------------------------------------


def test_missing_rank_is_named(tmp_path):
    write_rank(tmp_path, 0, world_size=3)
    write_rank(tmp_path, 2, world_size=3)
    with pytest.raises(IncompleteRunError) as err:
        read_run(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert "rank 1: rank1.jsonl missing" in str(err.value)
    assert not is_complete(tmp_path)


def test_missing_footer_is_incomplete(tmp_path):
    write_run(tmp_path)
    edit_lines(rank_path(tmp_path, 1), lambda lines: lines[:-1])
    with pytest.raises(IncompleteRunError, match=r"rank 1: rank1\.jsonl has no footer"):
        read_run(tmp_path)
    with pytest.raises(IncompleteRunError, match="footer missing after 4 iterations"):
        read_rank(rank_path(tmp_path, 1))
    assert not is_complete(tmp_path)


def test_empty_run_folder_is_incomplete(tmp_path):
    with pytest.raises(IncompleteRunError, match="no rank logs"):
        read_run(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_run(tmp_path / "nope")
    assert not is_complete(tmp_path) and not is_complete(tmp_path / "nope")


def test_non_contiguous_iterations_name_file_and_line(tmp_path):
    write_run(tmp_path)
    edit_lines(rank_path(tmp_path, 0), lambda lines: lines[:2] + lines[3:])  # drop iteration 1
    path = rank_path(tmp_path, 0)
    with pytest.raises(
        LogFormatError, match=rf"{re.escape(str(path))}:3: .*iteration 2 where 1 was expected"
    ):
        read_run(tmp_path)


def test_malformed_json_names_file_and_line(tmp_path):
    write_run(tmp_path)
    path = rank_path(tmp_path, 1)
    edit_lines(path, lambda lines: [*lines[:2], lines[2][:-7], *lines[3:]])
    with pytest.raises(LogFormatError, match=rf"^{re.escape(str(path))}:3: malformed JSON"):
        read_run(tmp_path)


def test_wrong_field_type_is_named(tmp_path):
    write_run(tmp_path)
    path = rank_path(tmp_path, 0)

    def edit(lines):
        record = json.loads(lines[2])
        record["samples"] = "many"
        return [*lines[:2], json.dumps(record), *lines[3:]]

    edit_lines(path, edit)
    with pytest.raises(
        LogFormatError, match=rf"{re.escape(str(path))}:3: iteration: field 'samples'"
    ):
        read_run(tmp_path)


def test_missing_field_and_header_not_first(tmp_path):
    write_run(tmp_path)
    path = rank_path(tmp_path, 0)

    def drop_wait(lines):
        record = json.loads(lines[1])
        del record["wait_s"]
        return [lines[0], json.dumps(record), *lines[2:]]

    edit_lines(path, drop_wait)
    with pytest.raises(
        LogFormatError, match=rf"{re.escape(str(path))}:2: iteration: missing field 'wait_s'"
    ):
        read_run(tmp_path)
    edit_lines(path, lambda lines: lines[1:])
    with pytest.raises(
        LogFormatError, match=rf"{re.escape(str(path))}:1: .*first record must be the header"
    ):
        read_run(tmp_path)


def test_times_out_of_pipeline_order_are_rejected(tmp_path):
    write_run(tmp_path)

    def edit(lines):
        record = json.loads(lines[1])
        record["t_completed"] = record["t_posted"] - 1.0
        return [lines[0], json.dumps(record), *lines[2:]]

    edit_lines(rank_path(tmp_path, 0), edit)
    with pytest.raises(LogFormatError, match=r"t_completed=.* is before t_posted"):
        read_run(tmp_path)


def test_record_after_footer_is_rejected(tmp_path):
    write_run(tmp_path)
    edit_lines(rank_path(tmp_path, 0), lambda lines: [*lines, lines[1]])
    with pytest.raises(
        LogFormatError, match=r"rank0\.jsonl:7: 'iteration' record after the footer"
    ):
        read_run(tmp_path)


def test_footer_that_does_not_add_up_is_rejected(tmp_path):
    write_run(tmp_path)

    def edit(lines):
        footer = json.loads(lines[-1])
        footer["wait_s"] += 1.0
        return [*lines[:-1], json.dumps(footer)]

    edit_lines(rank_path(tmp_path, 1), edit)
    with pytest.raises(LogFormatError, match=r"footer wait_s=.* but the iterations sum to"):
        read_run(tmp_path)


def test_ranks_of_different_runs_are_rejected(tmp_path):
    write_rank(tmp_path, 0)
    write_rank(tmp_path, 1, run_id="run-b")
    with pytest.raises(LogFormatError, match="disagree on run_id"):
        read_run(tmp_path)


def test_ranks_with_different_iteration_counts_are_rejected(tmp_path):
    write_rank(tmp_path, 0, n=4)
    write_rank(tmp_path, 1, n=3)
    with pytest.raises(LogFormatError, match=r"rank0\.jsonl has 4 iterations, rank1\.jsonl has 3"):
        read_run(tmp_path)


def test_leftover_logs_of_a_larger_earlier_run_are_rejected(tmp_path):
    write_run(tmp_path, world_size=2)
    partial_path(tmp_path, 3).write_text("")
    with pytest.raises(LogFormatError, match=r"logs of ranks \[3\] beyond world_size 2"):
        read_run(tmp_path)
    partial_path(tmp_path, 3).unlink()
    write_rank(tmp_path / "old", 2, world_size=3)
    (tmp_path / "old" / "rank2.jsonl").rename(tmp_path / "rank2.jsonl")
    with pytest.raises(LogFormatError, match="disagree on world_size"):
        read_run(tmp_path)


def test_nan_in_a_log_is_rejected(tmp_path):
    write_run(tmp_path)
    path = rank_path(tmp_path, 0)
    edit_lines(path, lambda lines: [lines[0], lines[1].replace('"wait_s":0.0', '"wait_s":NaN')])
    with pytest.raises(
        LogFormatError, match=rf"{re.escape(str(path))}:2: malformed JSON: non-finite"
    ):
        read_run(tmp_path)


@pytest.mark.parametrize(
    ("line", "edit", "match"),
    [
        (
            3,
            {"wait_s": -0.5},
            r"iteration: field 'wait_s': expected `float` >= 0\.0 \(value -0\.5\)",
        ),
        (3, {"lag": True}, r"iteration: field 'lag': expected `int`, got `bool`"),
        (3, {"checksum": "XY"}, r"iteration: field 'checksum': .*\(value 'XY'\)"),
        (3, {"record": "timing"}, r"timing: unknown record type 'timing'"),
        (3, {"record": "header"}, r"header: second header record"),
        (
            3,
            {"record": "incomplete", "reason": "boom"},
            r"incomplete: log marked incomplete \(boom\)",
        ),
        (1, {"cores": [0, "1"]}, r"header: field 'cores\[1\]': expected `int`, got `str`"),
        (1, {"config": []}, r"header: field 'config': expected `object`"),
        (1, {"schema": 2}, r"header: schema 2 is not supported"),
        (1, {"schema": None}, r"header: schema None is not supported"),
        (6, {"elapsed_s": "long"}, r"footer: field 'elapsed_s': expected `float`, got `str`"),
        (6, {"status": "failed"}, r"footer: status must be 'ok'"),
    ],
)
def test_validation_errors_name_file_line_record_and_field(tmp_path, line, edit, match):
    write_run(tmp_path)
    path = rank_path(tmp_path, 1)

    def change(lines):
        record = json.loads(lines[line - 1])
        record.update(edit)
        return [*lines[: line - 1], json.dumps(record), *lines[line:]]

    edit_lines(path, change)
    with pytest.raises(LogFormatError, match=rf"^{re.escape(str(path))}:{line}: {match}"):
        read_run(tmp_path)


def test_a_well_formed_log_is_decoded_without_the_slow_path(tmp_path, monkeypatch):
    """Valid lines go straight from msgspec into the record types (the fast path)."""
    from bls_dlrm.logs import reading as records

    def refuse(*args):
        raise AssertionError("slow path used for a valid line")

    write_run(tmp_path, n=6, warmup=2)
    monkeypatch.setattr(records, "_slow_record", refuse)
    run = read_run(tmp_path)
    assert [type(it) for it in run.ranks[0].iterations] == [Iteration] * 6
    assert run.ranks[0].iterations[3] == make_iteration(3, 0)
    assert run.ranks[1].footer == Footer.summarise(run.ranks[1].iterations)
    assert run.ranks[1].footer.iterations == 6 and run.ranks[1].footer.measured_iterations == 4


def test_writer_output_is_byte_identical_to_the_stored_logs(tmp_path):
    """Rewriting a stored log's records through the writer gives back its lines exactly
    (the header only gains the optional fields as nulls)."""
    stored = Path(__file__).parent / "data" / "runs" / "bls-4r-rotating-L2"
    log = read_rank(stored / "rank2.jsonl")
    with RunLogWriter(tmp_path, log.header) as out:
        for it in log.iterations:
            out.write(it)
        out.close(log.footer)
    old = (stored / "rank2.jsonl").read_bytes().splitlines()
    new = rank_path(tmp_path, 2).read_bytes().splitlines()
    assert new[1:] == old[1:]
    head_old, head_new = json.loads(old[0]), json.loads(new[0])
    added = {k: head_new.pop(k) for k in list(head_new) if k not in head_old}
    assert head_new == head_old and list(head_new) == list(head_old)
    assert set(added) == {"series_order", "series_index", "shuffle_seed", "cores"} | {
        "cores_per_rank",
        "binding",
    }
    assert set(added.values()) == {None}
