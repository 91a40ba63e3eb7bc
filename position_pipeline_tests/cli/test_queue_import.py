"""`queue import` of tables the design note's code wrote on a New York machine: naive local times converted to UTC
(DST gaps and folds too), FAILED items retried under the normal policy, the dry run, and a table the note's racing
workers left half-written. The tables are written the note's way (`datetime.now().isoformat()`, one append per
insert, a status change as a delete then an append) with TZ=America/New_York in force."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue
from position_pipeline_tests.cli.command_runs import Result, assert_nothing_written

NEW_YORK = "America/New_York"


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local zone is New York for the test (TZ and time.tzset), restored after it."""
    monkeypatch.setenv("TZ", NEW_YORK)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


class NoteQueue:
    """The design note's queue table, written as its code does: one append per insert, naive `datetime.now()`
    times, and a status change as a delete of the item's row followed by an append of the new one."""

    def __init__(self, path: Path) -> None:
        self.uri = str(path)

    def insert(self, conid: int, symbol: str, priority: int = 2, *, at: datetime | None = None) -> str:
        request_id = str(uuid.uuid4())
        stamp = (at or datetime.now()).isoformat()
        self._append(request_id, conid, symbol, priority, "PENDING", stamp, stamp, None)
        return request_id

    def mark(self, request_id: str, status: str, error: str | None = None, *, re_add: bool = True) -> None:
        """Delete the row, then (unless the worker died in between: `re_add` False) append it with `status`."""
        row = pl.read_delta(self.uri).filter(pl.col("request_id") == request_id).row(0, named=True)
        DeltaTable(self.uri).delete(f"request_id = '{request_id}'")
        if re_add:
            now = datetime.now().isoformat()
            self._append(
                request_id, row["conid"], row["symbol"], row["priority"], status, row["created_at"], now, error
            )

    def _append(self, *values: object) -> None:
        frame = pl.DataFrame(
            [dict(zip(lake.LEGACY_QUEUE_SCHEMA.names(), values, strict=True))], lake.LEGACY_QUEUE_SCHEMA
        )
        write_deltalake(self.uri, frame.to_arrow(), mode="append")


def rows_by_symbol(queue: PositionQueue) -> dict[str, dict[str, object]]:
    return {row["symbol"]: row for row in queue.read().iter_rows(named=True)}


def test_naive_times_are_read_in_the_machines_zone_by_default(
    new_york: None, call: Callable[..., Result], tmp_path: Path, queue: PositionQueue
) -> None:
    note = NoteQueue(tmp_path / "note_queue")
    note.insert(1, "NOW")  # datetime.now() on this (New York) machine
    note.insert(2, "WINTER", at=datetime(2025, 1, 15, 9, 30))  # EST, UTC-5
    note.insert(3, "SUMMER", at=datetime(2025, 7, 1, 9, 30))  # EDT, UTC-4

    code, out, err = call("queue", "import", note.uri, "--json")

    assert code == 0, err
    assert json.loads(out)["source_tz"] == NEW_YORK
    rows = rows_by_symbol(queue)
    assert rows["WINTER"]["created_at"] == datetime(2025, 1, 15, 14, 30, tzinfo=UTC)
    assert rows["SUMMER"]["created_at"] == datetime(2025, 7, 1, 13, 30, tzinfo=UTC)
    assert abs(rows["NOW"]["created_at"] - datetime.now(UTC)) < timedelta(minutes=1)  # not 4-5 hours early


def test_source_tz_names_the_zone_the_times_were_written_in(
    new_york: None, call: Callable[..., Result], tmp_path: Path, queue: PositionQueue, lake_root: Path
) -> None:
    note = NoteQueue(tmp_path / "note_queue")
    note.insert(2, "WINTER", at=datetime(2025, 1, 15, 9, 30))

    code, _, err = call("queue", "import", note.uri, "--source-tz", "Nowhere/Atlantis")
    assert code == 1 and "unknown time zone 'Nowhere/Atlantis'" in err
    assert_nothing_written(lake_root)

    code, out, _ = call("queue", "import", note.uri, "--source-tz", "Asia/Tokyo")
    assert code == 0 and "naive times read as Asia/Tokyo" in out
    assert rows_by_symbol(queue)["WINTER"]["created_at"] == datetime(2025, 1, 15, 0, 30, tzinfo=UTC)


def test_dst_gaps_and_folds_map_to_one_instant_each_and_are_reported(
    new_york: None, call: Callable[..., Result], tmp_path: Path, queue: PositionQueue
) -> None:
    note = NoteQueue(tmp_path / "note_queue")
    note.insert(1, "GAP", at=datetime(2025, 3, 9, 2, 30))  # 02:00 -> 03:00: never on a New York clock
    note.insert(2, "FOLD", at=datetime(2025, 11, 2, 1, 30))  # 02:00 -> 01:00: twice on a New York clock
    note.insert(3, "AFTER", at=datetime(2025, 11, 2, 2, 30))  # EST again

    code, out, _ = call("queue", "import", note.uri)

    assert code == 0
    assert "naive times read as America/New_York (2 ambiguous, 2 nonexistent" in out  # created_at and updated_at
    rows = rows_by_symbol(queue)
    assert rows["GAP"]["created_at"] == datetime(2025, 3, 9, 7, 30, tzinfo=UTC)  # the offset before the change
    assert rows["FOLD"]["created_at"] == datetime(2025, 11, 2, 5, 30, tzinfo=UTC)  # the earlier of the two
    assert rows["AFTER"]["created_at"] == datetime(2025, 11, 2, 7, 30, tzinfo=UTC)


