"""Bad input never reaches a table or a terminal: each case asserts the exit code, the one-line message and that the
queue is unchanged. Commands run in process (`call`) on a real lake under tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from position_pipeline.cli.errors import UNHEALTHY, error_line, without_rust_panics
from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue
from position_pipeline.core.text_input import parse_ascii_int, printable
from position_pipeline_tests.cli.command_runs import Result, assert_nothing_written, write_csv
from position_pipeline_tests.support.position_rows import position_update_row

pytestmark = pytest.mark.timeout(60)

ESC_CLEAR = "X\x1b[2J"
"""A symbol that clears the terminal it is printed on."""


def last_line(err: str) -> str:
    lines = err.strip().splitlines()
    return lines[-1] if lines else ""


def queue_snapshot(queue: PositionQueue, uri: str) -> pl.DataFrame | None:
    return queue.read() if DeltaTable.is_deltatable(uri) else None


# --- one integer parser for the flag and the CSV cells -------------------------------------------------------------

INTEGERS = [
    pytest.param("\u0661\u0662\u0663", None, id="arabic-indic"),
    pytest.param("\uff11\uff12\uff13", None, id="full-width"),
    pytest.param("1_000", None, id="underscore"),
    pytest.param(" 12 ", 12, id="spaces"),
    pytest.param("+7", 7, id="plus"),
    pytest.param("12.0", None, id="decimal"),
]


@pytest.mark.parametrize(("text", "value"), INTEGERS)
def test_the_conid_flag_and_the_csv_cell_decide_alike(
    call: Callable[..., Result], lake_root: Path, tmp_path: Path, text: str, value: int | None
) -> None:
    flag = call("enqueue", "--conid", text, "--symbol", "AAPL")
    csv = write_csv(tmp_path / "items.csv", f'conid,symbol\n"{text}",AAPL\n')
    cell = call("enqueue", "--from-file", str(csv))
    if value is None:
        assert (flag[0], cell[0]) == (1, 1)
        assert "--conid: must be an integer written with the digits 0-9" in flag[2]
        assert "row 0 (line 2): conid: must be an integer written with the digits 0-9" in cell[2]
        assert_nothing_written(lake_root)
    else:
        assert (flag[0], cell[0]) == (0, 0), (flag, cell)
        assert PositionQueue(lake.table_uri(str(lake_root), lake.QUEUE_TABLE)).read()["conid"].to_list() == [value] * 2


def test_parse_ascii_int_is_the_rule() -> None:
    assert parse_ascii_int("\t-5 ") == -5
    for text in ("", " ", "1 2", "0x10", "\u0661", "1e3", "12\n"):
        with pytest.raises(ValueError, match="digits 0-9"):
            parse_ascii_int(text)


# --- symbols and accounts without control characters ----------------------------------------------------------------

CONTROL = [
    pytest.param("A\x00B", "U+0000", id="NUL"),
    pytest.param(ESC_CLEAR, "U+001B", id="ESC"),
    pytest.param("A\nB", "U+000A", id="newline"),
    pytest.param("A\u202eB", "U+202E", id="bidi-override"),
    pytest.param("A\x85B", "U+0085", id="C1"),
]


@pytest.mark.parametrize(("symbol", "code"), CONTROL)
def test_a_symbol_with_a_control_character_is_refused_with_row_and_field(
    call: Callable[..., Result], lake_root: Path, tmp_path: Path, symbol: str, code: str
) -> None:
    flag = call("enqueue", "--conid", "265598", "--symbol", symbol)
    assert flag[0] == 1 and f"--symbol: must not contain control characters, found {code}" in flag[2]
    quoted = symbol.replace('"', '""')
    csv = write_csv(tmp_path / "items.csv", f'conid,symbol\n265598,AAPL\n101000,"{quoted}"\n')
    cell = call("enqueue", "--from-file", str(csv))
    assert cell[0] == 1 and f"row 1 (line 3): symbol: must not contain control characters, found {code}" in cell[2]
    assert "\x1b" not in flag[2] + cell[2]  # the message shows it escaped
    assert_nothing_written(lake_root)


def test_an_account_with_a_control_character_is_refused(call: Callable[..., Result], lake_root: Path) -> None:
    code, _, err = call("enqueue", "--conid", "265598", "--symbol", "AAPL", "--account", "DU1\x1b[2J")
    assert code == 1 and "--account: must not contain control characters, found U+001B" in err
    assert_nothing_written(lake_root)


# --- one sanitizer for every value the CLI prints --------------------------------------------------------------------


def _hostile_lake(root: str) -> PositionQueue:
    """A queue and a position history holding control characters, as a lake written before they were refused."""
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    [request_id] = queue.insert_many([(265598, "AAPL")])
    queue.claim(None, 1, claimed_by="run-\x1b]0;owned\x07")
    queue.mark_failed(request_id, "boom\x1b[2J", claimed_by="run-\x1b]0;owned\x07")
    DeltaTable(queue.table_uri).update(updates={"symbol": "'X' || chr(27) || '[2J'"})
    row = position_update_row(symbol=ESC_CLEAR, account="DU1000001", snapshot_at=datetime.now(UTC))
    frame = pl.DataFrame([row], schema=lake.POSITION_UPDATES_SCHEMA)
    write_deltalake(lake.ensure_position_updates_table(root), frame.to_arrow(), mode="append")
    return queue


@pytest.mark.parametrize(
    "command",
    [
        ("status",),
        ("requeue", "--failed", "--dry-run"),
        ("positions",),
        ("positions", "--format", "csv"),
        ("queue", "counts"),
    ],
    ids=" ".join,
)
def test_no_value_reaches_the_terminal_with_a_control_character(
    call: Callable[..., Result], root: str, command: tuple[str, ...]
) -> None:
    queue = _hostile_lake(root)
    assert ESC_CLEAR in queue.read()["symbol"].to_list()  # the stored value is hostile
    before = queue.read()
    code, out, err = call(*command)
    assert code == (UNHEALTHY if command == ("status",) else 0), err  # its one FAILED item fails a health check
    assert not [c for c in out + err if c != "\n" and (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F)], repr(out)
    if command[0] != "queue":
        assert "X\\x1b[2J" in out  # shown escaped, not dropped
    assert queue.read().equals(before)


@pytest.mark.parametrize(
    "rows", ["conid,symbol\n265598,AAPL\n", "conid,symbol\nnot-a-number,AAPL\n"], ids=["ok", "bad"]
)
def test_a_file_name_with_a_control_character_is_printed_escaped(
    call: Callable[..., Result], lake_root: Path, tmp_path: Path, rows: str
) -> None:
    path = tmp_path / "items\x1b[2J.csv"
    path.write_text(rows)
    code, out, err = call("enqueue", "--from-file", str(path))
    assert code == (0 if rows.startswith("conid,symbol\n2") else 1), err
    assert not [c for c in out + err if c != "\n" and (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F)], repr(out + err)
    assert "items\\x1b[2J.csv" in out + err  # shown escaped, not dropped


def test_printable_escapes_and_is_idempotent() -> None:
    assert printable("a\x1b[2Jb\n\u202e") == "a\\x1b[2Jb\\x0a\\u202e"
    assert printable(printable("\x00")) == "\\x00"
    assert printable("Zürich 100%") == "Zürich 100%"


# --- files that are not regular files --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_enqueue_from_a_fifo_device_or_directory_is_refused_before_opening_it(
    call: Callable[..., Result], lake_root: Path, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "items"
    if kind == "fifo":
        os.mkfifo(path)  # open() would block until a writer comes: the command must not open it
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path("/dev/zero")  # would never end
    code, _, err = call("enqueue", "--from-file", str(path))
    what = {"fifo": "a FIFO", "directory": "a directory", "device": "a character device"}[kind]
    assert code == 1 and last_line(err) == (
        f"position-pipeline enqueue: error: {path} is {what}, not a regular file: nothing written"
    )
    assert_nothing_written(lake_root)


# --- flags: timeouts, dates, DAGSTER_HOME -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "soon"])
def test_backfill_timeout_must_be_finite_and_positive(call: Callable[..., Result], lake_root: Path, value: str) -> None:
    code, _, err = call("backfill", "--wait", "--timeout", value)
    assert code == 2 and "argument --timeout: must be a" in last_line(err)
    assert_nothing_written(lake_root)


@pytest.mark.parametrize(
    "command",
    [("positions", "--as-of"), ("backfill", "--from"), ("requeue", "--failed", "--since")],
    ids=lambda c: c[0],
)
def test_a_time_out_of_range_is_a_usage_error_not_a_traceback(
    call: Callable[..., Result], lake_root: Path, command: tuple[str, ...]
) -> None:
    code, _, err = call(*command, "0001-01-01T00:00:00+14:00")
    assert code == 2 and "is out of range: in UTC it falls outside years 1 to 9999" in last_line(err)
    assert "Traceback" not in err
    assert_nothing_written(lake_root)


@pytest.mark.parametrize("problem", ["missing", "file", "relative"])
def test_a_bad_dagster_home_is_one_line(
    call: Callable[..., Result],
    queue: PositionQueue,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    problem: str,
) -> None:
    queue.insert(265598, "AAPL")
    before = queue.read()
    home = {"missing": tmp_path / "nowhere", "file": tmp_path / "home.txt", "relative": Path("relative/home")}[problem]
    if problem == "file":
        home.write_text("not a folder")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    code, out, err = call("backfill")
    said = {"missing": "does not exist", "file": "is not a folder", "relative": "is not an absolute path"}[problem]
    assert (code, out) == (1, "")
    assert err.strip() == (
        f"position-pipeline backfill: DAGSTER_HOME {home} {said}: point it at the Dagster instance the daemon runs on"
    )
    assert queue.read().equals(before)


# --- the lake itself: a file is no lake; storage errors in one line --------------------------------------------------


@pytest.mark.parametrize("command", [("status",), ("positions",), ("queue", "counts"), ("requeue", "--failed")])
def test_a_lake_root_that_is_a_file_is_an_error_not_no_table_yet(
    call: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    root = tmp_path / "lake.txt"
    root.write_text("not a lake")
    monkeypatch.setenv("POSITION_LAKE_URI", str(root))
    code, out, err = call(*command)
    assert code == 1 and "no table yet" not in out
    assert last_line(err).endswith(
        f"error: the lake root {root} is not a folder: {root} is a file (--lake, POSITION_LAKE_URI)"
    )
    assert root.read_text() == "not a lake"
    assert root.read_text() == "not a lake"


def test_debug_adds_the_traceback_before_the_one_line_error(
    call: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "lake.txt"
    root.write_text("not a lake")
    monkeypatch.setenv("POSITION_LAKE_URI", str(root))
    monkeypatch.setenv("RUST_BACKTRACE", "0")  # restored after the test: --debug sets it for the process
    code, _, err = call("status")
    assert code == 1 and len(err.strip().splitlines()) == 1
    code, _, debug_err = call("--debug", "status")
    assert code == 1 and "Traceback (most recent call last)" in debug_err and "CommandError" in debug_err
    assert last_line(debug_err) == last_line(err)  # the one line still comes last


@pytest.mark.parametrize("table", ["position_queue", "position_updates"])
@pytest.mark.parametrize("command", [("status",), ("positions",), ("enqueue", "--conid", "1", "--symbol", "A")])
def test_a_table_folder_that_is_a_file_is_named_as_such(
    call: Callable[..., Result], lake_root: Path, command: tuple[str, ...], table: str
) -> None:
    path = lake_root / "positions" / table
    path.parent.mkdir(parents=True)
    path.write_text("not a table")
    code, out, err = call(*command)
    assert (code, out) == (1, "")
    assert last_line(err).endswith(f"table of the lake {lake_root} is a file, not a table's folder: {path}")
    assert path.read_text() == "not a table"


def test_a_storage_error_leads_with_its_cause_on_one_line() -> None:
    error = OSError(
        "Failed to parse parquet: External: Generic LocalFileSystem error: Unable to open file\n"
        "/lake/part-0.parquet#1: Read-only file system (os error 30)"
    )
    assert error_line(error) == (
        "Read-only file system (os error 30): Failed to parse parquet: External: Generic LocalFileSystem error: "
        "Unable to open file /lake/part-0.parquet#1: Read-only file system (os error 30)"
    )
    assert error_line(ValueError("plain")) == "plain"


def test_rust_panics_are_dropped_and_everything_else_kept() -> None:
    held = (
        "a log line\n"
        "thread 'tokio-rt-worker' (27927) panicked at /cargo/object_store-0.13.2/src/buffered.rs:369:41:\n"
        "Already shut down\n"
        "stack backtrace:\n"
        "   0: __rustc::rust_begin_unwind\n"
        "note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n"
        "another log line\n"
        "thread 'main' panicked at src/lib.rs:1:1:\n"
        "boom\n"
        "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n"
    )
    assert without_rust_panics(held) == "a log line\nanother log line\n"


# --- simulate binds loopback unless told otherwise -------------------------------------------------------------------


def test_simulate_on_a_non_loopback_address_needs_allow_remote(call: Callable[..., Result]) -> None:
    code, out, err = call("simulate", "--host", "0.0.0.0", "--port", "0")
    assert (code, out) == (2, "")
    assert last_line(err).endswith(
        "--host 0.0.0.0 is not a loopback address: other machines could connect; add --allow-remote to listen there "
        "anyway"
    )


@pytest.mark.system
def test_simulate_with_allow_remote_listens_and_warns(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "position_pipeline", "simulate", "--host", "0.0.0.0", "--port", "0", "--allow-remote"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        listening = process.stdout.readline()
        assert listening.startswith("Simulated IB Gateway listening on 0.0.0.0:"), listening
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    assert err.splitlines()[0] == (
        "position-pipeline simulate: warning: listening on 0.0.0.0, reachable from other machines (--allow-remote)"
    )


@pytest.fixture
def read_only_lake(tmp_path: Path) -> Iterator[Path]:
    """A lake with one queued item on a file system then remounted read-only (needs root and mount: else skipped)."""
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        PositionQueue(lake.table_uri(str(mount_point / "lake"), lake.QUEUE_TABLE)).insert(265598, "AAPL")
        subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)
        yield mount_point / "lake"
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.system
@pytest.mark.parametrize("backtrace", ["", "1", "--debug"])
def test_a_read_only_lake_is_one_line_naming_the_cause(read_only_lake: Path, backtrace: str) -> None:
    """On a read-only disk delta-rs panics (printed by Rust itself) and then raises: the operator reads one line,
    cause first, and the panic only with RUST_BACKTRACE set or --debug."""
    queue = PositionQueue(lake.table_uri(str(read_only_lake), lake.QUEUE_TABLE))
    before = queue.read()
    env = {k: v for k, v in os.environ.items() if k != "RUST_BACKTRACE"} | (
        {"RUST_BACKTRACE": "1"} if backtrace == "1" else {}
    )
    flags = ["--debug"] if backtrace == "--debug" else []
    done = subprocess.run(
        [sys.executable, "-m", "position_pipeline", *flags, "enqueue", "--conid", "1", "--symbol", "A"],
        env={**env, "POSITION_LAKE_URI": str(read_only_lake)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (1, "")
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("position-pipeline enqueue: error: Read-only file system (os error 30): ")
    if backtrace:
        assert any("panicked at" in line for line in lines)
    else:
        assert len(lines) == 1, done.stderr
    assert queue.read().equals(before)
