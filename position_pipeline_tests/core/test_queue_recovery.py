"""Giving items back: the claims of finished runs (release_runs) and FAILED items an operator requeues."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue
from position_pipeline_tests.core.queue_support import T0, item_row, version


def test_claims_by_run_and_release_runs(queue: PositionQueue, uri: str) -> None:
    ids = queue.insert_many([(i, f"S{i}") for i in range(1, 7)])
    assert queue.claims_by_run() == {}
    queue.claim(limit=2, claimed_by="run-dead", now=T0)
    queue.claim(limit=1, claimed_by="run-alive", now=T0)
    queue.claim(limit=2, claimed_by="run-done", now=T0)
    queue.mark_success(ids[3], claimed_by="run-done")
    assert queue.claims_by_run() == {"run-dead": 2, "run-alive": 1, "run-done": 1}

    before = version(uri)
    assert queue.release_runs(["run-dead", "run-done", "run-unknown"]) == 3
    assert version(uri) == before + 1, "one commit for every run"
    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert [rows[i]["status"] for i in ids] == ["PENDING", "PENDING", "PROCESSING", "SUCCESS", "PENDING", "PENDING"]
    assert all(rows[i]["claimed_by"] is None and rows[i]["claimed_at"] is None for i in [ids[0], ids[1], ids[4]])
    assert all(rows[i]["attempts"] == 0 and rows[i]["claims"] == 1 for i in [ids[0], ids[1], ids[4]])
    assert rows[ids[3]]["claimed_by"] == "run-done"  # finished work is never reopened
    assert queue.claims_by_run() == {"run-alive": 1}

    before = version(uri)
    assert queue.release_runs(["run-dead"]) == 0
    assert queue.release_runs([]) == 0
    assert version(uri) == before, "nothing to release: no commit"
    with pytest.raises(ValueError, match="claimed_by"):
        queue.release_runs(["run-1", " "])


def test_release_runs_leaves_another_runs_claim_alone(queue: PositionQueue, uri: str) -> None:
    ids = queue.insert_many([(1, "A"), (2, "B")])
    queue.claim(limit=2, claimed_by="run-old", now=T0)
    stale = DeltaTable(uri)  # what a sensor tick read while run-old still held both items
    assert queue.release(ids[0], claimed_by="run-old") == 1  # e.g. run-old gave one back before it died
    assert queue.claim(limit=1, claimed_by="run-new", now=T0)["request_id"].to_list() == [ids[0]]

    # The first attempt MERGEs on the stale snapshot, where run-old still holds ids[0]: Delta refuses that commit
    # (newer commits rewrote the PROCESSING rows it read), and the retry re-reads and releases only what run-old
    # still holds.
    opened = iter([stale])
    fresh = queue._open
    queue._open = lambda: next(opened, None) or fresh()  # type: ignore[method-assign]
    assert queue.release_runs("run-old") == 1  # a single run id is one id, not its characters
    queue._open = fresh  # type: ignore[method-assign]

    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert (rows[ids[0]]["status"], rows[ids[0]]["claimed_by"]) == ("PROCESSING", "run-new")
    assert (rows[ids[1]]["status"], rows[ids[1]]["claimed_by"]) == ("PENDING", None)
    assert queue.release_runs(["run-old"]) == 0


# Requeueing FAILED items: the operator's way back


def _one_item_per_status(queue: PositionQueue) -> dict[str, str]:
    """PENDING, PROCESSING (run-1), SUCCESS, FAILED waiting out a backoff, and FAILED with no attempts left (3)."""
    names = ["pending", "processing", "success", "backoff", "exhausted"]
    ids = dict(zip(names, queue.insert_many([(n, name.upper()) for n, name in enumerate(names, 1)]), strict=True))
    queue.claim(priority=None, limit=5, claimed_by="run-1", now=T0)
    assert queue.release(ids["pending"], claimed_by="run-1") == 1
    assert queue.mark_success(ids["success"], claimed_by="run-1") == 1
    assert queue.mark_failed(ids["backoff"], "timeout", claimed_by="run-1", now=T0) == 1
    assert queue.mark_failed(ids["exhausted"], "not held (1)", claimed_by="run-1", now=T0) == 1
    for n in (2, 3):  # the design note's unguarded call: counts attempts the same way
        assert queue.mark_failed(ids["exhausted"], f"not held ({n})", now=T0 + timedelta(minutes=n)) == 1
    return ids


def test_requeue_failed_reopens_only_failed_items_with_attempts_reset(queue: PositionQueue, uri: str) -> None:
    ids = _one_item_per_status(queue)
    before = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert (before[ids["backoff"]]["attempts"], before[ids["exhausted"]]["attempts"]) == (1, 3)
    at = T0 + timedelta(seconds=10)  # the backoff item's retry_after (T0 + 30 s) has not passed
    assert queue.claimable_count(priority=None, now=at) == 1  # only the PENDING one
    start = version(uri)

    assert queue.requeue_failed(now=at) == 2

    assert version(uri) == start + 1, "one commit"
    after = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    for name in ("pending", "processing", "success"):
        assert after[ids[name]] == before[ids[name]], f"{name} item changed"
    for name, error in (("backoff", "timeout"), ("exhausted", "not held (3)")):
        row, old = after[ids[name]], before[ids[name]]
        assert (row["status"], row["attempts"], row["retry_after"]) == ("PENDING", 0, None)
        assert (row["claimed_by"], row["claimed_at"], row["updated_at"]) == (None, None, at)
        assert row["error_message"] == error, "the last error stays visible until the item succeeds"
        assert (row["claims"], row["created_at"]) == (old["claims"], old["created_at"])

    # claim() takes them again at once, with every attempt available.
    assert queue.claimable_count(priority=None, now=at) == 3
    claimed = queue.claim(priority=None, limit=10, claimed_by="run-2", now=at)
    assert claimed["request_id"].to_list() == [ids["pending"], ids["backoff"], ids["exhausted"]]
    assert queue.mark_failed(ids["exhausted"], "still not held", claimed_by="run-2", now=at) == 1
    assert item_row(queue, ids["exhausted"])["attempts"] == 1
    assert queue.mark_success(ids["backoff"], claimed_by="run-2") == 1
    assert item_row(queue, ids["backoff"])["error_message"] is None  # success clears it, as before

    start = version(uri)
    assert queue.requeue_failed(now=at) == 1  # the one that failed again
    assert queue.requeue_failed(now=at) == 0
    assert version(uri) == start + 1, "nothing left to requeue: no commit"


def test_requeue_failed_since_and_failed_items(queue: PositionQueue, uri: str) -> None:
    ids = queue.insert_many([(1, "A"), (2, "B"), (3, "C"), (4, "D")])
    queue.claim(limit=4, claimed_by="run-1", now=T0)
    for n, item in enumerate(ids[:3]):
        assert queue.mark_failed(item, f"error {n}", claimed_by="run-1", now=T0 + timedelta(hours=n)) == 1
    since = T0 + timedelta(hours=1)
    start = version(uri)

    listed = queue.failed_items(since=since)
    assert listed.schema == lake.QUEUE_SCHEMA
    assert listed["request_id"].to_list() == [ids[2], ids[1]]  # newest failure first; since itself included
    assert listed["error_message"].to_list() == ["error 2", "error 1"]
    assert queue.failed_items()["request_id"].to_list() == [ids[2], ids[1], ids[0]]
    assert queue.failed_items(limit=1)["request_id"].to_list() == [ids[2]]
    assert version(uri) == start, "failed_items must not write"

    for bad in ({"since": datetime(2030, 1, 2, 10, 30)}, {"now": datetime(2030, 1, 2, 12)}):
        with pytest.raises(ValueError, match="timezone-aware"):
            queue.requeue_failed(**bad)
    with pytest.raises(ValueError, match="timezone-aware"):
        queue.failed_items(since=datetime(2030, 1, 2, 10, 30))
    with pytest.raises(ValueError, match="limit"):
        queue.failed_items(limit=0)
    assert version(uri) == start, "refused arguments write nothing"

    # The same instant written with another offset selects the same items.
    eastern = datetime.fromisoformat("2030-01-02T05:30:00-05:00")
    assert eastern == since
    assert queue.requeue_failed(since=eastern, now=T0 + timedelta(hours=3)) == 2
    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert [rows[i]["status"] for i in ids] == ["FAILED", "PENDING", "PENDING", "PROCESSING"]
    assert (rows[ids[0]]["attempts"], rows[ids[0]]["error_message"]) == (1, "error 0")
    assert queue.failed_items()["request_id"].to_list() == [ids[0]]


def test_requeue_failed_retries_past_a_claim_that_landed_first(queue: PositionQueue, uri: str) -> None:
    """A run claims retryable FAILED items while the operator requeues: the claim stays the run's."""
    ids = queue.insert_many([(i, f"S{i}") for i in range(1, 5)])
    queue.claim(limit=4, claimed_by="run-1", now=T0)
    assert queue.mark_failed_many(dict.fromkeys(ids, "first try"), claimed_by="run-1", now=T0) == 4
    stale = DeltaTable(uri)  # what the requeue reads before the claim below commits
    taken = queue.claim(limit=2, claimed_by="run-2", now=T0 + timedelta(minutes=1))
    assert taken["request_id"].to_list() == ids[:2]

    # The first attempt MERGEs on the stale snapshot, where all four are FAILED: Delta refuses that commit (the
    # claim rewrote the rows it read), and the retry re-reads and requeues only what is still FAILED.
    opened: list[DeltaTable] = []
    fresh = queue._open

    def open_stale_first() -> DeltaTable:
        opened.append(stale if not opened else fresh())
        return opened[-1]

    queue._open = open_stale_first  # type: ignore[method-assign]
    assert queue.requeue_failed(now=T0 + timedelta(minutes=2)) == 2
    queue._open = fresh  # type: ignore[method-assign]
    assert len(opened) == 2, "the stale attempt must have conflicted and been retried"

    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert [(rows[i]["status"], rows[i]["claimed_by"], rows[i]["attempts"]) for i in ids] == [
        ("PROCESSING", "run-2", 1),
        ("PROCESSING", "run-2", 1),
        ("PENDING", None, 0),
        ("PENDING", None, 0),
    ]
    assert queue.mark_success(ids[:2], claimed_by="run-2") == 2, "run-2 still holds its claim"
