"""`collect_status` against real Delta tables under tmp_path: an empty lake, a queue holding items in every status
and both priorities (support/status_lake.py), a position_updates table with several runs, and the JSON form."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from deltalake import DeltaTable

from position_pipeline.core import lake, status
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline_tests.support.status_lake import MINUTE, Lake, T, build_full_lake, claim


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """The lake of `build_full_lake`, shared by this module's tests; they must not change it."""
    return build_full_lake(str(tmp_path_factory.mktemp("status") / "lake"))


def depth(
    pending: tuple[int, int], processing: tuple[int, int], success: tuple[int, int], failed: tuple[int, int]
) -> dict[str, dict[int, int]]:
    return {
        name: dict(zip((1, 2), counts, strict=True))
        for name, counts in zip(
            ("PENDING", "PROCESSING", "SUCCESS", "FAILED"), (pending, processing, success, failed), strict=True
        )
    }


# collect_status


def test_every_number_of_a_queue_in_every_status(full: Lake) -> None:
    now = T + 25 * MINUTE
    s = status.collect_status(full.root, now=now)
    queue_uri = lake.table_uri(full.root, lake.QUEUE_TABLE)
    dt = DeltaTable(queue_uri)

    assert s.root == full.root
    assert s.now == now
    assert s.depth == depth((2, 2), (1, 3), (1, 2), (2, 1))
    assert s.by_status == {"PENDING": 4, "PROCESSING": 4, "SUCCESS": 3, "FAILED": 3}
    assert s.by_priority == {1: 6, 2: 8}
    assert s.total == 14
    # 1 creation + 6 appends + 7 claims + 7 marks; nothing wrote while status read.
    assert s.queue == status.TableStats(queue_uri, True, 20, len(dt.file_uris()), 14)
    assert s.queue.files >= 1
    assert s.queue_changed is False

    # Past both retry times: H (1 attempt) and G (2) are claimable again, F (3) is not.
    assert s.claimable == 6
    assert s.oldest_pending_at == full.created("N1")
    assert s.oldest_pending_age_s == (now - full.created("N1")).total_seconds()
    assert s.oldest_claimable_at == full.created("G")
    assert s.oldest_claimable_age_s == (now - full.created("G")).total_seconds()

    assert s.max_attempts == 3
    assert s.failed_by_attempts == {1: 1, 2: 1, 3: 1}
    assert s.recent_failures == [
        status.FailedItem(
            full.ids["G"],
            201,
            "G",
            2,
            2,
            T + 20 * MINUTE + timedelta(seconds=5),
            T + 21 * MINUTE + timedelta(seconds=5),
            "G not held again",
        ),
        status.FailedItem(
            full.ids["H"],
            102,
            "H",
            1,
            1,
            T + 20 * MINUTE,
            T + 20 * MINUTE + timedelta(seconds=30),
            "H: IB sent\nno values",
        ),
        status.FailedItem(full.ids["F"], 101, "F", 1, 3, T + 3 * MINUTE, T + 5 * MINUTE, "F failed 3"),
    ]
    assert s.processing_by_run == {"run-a": 3, "run-b": 1}


@pytest.mark.parametrize(
    ("after", "claimable", "oldest"),
    [
        (timedelta(seconds=10), 4, "N1"),  # neither failed item is due: the oldest claimable is the oldest PENDING
        (timedelta(seconds=30), 5, "H"),  # H's retry_after is exactly now: due
        (timedelta(seconds=65), 6, "G"),  # G's too
    ],
)
def test_claimability_is_the_queues_own(full: Lake, after: timedelta, claimable: int, oldest: str) -> None:
    now = T + 20 * MINUTE + after
    s = status.collect_status(full.root, now=now)

    assert s.claimable == claimable
    assert s.claimable == PositionQueue(lake.table_uri(full.root, lake.QUEUE_TABLE)).claimable_count(None, now=now)
    assert s.oldest_claimable_at == full.created(oldest)
    assert s.oldest_pending_at == full.created("N1")


def test_last_successful_batch_is_the_newest_run(full: Lake) -> None:
    s = status.collect_status(full.root, now=T)
    uri = lake.table_uri(full.root, lake.POSITION_UPDATES_TABLE)

    assert s.position_updates == status.TableStats(uri, True, 3, 3, 9)
    assert s.last_batch == status.Batch(
        "run-late", datetime(2025, 1, 2, 9, 0, tzinfo=UTC), 2, datetime(2025, 1, 2, 8, 58, 30, tzinfo=UTC)
    )
    assert s.last_batch.values_age_s == 90.0


