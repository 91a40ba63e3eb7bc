"""Claims, marks and releases in one process: oldest first, guarded by the run's claim, the claims counter,
retries with exponential backoff, and a table past the 8,192-row MERGE threshold (delta-io/delta-rs#4471)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueInputError, QueueStatus
from position_pipeline_tests.core.queue_support import T0, item_row, version


def test_claim_takes_oldest_pending_and_marks_finish_them(queue: PositionQueue, uri: str) -> None:
    ids = queue.insert_many([(i, f"S{i}") for i in range(1, 8)])
    queue.insert(99, "ACTIVE", priority=1)
    now = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    before = version(uri)

    claimed = queue.claim(limit=5, claimed_by="run-1", now=now)

    assert version(uri) == before + 1
    assert claimed.schema == lake.QUEUE_SCHEMA
    assert claimed["request_id"].to_list() == ids[:5]
    assert set(claimed["status"]) == {"PROCESSING"} and set(claimed["claimed_by"]) == {"run-1"}
    assert set(claimed["claimed_at"]) == {now}
    assert queue.counts() == {
        QueueStatus.PENDING: 3,
        QueueStatus.PROCESSING: 5,
        QueueStatus.SUCCESS: 0,
        QueueStatus.FAILED: 0,
    }

    assert queue.mark_success(ids[:3], claimed_by="run-1") == 3
    assert queue.mark_failed_many({ids[3]: "no position", ids[4]: "timeout"}, claimed_by="run-1") == 2
    assert version(uri) == before + 3
    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert [rows[i]["status"] for i in ids[:5]] == ["SUCCESS"] * 3 + ["FAILED"] * 2
    assert (rows[ids[3]]["error_message"], rows[ids[3]]["attempts"]) == ("no position", 1)

    assert queue.release([ids[3]], claimed_by="run-1") == 1
    again = queue.claim(limit=10, claimed_by="run-2")
    assert again["request_id"].to_list() == [ids[3], ids[5], ids[6]]  # the released one is oldest
    assert queue.mark_failed(ids[3], "still no position", claimed_by="run-2") == 1
    assert queue.read().filter(pl.col("request_id") == ids[3])["attempts"].item() == 2

    assert queue.claim(priority=1, limit=10, claimed_by="run-3")["conid"].to_list() == [99]
    assert queue.claim(limit=10, claimed_by="run-4").is_empty()


def test_marks_from_a_stale_run_are_ignored(queue: PositionQueue) -> None:
    ids = queue.insert_many([(i, f"S{i}") for i in range(1, 5)])
    queue.claim(limit=4, claimed_by="run-old")
    assert queue.release(ids) == 4  # e.g. an operator recovering a run that timed out
    assert queue.claim(limit=4, claimed_by="run-new")["request_id"].to_list() == ids

    assert queue.mark_success(ids, claimed_by="run-old") == 0
    assert queue.mark_failed_many(dict.fromkeys(ids, "late"), claimed_by="run-old") == 0
    assert queue.release(ids, claimed_by="run-old") == 0
    rows = queue.read()
    assert set(rows["status"]) == {"PROCESSING"} and set(rows["claimed_by"]) == {"run-new"}
    assert rows["error_message"].null_count() == 4

    assert queue.mark_success(ids[:2], claimed_by="run-new") == 2
    assert queue.mark_failed_many({ids[0]: "after success"}, claimed_by="run-new") == 0  # finished stays finished
    assert queue.release(ids[:2]) == 0  # SUCCESS is never reopened
    assert queue.mark_success(ids[2]) == 1  # the design note's call: a single id, no claim check
    assert queue.counts()[QueueStatus.SUCCESS] == 3


def test_release_stale_recovers_only_old_unchanged_claims(queue: PositionQueue) -> None:
    ids = queue.insert_many([(i, f"S{i}") for i in range(1, 5)])
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    queue.claim(limit=2, claimed_by="run-dead", now=t0)
    queue.claim(limit=1, claimed_by="run-alive", now=t0 + timedelta(minutes=9))

    assert queue.release_stale(timedelta(minutes=5), now=t0 + timedelta(minutes=10)) == 2
    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert [rows[i]["status"] for i in ids] == ["PENDING", "PENDING", "PROCESSING", "PENDING"]
    assert rows[ids[0]]["claimed_by"] is None and rows[ids[2]]["claimed_by"] == "run-alive"
    assert queue.release_stale(timedelta(minutes=5), now=t0 + timedelta(minutes=10)) == 0


def test_marks_validate_ids_and_skip_empty_input(queue: PositionQueue, uri: str) -> None:
    queue.insert(1, "A")
    before = version(uri)
    assert queue.mark_success([]) == 0
    assert queue.mark_failed_many({}) == 0
    assert queue.mark_success(["unknown-id"], claimed_by="run-1") == 0
    assert version(uri) == before  # neither empty input nor a MERGE that matched nothing commits
    with pytest.raises(QueueInputError, match="row 1: request_id"):
        queue.mark_success(["x", ""])
    with pytest.raises(ValueError, match="claimed_by"):
        queue.claim(claimed_by=" ")
    with pytest.raises(ValueError, match="timezone-aware"):
        queue.claim(claimed_by="run-1", now=datetime(2030, 1, 1))


@pytest.mark.timeout(60)
def test_claim_and_mark_on_a_table_past_the_merge_batch_size(queue: PositionQueue) -> None:
    """MERGE in deltalake 1.6.x raised false "multiple source rows" errors past 8,192 target rows (#4471)."""
    queue.insert_many([(i, f"S{i}") for i in range(1, 10_001)])
    queue.insert_many([(i, f"S{i}") for i in range(10_001, 10_501)])

    started = time.perf_counter()
    claimed = queue.claim(limit=50, claimed_by="run-big")
    elapsed = time.perf_counter() - started

    assert claimed["conid"].to_list() == list(range(1, 51))
    ids = claimed["request_id"].to_list()
    assert queue.mark_success(ids[:25], claimed_by="run-big") == 25
    assert queue.mark_failed_many(dict.fromkeys(ids[25:], "boom"), claimed_by="run-big") == 25
    assert queue.release(ids[25:], claimed_by="run-big") == 25
    assert queue.counts() == {
        QueueStatus.PENDING: 10_475,
        QueueStatus.PROCESSING: 0,
        QueueStatus.SUCCESS: 25,
        QueueStatus.FAILED: 0,
    }
    assert queue.read()["request_id"].n_unique() == 10_500
    assert elapsed < 10, f"a 50-item claim on 10,500 rows took {elapsed:.2f} s"

    # A source past the threshold too (#4572): one claim and one mark of 9,000 items.
    many = queue.claim(limit=9_000, claimed_by="run-many")["request_id"]
    assert many.len() == many.n_unique() == 9_000
    assert queue.mark_success(many, claimed_by="run-many") == 9_000
    assert queue.counts()[QueueStatus.SUCCESS] == 9_025


def test_claims_counts_every_claim_and_attempts_only_failures(queue: PositionQueue) -> None:
    item = queue.insert(1, "A")
    assert (item_row(queue, item)["claims"], item_row(queue, item)["attempts"]) == (0, 0)

    queue.claim(claimed_by="run-1", now=T0)
    assert (item_row(queue, item)["claims"], item_row(queue, item)["attempts"]) == (1, 0)
    assert queue.release_runs(["run-1"]) == 1  # a dead run's claim: not a failure
    assert (item_row(queue, item)["claims"], item_row(queue, item)["attempts"]) == (1, 0)

    again = queue.claim(claimed_by="run-2", now=T0)
    assert again["claims"].to_list() == [2]  # what the pipeline sees: claimed before
    assert queue.release(item, claimed_by="run-2") == 1
    assert (item_row(queue, item)["claims"], item_row(queue, item)["attempts"]) == (2, 0)

    queue.claim(claimed_by="run-3", now=T0)
    assert queue.mark_failed(item, "timeout", claimed_by="run-3", now=T0) == 1
    assert (item_row(queue, item)["claims"], item_row(queue, item)["attempts"]) == (3, 1)
    assert queue.claim(claimed_by="run-4", now=T0 + timedelta(minutes=1))["claims"].to_list() == [4]
    assert queue.mark_success(item, claimed_by="run-4") == 1
    final = item_row(queue, item)
    assert (final["status"], final["claims"], final["attempts"], final["retry_after"]) == ("SUCCESS", 4, 1, None)


def test_mark_failed_sets_retry_after_from_the_attempts_before(queue: PositionQueue) -> None:
    item, other = queue.insert_many([(1, "A"), (2, "B")])
    now = T0
    expected = []
    for attempt in range(4):
        claimed = queue.claim(limit=1, claimed_by=f"run-{attempt}", now=now, max_attempts=10)
        assert claimed["request_id"].to_list() == [item]
        assert claimed["retry_after"].to_list() == [None]  # a claim clears it
        assert queue.mark_failed_many({item: f"fail {attempt}"}, claimed_by=f"run-{attempt}", now=now) == 1
        row = item_row(queue, item)
        assert (row["status"], row["attempts"], row["error_message"]) == ("FAILED", attempt + 1, f"fail {attempt}")
        expected.append(row["retry_after"] - now)
        now = row["retry_after"]
    assert expected == [timedelta(seconds=s) for s in (30, 60, 120, 240)]

    # The cap, and a batch with different attempts before: each item gets its own delay.
    queue.claim(limit=2, priority=None, claimed_by="run-cap", now=now, max_attempts=10)
    at = now + timedelta(seconds=1)
    marked = queue.mark_failed_many(
        {item: "again", other: "first"}, claimed_by="run-cap", now=at, max_backoff=timedelta(minutes=5)
    )
    assert marked == 2
    assert item_row(queue, item)["retry_after"] == at + timedelta(minutes=5)  # 30 s * 2**4 = 8 min, capped at 5
    assert item_row(queue, other)["retry_after"] == at + timedelta(seconds=30)
    assert queue.mark_failed(item, "stale", claimed_by="run-gone", now=at) == 0  # the claim guard still holds
    with pytest.raises(ValueError, match="negative"):
        queue.mark_failed_many({item: "x"}, backoff=timedelta(seconds=-1))


def test_failed_items_are_claimable_after_retry_after_while_under_max_attempts(queue: PositionQueue, uri: str) -> None:
    failing, pending = queue.insert_many([(1, "FAILS"), (2, "WAITS")])
    queue.claim(limit=1, claimed_by="run-1", now=T0)
    queue.mark_failed(failing, "no position", claimed_by="run-1", now=T0)  # retry_after = T0 + 30 s
    assert queue.claim(priority=None, limit=1, claimed_by="noop", now=T0, max_attempts=1).height == 1
    queue.release_runs(["noop"])

    early = T0 + timedelta(seconds=29)
    assert queue.claimable_count(now=early) == 1
    before = version(uri)
    assert queue.claim(limit=5, claimed_by="run-early", now=early)["request_id"].to_list() == [pending]
    queue.release(pending, claimed_by="run-early")
    assert version(uri) == before + 2

    due = T0 + timedelta(seconds=30)  # retry_after <= now: due exactly then
    assert queue.claimable_count(now=due) == 2
    assert queue.claimable_count(now=due, max_attempts=1) == 1  # attempts 1 is not < 1
    assert queue.oldest_claimable_at(now=due) == item_row(queue, failing)["created_at"]
    claimed = queue.claim(limit=5, claimed_by="run-2", now=due)
    assert claimed["request_id"].to_list() == [failing, pending]  # oldest created_at first, FAILED or PENDING
    assert claimed["status"].to_list() == ["PROCESSING"] * 2
    assert queue.mark_failed(failing, "still none", claimed_by="run-2", now=due) == 1  # attempts 2, + 60 s
    assert queue.mark_success(pending, claimed_by="run-2") == 1

    later = due + timedelta(seconds=60)
    assert queue.claim(limit=5, claimed_by="run-3", now=later, max_attempts=2).is_empty()
    assert queue.claimable_count(now=later, max_attempts=2) == 0
    assert queue.oldest_claimable_at(now=later, max_attempts=2) is None
    assert queue.claim(limit=5, claimed_by="run-3", now=later)["request_id"].to_list() == [failing]
    assert queue.mark_failed(failing, "gone", claimed_by="run-3", now=later) == 1  # attempts 3: done by default

    forever = later + timedelta(days=365)
    assert queue.claimable_count(now=forever) == 0
    assert queue.claim(limit=5, claimed_by="run-4", now=forever).is_empty()
    assert queue.claim(limit=5, claimed_by="run-4", now=forever, max_attempts=4)["request_id"].to_list() == [failing]


def test_max_attempts_must_be_positive(queue: PositionQueue) -> None:
    for bad in [0, -1, True]:
        with pytest.raises(ValueError, match="max_attempts"):
            queue.claim(claimed_by="run-1", max_attempts=bad)
        with pytest.raises(ValueError, match="max_attempts"):
            queue.claimable_count(max_attempts=bad)
