"""`position-pipeline queue import` (the original design's table) and `queue counts` against real Delta tables
under tmp_path, and where the commands find the lake (--lake, POSITION_LAKE_URI, ./.lake). After every command the
queue itself is read back with PositionQueue."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline_tests.cli.command_runs import Result, assert_nothing_written, queue_uri, run_command, steps

# queue import: the original design's table


LEGACY_SCHEMA = {
    "request_id": pl.String,
    "conid": pl.Int64,
    "symbol": pl.String,
    "priority": pl.Int64,
    "status": pl.String,
    "created_at": pl.String,
    "updated_at": pl.String,
    "error_message": pl.String,
}

LEGACY_ROWS = [
    ("a1b2c3d4-0000-4000-8000-000000000001", 756733, "SPY", 2, "PENDING", "2025-01-02T03:04:05.123456", None),
    ("a1b2c3d4-0000-4000-8000-000000000002", 320227571, "QQQ", 1, "SUCCESS", "2025-01-02T03:05:00", None),
    ("a1b2c3d4-0000-4000-8000-000000000003", 9579970, "IWM", 2, "FAILED", "2025-01-02T03:06:00.5", "not found in IB"),
]


def write_legacy_table(path: Path, rows: list[tuple] = LEGACY_ROWS, mode: Literal["error", "append"] = "error") -> str:
    """A queue table as the original design wrote it: naive ISO-8601 strings for times."""
    frame = pl.DataFrame(
        [
            {
                "request_id": request_id,
                "conid": conid,
                "symbol": symbol,
                "priority": priority,
                "status": status,
                "created_at": created,
                "updated_at": created,
                "error_message": error,
            }
            for request_id, conid, symbol, priority, status, created, error in rows
        ],
        schema=LEGACY_SCHEMA,
    )
    write_deltalake(str(path), frame.to_arrow(), mode=mode)
    return str(path)


@pytest.mark.system
def test_queue_import_adopts_every_item_once(tmp_path: Path, lake_root: Path, queue: PositionQueue, uri: str) -> None:
    legacy = write_legacy_table(tmp_path / "legacy_queue")

    code, out, err = run_command("queue", "import", legacy, "--source-tz", "UTC", lake_root=lake_root)

    assert code == 0 and steps("queue import", err) == [
        f"read 3 rows from {legacy}",
        "3 rows valid; naive times read as UTC",
        "adding the 3 rows not already here in one commit",
        "committed 3 new items (0 were already here)",
    ]
    assert "Adopted 3 items" in out and "0 were already there" in out and uri in out
    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert set(rows) == {r[0] for r in LEGACY_ROWS}
    pending, success, failed = (rows[r[0]] for r in LEGACY_ROWS)
    assert (pending["conid"], pending["symbol"], pending["priority"], pending["status"]) == (
        756733,
        "SPY",
        2,
        "PENDING",
    )
    assert pending["created_at"] == datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert (success["status"], success["priority"]) == ("SUCCESS", 1)
    assert (failed["status"], failed["error_message"]) == ("FAILED", "not found in IB")
    assert failed["created_at"] == datetime(2025, 1, 2, 3, 6, 0, 500000, tzinfo=UTC)
    version = DeltaTable(uri).version()

    code, out, err = run_command("queue", "import", legacy, "--source-tz", "UTC", lake_root=lake_root)

    assert code == 0 and steps("queue import", err)[-1] == "committed 0 new items (3 were already here)"
    assert "Adopted 0 items" in out and "3 were already there" in out
    assert DeltaTable(uri).version() == version, "a second import must not commit"
    assert queue.read().height == 3


def test_queue_import_next_to_our_items_prints_json(
    call: Callable[..., Result], tmp_path: Path, queue: PositionQueue, uri: str
) -> None:
    legacy = write_legacy_table(tmp_path / "legacy_queue", LEGACY_ROWS[:2])
    queue.insert(8314, "IBM")

    code, out, err = call("queue", "import", legacy, "--json", "--source-tz", "UTC")

    assert (code, err) == (0, "")
    report = json.loads(out)
    assert {k: report[k] for k in ("adopted", "already_present", "source", "table", "dry_run")} == {
        "adopted": 2,
        "already_present": 0,
        "source": legacy,
        "table": uri,
        "dry_run": False,
    }
    assert report["new_by_status"] == {"PENDING": 1, "PROCESSING": 0, "SUCCESS": 1, "FAILED": 0}
    assert (report["history_checked"], report["lost"], report["source_tz"]) == (True, [], "UTC")
    write_legacy_table(tmp_path / "legacy_queue", LEGACY_ROWS[2:], mode="append")  # the legacy table grew
    code, out, _ = call("queue", "import", legacy, "--json")
    assert code == 0 and json.loads(out)["adopted"] == 1 and json.loads(out)["already_present"] == 2
    assert queue.read().height == 4


def test_queue_import_refuses_a_bad_row_and_writes_nothing(
    call: Callable[..., Result], tmp_path: Path, lake_root: Path
) -> None:
    bad = [*LEGACY_ROWS[:1], (*LEGACY_ROWS[1][:5], "yesterday", None), *LEGACY_ROWS[2:]]
    legacy = write_legacy_table(tmp_path / "legacy_queue", bad)

    code, out, err = call("queue", "import", legacy)

    assert (code, out) == (1, "")
    assert "row 1: created_at:" in err and "nothing written" in err and legacy in err
    assert_nothing_written(lake_root)


def test_queue_import_of_a_path_that_is_no_delta_table(
    call: Callable[..., Result], tmp_path: Path, lake_root: Path
) -> None:
    code, out, err = call("queue", "import", str(tmp_path / "nowhere"))

    assert (code, out) == (1, "")
    assert "is not a Delta table" in err
    assert_nothing_written(lake_root)


# queue counts


@pytest.mark.system
def test_queue_counts_json_as_a_real_command(lake_root: Path, queue: PositionQueue, uri: str) -> None:
    ids = queue.insert_many([(1, "A"), (2, "B"), (3, "C"), (4, "D")])
    queue.mark_success(ids[0])
    queue.mark_failed(ids[1], "no such contract")

    code, out, err = run_command("queue", "counts", "--json", lake_root=lake_root)

    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "table": uri,
        "exists": True,
        "counts": {"PENDING": 2, "PROCESSING": 0, "SUCCESS": 1, "FAILED": 1},
        "total": 4,
    }
    assert queue.counts() == {
        QueueStatus.PENDING: 2,
        QueueStatus.PROCESSING: 0,
        QueueStatus.SUCCESS: 1,
        QueueStatus.FAILED: 1,
    }


def test_queue_counts_as_text_after_enqueue(call: Callable[..., Result], uri: str) -> None:
    assert call("enqueue", "--conid", "265598", "--symbol", "AAPL")[0] == 0

    code, out, err = call("queue", "counts")

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"Position queue {uri}"
    assert lines[1].split() == ["PENDING", "1"] and lines[-1].split() == ["total", "1"]
    assert [line.split()[0] for line in lines[1:]] == [*(s.value for s in QueueStatus), "total"]


def test_queue_counts_of_a_missing_queue_creates_nothing(call: Callable[..., Result], lake_root: Path) -> None:
    code, out, _ = call("queue", "counts", "--json")

    assert code == 0
    printed = json.loads(out)
    assert printed["exists"] is False and printed["total"] == 0
    assert set(printed["counts"].values()) == {0}
    assert_nothing_written(lake_root)


# Where the lake is


def test_lake_option_overrides_the_environment(call: Callable[..., Result], tmp_path: Path, lake_root: Path) -> None:
    other = tmp_path / "other-lake"

    code, out, _ = call("enqueue", "--conid", "265598", "--symbol", "AAPL", "--lake", str(other), "--json")

    assert code == 0 and json.loads(out)["table"] == queue_uri(other)
    assert PositionQueue(queue_uri(other)).read().height == 1
    assert_nothing_written(lake_root)
    code, out, _ = call("queue", "counts", "--json", "--lake", str(other))
    assert code == 0 and json.loads(out)["total"] == 1


@pytest.mark.system
def test_default_lake_is_dot_lake_in_the_current_directory(tmp_path: Path) -> None:
    code, out, err = run_command(
        "enqueue", "--conid", "265598", "--symbol", "AAPL", "--json", lake_root=None, cwd=tmp_path
    )

    assert (code, err) == (0, "")
    expected = queue_uri((tmp_path / ".lake").resolve())
    assert json.loads(out)["table"] == expected
    assert PositionQueue(expected).read()["symbol"].to_list() == ["AAPL"]
