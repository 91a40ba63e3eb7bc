"""The health checks on real Delta tables under tmp_path: each check's result computed directly for an explicit `now`
(passing and failing), then the `position_checks` job executed by Dagster, its results read back from the instance.

Queue rows are written through PositionQueue, whose writes take `now`; the checks are then asked about a later
moment, so no test sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from deltalake import write_deltalake

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue
from position_pipeline.defs.assets import ib_snapshot, position_queue, position_updates, queued_positions
from position_pipeline.defs.checks import (
    ASSET_CHECKS,
    CHECKS_JOB_NAME,
    evaluate_claims,
    evaluate_duplicates,
    evaluate_failed_share,
    evaluate_freshness,
    no_expired_claims,
    position_checks_job,
    position_checks_schedule,
)
from position_pipeline.defs.resources import IBResource, LakeResource

pytestmark = pytest.mark.timeout(60)

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)


@pytest.fixture
def root(tmp_path: Path) -> str:
    return str(tmp_path / "lake")


@pytest.fixture
def queue(root: str) -> PositionQueue:
    return PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))


@pytest.fixture
def t0() -> datetime:
    """A moment just before the test writes anything: queue inserts are stamped with the current time."""
    return datetime.now(UTC)


def append_rows(root: str, *rows: tuple[str, datetime, str]) -> None:
    """Append (request_id, snapshot_at, run_id) rows to position_updates in one commit, as a sync run does."""
    uri = lake.ensure_position_updates_table(root)
    frame = pl.DataFrame(
        [
            {
                "request_id": request_id,
                "conid": 265598,
                "account": "DU1000001",
                "symbol": "AAPL",
                "sec_type": "STK",
                "currency": "USD",
                "local_symbol": "AAPL",
                "position": 10.0,
                "average_cost": 150.0,
                "market_price": 190.0,
                "market_value": 1900.0,
                "unrealized_pnl": 400.0,
                "realized_pnl": 0.0,
                "queued_at": at - timedelta(seconds=4),
                "snapshot_at": at,
                "run_id": run_id,
                "snapshot_date": at.date(),
            }
            for request_id, at, run_id in rows
        ],
        schema=lake.POSITION_UPDATES_SCHEMA,
    )
    write_deltalake(uri, frame.to_arrow().cast(lake.POSITION_UPDATES_ARROW_SCHEMA), mode="append")


def value(result: dg.AssetCheckResult, key: str) -> object:
    return result.metadata[key].value


# no_duplicate_request_ids


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
    assert sample[0] == "| request_id | rows | run_ids |"
    # Most-duplicated first, each with every run that wrote it.
    assert sample[2:] == ["| b | 3 | run-1, run-2, run-3 |", "| a | 2 | run-1, run-2 |"]
    assert result.description == "2 request_ids have more than one row (3 extra rows in 6)"


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


# The job and the schedule, executed by Dagster


def check_defs(root: str) -> dg.Definitions:
    """The code location's assets (hourly-partitioned sync assets) with the checks, job and schedule added."""
    return dg.Definitions(
        assets=[position_queue, queued_positions, ib_snapshot, position_updates],
        asset_checks=ASSET_CHECKS,
        jobs=[position_checks_job],
        schedules=[position_checks_schedule],
        resources={
            "lake": LakeResource(root_uri=root),
            "ib": IBResource(),
            # Nothing is materialized here: the check job selects no asset.
            "delta_io_manager": dg.mem_io_manager,
            "batch_io_manager": dg.mem_io_manager,
        },
    )


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def latest(instance: dg.DagsterInstance) -> dict[str, dg.AssetCheckEvaluation]:
    """The newest evaluation of every check, as the UI reads it from the instance, by check name."""
    found = {}
    for check in ASSET_CHECKS:
        (key,) = check.check_keys
        record = instance.get_latest_asset_check_evaluation_record(key)
        assert record is not None and record.event is not None and record.event.dagster_event is not None
        evaluation = record.event.dagster_event.event_specific_data
        assert isinstance(evaluation, dg.AssetCheckEvaluation)
        found[key.name] = evaluation
    return found