def test_imported_failed_items_are_retried_under_the_normal_policy(
    new_york: None, call: Callable[..., Result], tmp_path: Path, queue: PositionQueue
) -> None:
    note = NoteQueue(tmp_path / "note_queue")
    failed = note.insert(504, "DIA", at=datetime(2025, 3, 1, 9, 34))
    note.mark(failed, "FAILED", "Position 504 not found in IB")

    code, _, _ = call("queue", "import", note.uri)

    assert code == 0
    row = rows_by_symbol(queue)["DIA"]
    assert (row["status"], row["attempts"], row["error_message"]) == ("FAILED", 1, "Position 504 not found in IB")
    assert isinstance(row["updated_at"], datetime)
    due = row["updated_at"] + timedelta(seconds=30)  # rules.retry_delay(0) after it failed
    assert row["retry_after"] == due
    assert queue.claimable_count(priority=None, now=due - timedelta(seconds=1)) == 0
    assert queue.claim(priority=None, limit=10, claimed_by="run-1", now=due)["symbol"].to_list() == ["DIA"]


def test_a_dry_run_prints_what_would_be_adopted_and_writes_nothing(
    new_york: None, call: Callable[..., Result], tmp_path: Path, lake_root: Path
) -> None:
    note = NoteQueue(tmp_path / "note_queue")
    pending = note.insert(1, "SPY", at=datetime(2026, 3, 2, 9, 30))  # New York wall time: 14:30 UTC
    done = note.insert(2, "QQQ")
    note.mark(done, "SUCCESS")
    failed = note.insert(3, "IWM")
    note.mark(failed, "FAILED", "Position not found in IB")
    note_version = DeltaTable(note.uri).version()

    code, out, _ = call("queue", "import", note.uri, "--dry-run")
    assert code == 0
    lines = out.splitlines()
    assert lines[:2] == [
        f"Would adopt 3 items from {note.uri} into {lake.table_uri(str(lake_root), lake.QUEUE_TABLE)}; 0 were already "
        "there (dry run: nothing written)",
        "  new items: 1 PENDING, 1 SUCCESS, 1 FAILED",
    ]
    assert f"    {pending}  conid 1 SPY  adopted PENDING, queued 2026-03-02T14:30:00Z" in lines  # item by item
    assert any(line.startswith(f"    {done}  conid 2 QQQ  adopted SUCCESS, queued ") for line in lines)
    assert any(f"    {failed}  conid 3 IWM  adopted FAILED" in line and ", retried from " in line for line in lines)
    code, out, _ = call("queue", "import", note.uri, "--dry-run", "--json")
    report = json.loads(out)
    assert (code, report["dry_run"], report["adopted"], report["would_adopt"]) == (0, True, None, 3)
    assert {item["request_id"]: item["status"] for item in report["new_items"]} == {
        pending: "PENDING",
        done: "SUCCESS",
        failed: "FAILED",
    }
    assert_nothing_written(lake_root)
    assert DeltaTable(note.uri).version() == note_version, "the source is only read"


def test_a_table_the_notes_racing_workers_left_half_written_is_reported(
    new_york: None, call: Callable[..., Result], tmp_path: Path, queue: PositionQueue
) -> None:
    note = NoteQueue(tmp_path / "note_queue")
    kept = [note.insert(conid, f"S{conid}") for conid in range(1, 4)]
    lost = note.insert(99, "LOST")
    note.mark(kept[0], "SUCCESS")
    note.mark(lost, "SUCCESS", re_add=False)  # the worker died between its delete and its append
    deleting_version = DeltaTable(note.uri).version()
    note.mark(kept[1], "FAILED", "timeout")

    code, out, _ = call("queue", "import", note.uri)

    assert code == 0
    assert (
        f"half-written: 1 item deleted and never re-added by the original workers (version {deleting_version})" in out
    )
    assert f"{lost}  conid 99 LOST  last PENDING" in out
    assert set(queue.read()["request_id"].to_list()) == set(kept), "the lost item is reported, not adopted"
    code, out, _ = call("queue", "import", note.uri, "--json")
    report = json.loads(out)
    assert report["half_written_versions"] == [deleting_version]
    assert [(x["request_id"], x["operation"], x["status"]) for x in report["lost"]] == [(lost, "DELETE", "PENDING")]
    assert report["already_present"] == 3 and report["adopted"] == 0
