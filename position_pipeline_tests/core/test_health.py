"""The health evaluations on real Delta tables under tmp_path, each computed directly for an explicit `now`, passing
and failing.

Queue rows are written through PositionQueue, whose writes take `now`; the evaluations are then asked about a later
moment, so no test sleeps."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from position_pipeline.core import lake
from position_pipeline.core.health import (
    HealthOutcome,
    Severity,
    evaluate_claims,
    evaluate_duplicates,
    evaluate_failed_share,
    evaluate_freshness,
)
from position_pipeline.core.queue import PositionQueue
from position_pipeline.defs.metadata import markdown_table
from position_pipeline_tests.support.lake_tables import append_rows
from position_pipeline_tests.support.position_rows import position_update_row

pytestmark = pytest.mark.timeout(60)

ERROR, WARN = Severity.ERROR, Severity.WARN
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)


@pytest.fixture
def t0() -> datetime:
    """A moment just before the test writes anything: queue inserts are stamped with the current time."""
    return datetime.now(UTC)


def value(result: HealthOutcome, key: str) -> object:
    """A metadata value as the check shows it in the UI: a table as its markdown (see defs/checks.py)."""
    found = result.metadata[key]
    return markdown_table(found) if isinstance(found, pl.DataFrame) else found


# no_duplicate_rows


def test_duplicates_pass_without_a_table_and_create_none(root: str) -> None:
    result = evaluate_duplicates(root)
    assert result.passed and result.severity == ERROR
    assert value(result, "rows_scanned") == 0 and value(result, "duplicates") == 0
    assert not Path(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).exists()


def test_duplicates_pass_when_every_request_id_has_one_row(root: str, t0: datetime) -> None:
    append_rows(root, ("a", t0, "run-1"), ("b", t0, "run-1"))
    append_rows(root, ("c", t0 + MINUTE, "run-2"))
    result = evaluate_duplicates(root)
    assert result.passed
    assert value(result, "rows_scanned") == 3
    assert value(result, "duplicates") == 0 and value(result, "extra_rows") == 0
    assert value(result, "sample") == "(none)"
    assert isinstance(value(result, "seconds"), float)


def test_duplicates_fail_with_a_sample_naming_the_runs(root: str, t0: datetime) -> None:
    append_rows(root, ("a", t0, "run-1"), ("b", t0, "run-1"), ("c", t0, "run-1"))
    append_rows(root, ("a", t0 + MINUTE, "run-2"), ("b", t0 + MINUTE, "run-2"))
    append_rows(root, ("b", t0 + 2 * MINUTE, "run-3"))
    result = evaluate_duplicates(root)
    assert not result.passed and result.severity == ERROR
    assert value(result, "rows_scanned") == 6
    assert value(result, "duplicates") == 2 and value(result, "extra_rows") == 3
    sample = str(value(result, "sample")).splitlines()
    assert sample[0] == "| request_id | account | rows | run_ids |"
    # Most-duplicated first, each with every run that wrote it.
    assert sample[2:] == ["| b | DU1000001 | 3 | run-1, run-2, run-3 |", "| a | DU1000001 | 2 | run-1, run-2 |"]
    assert result.description == "2 (request_id, account) pairs have more than one row (3 extra rows in 6)"


def test_one_item_with_a_row_per_holding_account_is_no_duplicate(root: str, t0: datetime) -> None:
    """An item without an account has one row per account holding its contract: the key is (request_id, account)."""
    uri = lake.ensure_position_updates_table(root)
    rows = [position_update_row(request_id="x", account=a, snapshot_at=t0) for a in ("DU1", "DU2", "DU3")]
    write_deltalake(uri, pa.Table.from_pylist(rows, schema=lake.POSITION_UPDATES_ARROW_SCHEMA), mode="append")
    assert evaluate_duplicates(root).passed
    again = [position_update_row(request_id="x", account="DU2", snapshot_at=t0 + MINUTE, run_id="run-late")]
    write_deltalake(uri, pa.Table.from_pylist(again, schema=lake.POSITION_UPDATES_ARROW_SCHEMA), mode="append")
    result = evaluate_duplicates(root)
    assert not result.passed and value(result, "duplicates") == 1 and value(result, "extra_rows") == 1
    assert str(value(result, "sample")).splitlines()[2] == f"| x | DU2 | 2 | run-{t0:%d%H%M}, run-late |"


# no_expired_claims


def test_claims_pass_without_a_queue(root: str, t0: datetime) -> None:
    result = evaluate_claims(root, t0)
    assert result.passed and value(result, "expired_claims") == 0 and value(result, "processing") == 0


def test_claims_fail_once_older_than_the_lease(queue: PositionQueue, root: str, t0: datetime) -> None:
    done, *old = queue.insert_many([(265598, "AAPL"), (272093, "MSFT"), (8314, "IBM")])
    queue.claim(None, 3, claimed_by="run-old", now=t0)
    queue.mark_success(done, claimed_by="run-old", now=t0)  # finished: its old claim no longer counts
    queue.insert(756733, "SPY")
    queue.claim(None, 1, claimed_by="run-new", now=t0 + 800 * SECOND)

    before = evaluate_claims(root, t0 + 899 * SECOND, timedelta(seconds=900))
    assert before.passed and before.severity == ERROR
    assert value(before, "processing") == 3 and value(before, "expired_claims") == 0
    assert value(before, "oldest_claim_age_seconds") is None

    after = evaluate_claims(root, t0 + 901 * SECOND, timedelta(seconds=900))
    assert not after.passed and after.severity == ERROR
    assert value(after, "expired_claims") == len(old) == 2
    assert value(after, "processing") == 3
    assert value(after, "oldest_claim_age_seconds") == 901.0
    assert value(after, "run_ids") == "run-old"
    assert value(after, "lease_seconds") == 900.0
    assert "| run-old | 2 | 15m01s |" in str(value(after, "runs"))
    assert "by 1 runs: run-old" in str(after.description)

    # A shorter lease catches the newer claim too; runs are listed oldest claim first.
    short = evaluate_claims(root, t0 + 901 * SECOND, timedelta(seconds=60))
    assert value(short, "expired_claims") == 3 and value(short, "run_ids") == "run-old, run-new"


def test_claims_refuse_a_naive_now(root: str) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate_claims(root, datetime(2030, 1, 1))


# failed_share_last_hour


def finish(queue: PositionQueue, t0: datetime, succeeded: int, failed: int) -> None:
    """Queue and claim items at t0, mark `succeeded` of them SUCCESS at t0+10 s and `failed` FAILED at t0+20 s."""
    ids = queue.insert_many([(100 + i, f"S{i}") for i in range(succeeded + failed)])
    queue.claim(None, len(ids), claimed_by="run-1", now=t0)
    queue.mark_success(ids[:succeeded], claimed_by="run-1", now=t0 + 10 * SECOND)
    errors = {i: "contract 123 is not held in DU1000001" for i in ids[succeeded:]}
    queue.mark_failed_many(errors, claimed_by="run-1", now=t0 + 20 * SECOND)


def test_failed_share_passes_when_nothing_finished(queue: PositionQueue, root: str, t0: datetime) -> None:
    assert evaluate_failed_share(root, t0).passed  # no queue table
    queue.insert(265598, "AAPL")  # pending, not finished
    result = evaluate_failed_share(root, t0 + MINUTE)
    assert result.passed and result.severity == WARN
    assert value(result, "succeeded") == 0 and value(result, "failed") == 0
    assert value(result, "share") is None and value(result, "threshold") == 0.2


def test_failed_share_fails_at_the_threshold(queue: PositionQueue, root: str, t0: datetime) -> None:
    finish(queue, t0, succeeded=8, failed=2)
    result = evaluate_failed_share(root, t0 + MINUTE)
    assert not result.passed and result.severity == WARN
    assert value(result, "succeeded") == 8 and value(result, "failed") == 2 and value(result, "share") == 0.2
    assert "| 2 | contract 123 is not held in DU1000001 |" in str(value(result, "errors"))
    assert result.description == "2 of 10 items finished in the last 1h00m failed (20%; threshold 20%)"
    assert evaluate_failed_share(root, t0 + MINUTE, threshold=0.25).passed


def test_failed_share_counts_only_the_last_hour(queue: PositionQueue, root: str, t0: datetime) -> None:
    finish(queue, t0, succeeded=8, failed=2)
    # Before the failures were written: only successes so far.
    early = evaluate_failed_share(root, t0 + 15 * SECOND)
    assert early.passed and value(early, "succeeded") == 8 and value(early, "failed") == 0
    # An hour later the successes (t0+10 s) have left the window, the failures (t0+20 s) not yet.
    late = evaluate_failed_share(root, t0 + timedelta(hours=1, seconds=15))
    assert not late.passed and value(late, "succeeded") == 0 and value(late, "failed") == 2
    gone = evaluate_failed_share(root, t0 + timedelta(hours=1, seconds=25))
    assert gone.passed and value(gone, "share") is None


# fresh_while_pending


def test_freshness_passes_when_nothing_waits(queue: PositionQueue, root: str, t0: datetime) -> None:
    empty = evaluate_freshness(root, t0)
    assert empty.passed and value(empty, "pending_items") == 0 and value(empty, "newest_row_age_seconds") is None
    queue.insert(265598, "AAPL")
    young = evaluate_freshness(root, t0 + MINUTE)  # pending, but for less than 120 s
    assert young.passed and value(young, "pending_items") == 1 and value(young, "waiting_items") == 0
    queue.claim(None, 1, claimed_by="run-1", now=t0)
    claimed = evaluate_freshness(root, t0 + timedelta(hours=1))  # PROCESSING is not waiting
    assert claimed.passed and value(claimed, "pending_items") == 0


def test_freshness_fails_while_items_wait_and_rows_are_old(queue: PositionQueue, root: str, t0: datetime) -> None:
    queue.insert(265598, "AAPL")
    no_rows = evaluate_freshness(root, t0 + 3 * MINUTE)
    assert not no_rows.passed and no_rows.severity == ERROR
    assert value(no_rows, "waiting_items") == 1 and value(no_rows, "newest_row_age_seconds") is None
    assert 179 < value(no_rows, "oldest_pending_age_seconds") <= 180  # type: ignore[operator]

    append_rows(root, ("x", t0 + 100 * SECOND, "run-0"))
    fresh = evaluate_freshness(root, t0 + 3 * MINUTE)
    assert fresh.passed and value(fresh, "newest_row_age_seconds") == 80.0
    stale = evaluate_freshness(root, t0 + 4 * MINUTE)
    assert not stale.passed and value(stale, "newest_row_age_seconds") == 140.0
    assert value(stale, "max_age_seconds") == 120.0
    assert evaluate_freshness(root, t0 + 4 * MINUTE, max_age=timedelta(minutes=5)).passed


def test_freshness_times_a_retry_from_its_retry_after(queue: PositionQueue, root: str, t0: datetime) -> None:
    request_id = queue.insert(265598, "AAPL")
    queue.claim(None, 1, claimed_by="run-1", now=t0)
    queue.mark_failed(request_id, "IB did not answer", claimed_by="run-1", now=t0)  # retry_after = t0 + 30 s
    waited_110 = evaluate_freshness(root, t0 + 140 * SECOND)
    assert waited_110.passed and value(waited_110, "pending_items") == 1
    assert value(waited_110, "oldest_pending_age_seconds") == 110.0
    waited_130 = evaluate_freshness(root, t0 + 160 * SECOND)
    assert not waited_130.passed and value(waited_130, "waiting_items") == 1
    # With its attempts used up, the item is not claimable, so nothing waits.
    assert evaluate_freshness(root, t0 + 160 * SECOND, max_attempts=1).passed