def test_recent_failures_are_the_five_newest_failed_items(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids = queue.insert_many([(i, f"X{i}", 2) for i in range(1, 9)])
    queue.claim(None, 10, claimed_by="run-x", now=T)
    queue.mark_failed_many(dict.fromkeys(ids[:4], "first"), "run-x", now=T + MINUTE)
    queue.mark_failed_many(dict.fromkeys(ids[4:], "second"), "run-x", now=T + 2 * MINUTE)
    # Re-claimed: PROCESSING again, updated later, still carrying their last error; no longer failures.
    claim(queue, "run-y", T + 3 * MINUTE, ["X1", "X2"], limit=2)

    s = status.collect_status(root, now=T + 4 * MINUTE)

    # Newest failure first; among equal times the newest item first.
    assert [f.request_id for f in s.recent_failures] == [ids[7], ids[6], ids[5], ids[4], ids[3]]
    assert [f.error_message for f in s.recent_failures] == ["second"] * 4 + ["first"]
    assert s.failed_by_attempts == {1: 6}
    assert s.claimable == 6  # every retry (30 s) is due
    assert s.processing_by_run == {"run-y": 2}


def test_an_empty_lake_is_all_zeros_and_nothing_is_created(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")

    s = status.collect_status(root)

    assert s.depth == depth((0, 0), (0, 0), (0, 0), (0, 0))
    assert (s.total, s.claimable, s.oldest_pending_at, s.oldest_claimable_at) == (0, 0, None, None)
    assert (s.oldest_pending_age_s, s.oldest_claimable_age_s) == (None, None)
    assert (s.failed_by_attempts, s.recent_failures, s.processing_by_run, s.last_batch) == ({}, [], {}, None)
    assert s.queue == status.TableStats(lake.table_uri(root, lake.QUEUE_TABLE), False, None, 0, 0)
    assert s.position_updates == status.TableStats(lake.table_uri(root, lake.POSITION_UPDATES_TABLE), False, None, 0, 0)
    assert not (tmp_path / "lake").exists()


def test_empty_tables_are_all_zeros(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    assert PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE)).counts() == dict.fromkeys(QueueStatus, 0)  # creates
    lake.ensure_position_updates_table(root)

    s = status.collect_status(root)

    assert s.total == 0 and s.claimable == 0 and s.last_batch is None
    assert (s.queue.exists, s.queue.version, s.queue.files, s.queue.rows) == (True, 0, 0, 0)
    assert (s.position_updates.exists, s.position_updates.version, s.position_updates.files) == (True, 0, 0)


def test_a_naive_now_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        status.collect_status(str(tmp_path), now=datetime(2025, 1, 1))


# JSON


def test_json_round_trips_with_utc_timestamps(full: Lake) -> None:
    now = T + 25 * MINUTE
    data = json.loads(json.dumps(status.collect_status(full.root, now=now).to_json()))

    assert data["lake"] == full.root
    assert datetime.fromisoformat(data["now"]) == now and data["now"].endswith("Z")
    queue = data["queue"]
    assert queue["exists"] is True and queue["version"] == 20 and queue["rows"] == queue["total"] == 14
    assert queue["changed_while_reading"] is False
    assert queue["depth"] == {
        "PENDING": {"1": 2, "2": 2, "total": 4},
        "PROCESSING": {"1": 1, "2": 3, "total": 4},
        "SUCCESS": {"1": 1, "2": 2, "total": 3},
        "FAILED": {"1": 2, "2": 1, "total": 3},
        "total": {"1": 6, "2": 8, "total": 14},
    }
    assert queue["by_status"] == {"PENDING": 4, "PROCESSING": 4, "SUCCESS": 3, "FAILED": 3}
    assert queue["by_priority"] == {"1": 6, "2": 8}
    assert queue["claimable"] == 6
    assert datetime.fromisoformat(queue["oldest_pending"]["at"]) == full.created("N1")
    assert queue["oldest_pending"]["age_seconds"] == (now - full.created("N1")).total_seconds()
    assert datetime.fromisoformat(queue["oldest_claimable"]["at"]) == full.created("G")
    assert queue["failed_by_attempts"] == {"1": 1, "2": 1, "3": 1}
    assert [f["request_id"] for f in queue["recent_failures"]] == [full.ids[s] for s in ("G", "H", "F")]
    assert queue["recent_failures"][1] == {
        "request_id": full.ids["H"],
        "conid": 102,
        "symbol": "H",
        "priority": 1,
        "attempts": 1,
        "failed_at": (T + 20 * MINUTE).isoformat().replace("+00:00", "Z"),
        "retry_after": (T + 20 * MINUTE + timedelta(seconds=30)).isoformat().replace("+00:00", "Z"),
        "error_message": "H: IB sent\nno values",
    }
    assert queue["processing_by_run"] == {"run-a": 3, "run-b": 1}
    updates = data["position_updates"]
    assert (updates["exists"], updates["version"], updates["files"], updates["rows"]) == (True, 3, 3, 9)
    assert updates["last_batch"] == {
        "run_id": "run-late",
        "snapshot_at": "2025-01-02T09:00:00Z",
        "age_seconds": (now - datetime(2025, 1, 2, 9, tzinfo=UTC)).total_seconds(),
        "rows": 2,
        "values_as_of": "2025-01-02T08:58:30Z",
        "values_age_seconds": 90.0,
    }
