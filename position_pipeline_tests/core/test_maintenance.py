"""Table maintenance on real Delta tables: compaction, checkpoints, vacuum, small-file counts, compaction plans."""

import json
import os
import shutil
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from position_pipeline.core import lake
from position_pipeline.core.maintenance import (
    COMPACT_MIN_SMALL_FILES,
    HOT_TARGET_SIZE,
    checkpoint,
    closed_days,
    compact,
    compactions,
    open_days,
    small_files,
    steps,
    table_state,
    vacuum,
)
from position_pipeline.core.queue import PositionQueue
from position_pipeline.core.queue.archive import archive_uri
from position_pipeline_tests.support.lake_tables import (
    DAY,
    NOW,
    content_checksum,
    referenced_files,
    table_rows,
    update_batch,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def appended_200_times(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A lake whose queue got 200 items in 200 inserts (200 commits, 200 files); built once, copied per test."""
    root = str(tmp_path_factory.mktemp("appended") / "lake")
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    for i in range(200):
        queue.insert(i + 1, f"S{i}")
    return root


@pytest.fixture
def small_files_queue(appended_200_times: str, root: str) -> PositionQueue:
    shutil.copytree(appended_200_times, root)
    return PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))


def _data_files(uri: str) -> set[str]:
    """Parquet files on disk, relative to the table (the log excluded)."""
    return {
        str(p.relative_to(uri)) for p in Path(uri).rglob("*.parquet") if "_delta_log" not in p.relative_to(uri).parts
    }


def _age_removals(uri: str, by: timedelta) -> None:
    """Pretend the files removed so far were removed `by` earlier: the clock vacuum reads is in the log.

    Only for removals committed after the last checkpoint (a checkpoint carries its own copy of them): here the
    compaction's, one commit after the checkpoint delta-rs writes by itself at version 200.
    """
    for path in Path(uri, "_delta_log").glob("*.json"):
        actions = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for action in actions:
            if "remove" in action:
                action["remove"]["deletionTimestamp"] -= int(by.total_seconds() * 1000)
        path.write_text("".join(json.dumps(a) + "\n" for a in actions))


@pytest.mark.system  # over 2 s: too slow for the fast tier
def test_compaction_turns_200_appends_into_one_file_with_the_same_rows(small_files_queue: PositionQueue) -> None:
    queue = small_files_queue
    rows = table_rows(queue.table_uri)

    step = compact(queue.table_uri)

    assert step.skipped is None
    assert step.before is not None and step.after is not None
    assert (step.before.files, step.after.files) == (200, 1)
    assert step.details["files_removed"] == 200
    assert step.after.version == step.before.version + 1
    compacted = table_rows(queue.table_uri)
    assert compacted.height == 200
    assert content_checksum(compacted) == content_checksum(rows)
    assert compact(queue.table_uri).details["files_removed"] == 0  # nothing left to do


def test_position_updates_compaction_leaves_today_alone(root: str) -> None:
    uri = lake.ensure_position_updates_table(root)
    today = NOW.date()
    days = [today - 3 * DAY, today - 2 * DAY, today - DAY]
    table = DeltaTable(uri)
    for batch in range(30):
        write_deltalake(table, update_batch(days[batch % 3], batch), mode="append")
    for batch in range(5):
        write_deltalake(table, update_batch(today, batch), mode="append")
    rows = pl.scan_delta(uri).collect()
    today_files = {f for f in referenced_files(uri) if f.startswith(f"snapshot_date={today}/")}
    assert len(today_files) == 5

    step = compact(uri, partition_filters=closed_days(today))

    assert step.skipped is None
    assert step.before is not None and step.after is not None
    assert (step.before.files, step.after.files) == (35, 3 + 5)
    assert step.details["partitions_optimized"] == 3
    files = referenced_files(uri)
    assert today_files <= files  # the day being appended is untouched
    assert Counter(f.split("/")[0] for f in files - today_files) == {f"snapshot_date={d}": 1 for d in days}
    after = pl.scan_delta(uri).collect()
    assert after.height == rows.height == 105
    assert content_checksum(after) == content_checksum(rows)


def test_vacuum_keeps_replaced_files_for_the_retention_then_deletes_them(small_files_queue: PositionQueue) -> None:
    uri = small_files_queue.table_uri
    rows = table_rows(uri)
    replaced_version = DeltaTable(uri).version()
    compact(uri)
    assert len(_data_files(uri)) == 201

    fresh = vacuum(uri, timedelta(hours=1))
    assert fresh.details["files_deleted"] == 0  # replaced a moment ago: a reader of the older version needs them
    old_snapshot = DeltaTable(uri)
    old_snapshot.load_as_version(replaced_version)
    assert content_checksum(pl.scan_delta(old_snapshot).collect()) == content_checksum(rows)

    # Files a writer is still writing are not in the log yet either: only old ones may go.
    some = sorted(_data_files(uri))[0]
    shutil.copy(Path(uri, some), Path(uri, "part-orphan-old.parquet"))
    shutil.copy(Path(uri, some), Path(uri, "part-orphan-new.parquet"))
    two_hours_ago = time.time() - 7_200
    os.utime(Path(uri, "part-orphan-old.parquet"), (two_hours_ago, two_hours_ago))
    _age_removals(uri, timedelta(hours=2))

    step = vacuum(uri, timedelta(hours=1))

    assert step.skipped is None
    assert step.details["files_deleted"] == 201
    assert _data_files(uri) == referenced_files(uri) | {"part-orphan-new.parquet"}
    assert content_checksum(table_rows(uri)) == content_checksum(rows)
    for out_of_range in (timedelta(minutes=59), timedelta(days=7, hours=1)):
        with pytest.raises(ValueError, match="from 1:00:00 to 7 days"):
            vacuum(uri, out_of_range)


def test_checkpoint_lets_readers_start_from_one_file(queue: PositionQueue) -> None:
    for i in range(5):
        queue.insert(i + 1, f"S{i}")
    step = checkpoint(queue.table_uri)
    assert step.skipped is None
    version = DeltaTable(queue.table_uri).version()
    assert step.details["checkpoint_version"] == version
    log = Path(queue.table_uri, "_delta_log")
    assert (log / f"{version:020d}.checkpoint.parquet").exists()
    assert json.loads((log / "_last_checkpoint").read_text())["version"] == version
    assert len(table_rows(queue.table_uri)) == 5


def test_steps_on_an_absent_table_are_skipped(root: str) -> None:
    uri = archive_uri(root)
    for step in (compact(uri), checkpoint(uri), vacuum(uri)):
        assert step.skipped == "no table"
    assert not os.path.exists(uri)


def test_a_compaction_that_keeps_losing_to_a_writer_is_reported_skipped(
    queue: PositionQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [queue.insert(i + 1, f"S{i}") for i in range(20)]
    real = steps._compact_once
    races = {"left": 10}

    def with_a_mark_in_between(dt: DeltaTable, *args: Any) -> dict[str, Any]:
        # The table was read; a producer's mark rewrites a file it holds before the compaction commits.
        if races["left"]:
            races["left"] -= 1
            queue.mark_success(ids[0], now=NOW)
        return real(dt, *args)

    monkeypatch.setattr(steps, "_compact_once", with_a_mark_in_between)
    lost = compact(queue.table_uri, attempts=3)
    assert lost.skipped is not None and "lost to concurrent writers 3 times" in lost.skipped
    assert lost.before == lost.after
    assert table_state(queue.table_uri).files == 20  # type: ignore[union-attr]

    races["left"] = 1  # one more race, then it wins its second try
    won = compact(queue.table_uri, attempts=3)
    assert won.skipped is None
    assert won.after is not None and won.after.files == 1
    assert len(table_rows(queue.table_uri)) == 20


def test_hot_compaction_leaves_files_that_reached_the_target_alone(root: str) -> None:
    uri = lake.ensure_position_updates_table(root)
    today = NOW.date()
    write_deltalake(uri, update_batch(today, 0, size=5_000), mode="append")
    [big] = referenced_files(uri)
    big_size = Path(uri, big).stat().st_size
    for batch in range(1, 13):
        write_deltalake(uri, update_batch(today, batch), mode="append")
    rows = pl.scan_delta(uri).collect()
    assert small_files(uri, target_size=big_size) == 12

    step = compact(uri, partition_filters=open_days(today), target_size=big_size, min_small_files=10)

    assert step.details["files_removed"] == 12  # the big file is not rewritten again
    assert big in referenced_files(uri) and len(referenced_files(uri)) == 2
    assert content_checksum(pl.scan_delta(uri).collect()) == content_checksum(rows)
    assert small_files(uri, target_size=big_size) == 1


def test_small_files_are_counted_per_partition_and_the_plans_use_the_hot_target(root: str) -> None:
    uri = lake.ensure_position_updates_table(root)
    for batch in range(5):
        write_deltalake(uri, update_batch(NOW.date() - DAY, batch), mode="append")
    for batch in range(3):
        write_deltalake(uri, update_batch(NOW.date(), batch), mode="append")
    assert small_files(uri) == 5
    assert small_files(uri, partition_filters=open_days(NOW.date())) == 3  # the partitions compaction will touch
    assert small_files(uri, target_size=1) == 0
    assert small_files(lake.table_uri(root, lake.QUEUE_TABLE)) == 0  # no table

    today = NOW.date()
    assert compactions(lake.QUEUE_TABLE, full=False, today=today) == [
        {"target_size": HOT_TARGET_SIZE, "min_small_files": COMPACT_MIN_SMALL_FILES}
    ]
    assert compactions(lake.POSITION_UPDATES_TABLE, full=True, today=today) == [
        {"partition_filters": closed_days(today)},
        {"target_size": HOT_TARGET_SIZE, "min_small_files": None, "partition_filters": open_days(today)},
    ]
    assert compactions(lake.ARCHIVE_TABLE, full=False, today=today) == []
    assert compactions(lake.ARCHIVE_TABLE, full=True, today=today) == [{}]