def test_check_job_on_a_healthy_lake(root: str, queue: PositionQueue, instance: dg.DagsterInstance) -> None:
    now = datetime.now(UTC)
    ids = queue.insert_many([(265598, "AAPL"), (272093, "MSFT")])
    queue.claim(None, 2, claimed_by="run-1", now=now - MINUTE)
    queue.mark_success(ids, claimed_by="run-1", now=now - MINUTE)
    append_rows(root, (ids[0], now - MINUTE, "run-1"), (ids[1], now - MINUTE, "run-1"))

    job = check_defs(root).resolve_job_def(CHECKS_JOB_NAME)
    assert job.partitions_def is None  # runs without a partition key next to the partitioned sync assets
    result = job.execute_in_process(instance=instance)
    assert result.success
    assert not result.get_asset_materialization_events()
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert sorted(evaluations) == sorted(c.name for check in ASSET_CHECKS for c in check.check_keys)
    stored = latest(instance)
    assert all(e.passed for e in stored.values())
    assert stored["no_duplicate_request_ids"].metadata["rows_scanned"].value == 2
    assert stored["failed_share_last_hour"].metadata["succeeded"].value == 2

    # Run config, as from the launchpad: with a 30 s lease, a claim held for a minute has expired.
    queue.insert(8314, "IBM")
    queue.claim(None, 1, claimed_by="run-2", now=now - MINUTE)  # claimed a minute ago and still held
    op_name = no_expired_claims.node_def.name
    strict = job.execute_in_process(instance=instance, run_config={"ops": {op_name: {"config": {"lease_seconds": 30}}}})
    assert strict.success
    claims = latest(instance)["no_expired_claims"]
    assert not claims.passed and claims.metadata["run_ids"].value == "run-2"
    assert claims.metadata["lease_seconds"].value == 30.0


def test_check_job_reports_every_failure(root: str, queue: PositionQueue, instance: dg.DagsterInstance) -> None:
    now = datetime.now(UTC)
    append_rows(root, ("dup", now - timedelta(hours=1), "run-a"))
    append_rows(root, ("dup", now - timedelta(hours=1), "run-b"))
    queue.insert(1, "STUCK")
    queue.claim(None, 1, claimed_by="run-stuck", now=now - 30 * MINUTE)  # held past the 900 s lease
    ids = queue.insert_many([(100 + i, f"S{i}") for i in range(5)])
    queue.claim(None, 5, claimed_by="run-ok", now=now - 20 * MINUTE)
    queue.mark_success(ids[:1], claimed_by="run-ok", now=now - 10 * MINUTE)
    # 4 of 5 failed; due for a retry 30 s later, they have waited 9.5 minutes while no row was written for an hour.
    queue.mark_failed_many({i: "not held" for i in ids[1:]}, claimed_by="run-ok", now=now - 10 * MINUTE)

    result = check_defs(root).resolve_job_def(CHECKS_JOB_NAME).execute_in_process(instance=instance)
    assert result.success  # failed checks are results, not a failed run
    stored = latest(instance)
    assert not any(e.passed for e in stored.values())
    assert {name: e.severity for name, e in stored.items()} == {
        "no_duplicate_request_ids": ERROR,
        "no_expired_claims": ERROR,
        "failed_share_last_hour": WARN,
        "fresh_while_pending": ERROR,
    }
    assert stored["no_duplicate_request_ids"].metadata["duplicates"].value == 1
    assert "| dup | 2 | run-a, run-b |" in str(stored["no_duplicate_request_ids"].metadata["sample"].value)
    assert stored["no_expired_claims"].metadata["run_ids"].value == "run-stuck"
    assert stored["failed_share_last_hour"].metadata["share"].value == 0.8
    fresh = stored["fresh_while_pending"].metadata
    assert fresh["waiting_items"].value == 4 and float(fresh["newest_row_age_seconds"].value) > 3600  # type: ignore[arg-type]


def test_schedule_runs_the_check_job_every_5_minutes_in_utc(root: str, instance: dg.DagsterInstance) -> None:
    schedule = check_defs(root).resolve_schedule_def(position_checks_schedule.name)
    assert schedule.job_name == CHECKS_JOB_NAME
    assert schedule.cron_schedule == "*/5 * * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2030, 1, 2, 15, 5, tzinfo=UTC)
    )
    (request,) = schedule.evaluate_tick(context).run_requests or []
    assert request.partition_key is None
