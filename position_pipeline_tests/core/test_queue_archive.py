"""The queue archive on real Delta tables: SUCCESS items moved exactly once, through crashes and concurrent changes."""

import os
from collections import Counter
from datetime import timedelta
from typing import Any

import polars as pl
import pytest
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.maintenance import compact, table_state
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.core.queue import archive as queue_archive
from position_pipeline.core.queue.archive import archive_succeeded, archive_uri
from position_pipeline_tests.support.lake_tables import DAY, NOW, succeed_items, table_ids, table_rows

pytestmark = pytest.mark.timeout(60)


def test_archive_moves_exactly_the_old_success_items_once(root: str, queue: PositionQueue) -> None:
    old = succeed_items(queue, 5, NOW - 3 * DAY)
    recent = succeed_items(queue, 3, NOW - timedelta(hours=1), first_conid=100)
    pending = queue.insert_many([(200 + i, "P") for i in range(2)])
    failed = queue.insert_many([(300 + i, "F") for i in range(2)])
    queue.claim(None, limit=10, claimed_by="run-f", now=NOW - 3 * DAY)
    queue.mark_failed_many(dict.fromkeys(failed, "boom"), claimed_by="run-f", now=NOW - 3 * DAY)
    processing = set(queue.read().filter(pl.col("status") == "PROCESSING")["request_id"])
    assert processing == set(pending)  # claimed 3 days ago, never finished: not SUCCESS, so never archived
    before = queue.read().sort("request_id")

    assert archive_succeeded(root, DAY, now=NOW) == 5

    archived = table_rows(archive_uri(root))
    assert archived.equals(before.filter(pl.col("request_id").is_in(old)))  # whole rows, unchanged
    assert sorted(table_ids(queue.table_uri)) == sorted(recent + pending + failed)
    version = DeltaTable(archive_uri(root)).version()

    assert archive_succeeded(root, DAY, now=NOW) == 0
    assert DeltaTable(archive_uri(root)).version() == version  # nothing to do commits nothing
    assert table_rows(archive_uri(root)).equals(archived)
    # Later, the recent ones are old enough too.
    assert archive_succeeded(root, DAY, now=NOW + DAY, batch_size=2) == 3  # two rounds
    assert sorted(table_ids(archive_uri(root))) == sorted(old + recent)


def test_an_absent_queue_archives_nothing_and_creates_nothing(root: str) -> None:
    assert archive_succeeded(root, DAY, now=NOW) == 0
    assert not os.path.exists(archive_uri(root))
    assert not os.path.exists(lake.table_uri(root, lake.QUEUE_TABLE))
    with pytest.raises(ValueError, match="older_than must be positive"):
        archive_succeeded(root, timedelta(0))


def test_a_crash_between_insert_and_delete_then_a_rerun_keeps_each_item_once(
    root: str, queue: PositionQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """9,000 rows: past delta-rs' 8,192-row MERGE batch, where its row-match check once misfired."""
    old = succeed_items(queue, 9_000, NOW - 3 * DAY)
    live = queue.insert_many([(20_000 + i, "P") for i in range(10)])

    def crash(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("worker died")

    monkeypatch.setattr(queue_archive, "_delete_archived", crash)
    with pytest.raises(RuntimeError, match="worker died"):
        archive_succeeded(root, DAY, now=NOW)
    monkeypatch.undo()
    assert len(table_ids(archive_uri(root))) == 9_000  # in both tables until the re-run
    assert len(table_ids(queue.table_uri)) == 9_010
    archive_version = DeltaTable(archive_uri(root)).version()

    assert archive_succeeded(root, DAY, now=NOW) == 9_000

    in_archive, in_queue = table_ids(archive_uri(root)), table_ids(queue.table_uri)
    assert sorted(in_archive) == sorted(old)
    assert sorted(in_queue) == sorted(live)
    assert Counter(in_archive + in_queue).most_common(1)[0][1] == 1
    assert DeltaTable(archive_uri(root)).version() == archive_version  # the re-run inserted nothing


def test_an_item_changed_after_a_crashed_round_is_never_lost(
    root: str, queue: PositionQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    requeued, remarked, plain = succeed_items(queue, 3, NOW - 3 * DAY)
    monkeypatch.setattr(queue_archive, "_delete_archived", lambda *a, **k: 0)  # the round stops after its insert
    assert archive_succeeded(root, DAY, now=NOW) == 0
    monkeypatch.undo()
    # Meanwhile an operator sets one back to FAILED and another is marked SUCCESS again (still long ago).
    queue.mark_failed(requeued, "recheck", now=NOW - 2 * DAY)
    queue.mark_success(remarked, now=NOW - 2 * DAY)

    assert archive_succeeded(root, DAY, now=NOW) == 2

    table = queue.read()
    assert table["request_id"].to_list() == [requeued]  # not SUCCESS: stays, to be processed again
    assert table["status"].to_list() == [QueueStatus.FAILED]
    archived = table_rows(archive_uri(root))
    assert {plain, remarked} <= set(archived["request_id"])
    updated = dict(zip(archived["request_id"], archived["updated_at"], strict=True))
    assert updated[remarked] == NOW - 2 * DAY  # the archive holds the version that left the queue


def test_a_claim_after_archiving_20000_items_reads_only_the_live_rows(root: str, queue: PositionQueue) -> None:
    succeed_items(queue, 20_000, NOW - 3 * DAY)
    queue.insert_many([(50_000 + i, "P") for i in range(50)])
    assert compact(queue.table_uri).after.files == 1  # type: ignore[union-attr]
    # Compacted, the live items share a file with the history: a claim rewrites all of it.
    assert queue.claim(None, limit=10, claimed_by="run-before", now=NOW).height == 10
    before = DeltaTable(queue.table_uri).history(1)[0]["operationMetrics"]
    assert before["num_target_rows_copied"] + before["num_target_rows_updated"] == 20_050

    assert archive_succeeded(root, DAY, now=NOW) == 20_000
    assert compact(queue.table_uri).skipped is None

    state = table_state(queue.table_uri)
    assert state is not None
    assert (state.rows, state.files) == (50, 1)
    assert queue.claim(None, limit=10, claimed_by="run-after", now=NOW).height == 10
    after = DeltaTable(queue.table_uri).history(1)[0]["operationMetrics"]
    assert after["num_target_rows_updated"] == 10
    assert after["num_target_rows_copied"] + after["num_target_rows_updated"] == 50
    assert len(table_ids(archive_uri(root))) == 20_000
