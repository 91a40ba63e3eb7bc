"""The sensor evaluated with build_sensor_context on a real DagsterInstance and a real queue table."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from position_pipeline.core import lake
from position_pipeline.core.leases import CLAIM_LEASE_SECONDS, MAX_RUNTIME_SECONDS, WRITE_FENCE_SECONDS
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.core.terms import SENSOR_BATCH_SIZE
from position_pipeline.defs.jobs import SYNC_JOB_NAME
from position_pipeline.defs.partitions import hour_key, partition_key_for, queued_hour_partitions, queued_window
from position_pipeline.defs.resources import LakeResource
from position_pipeline.defs.sensors import QueueRolledBack, position_sync_sensor


def evaluate(instance: dg.DagsterInstance, root: str, cursor: str | None = None) -> dg.SensorResult | dg.SkipReason:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": LakeResource(root_uri=root)})
    return position_sync_sensor(context)  # type: ignore[return-value]


def add_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus, job_name: str = SYNC_JOB_NAME) -> str:
    """A run record as the daemon would leave it."""
    run = dg.DagsterRun(job_name=job_name, run_id=str(uuid.uuid4()), status=status)
    instance.add_run(run)
    return run.run_id


def test_skips_with_a_reason_when_the_queue_is_empty(instance: dg.DagsterInstance, root: str) -> None:
    result = evaluate(instance, root)
    assert isinstance(result, dg.SkipReason)
    assert "no claimable items" in (result.skip_message or "")


def test_requests_one_run_with_a_new_run_key_and_cursor(instance: dg.DagsterInstance, root: str) -> None:
    PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE)).insert(265598, "AAPL")
    version = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE)).version()
    first = evaluate(instance, root)
    assert isinstance(first, dg.SensorResult)
    assert [r.run_key for r in first.run_requests or []] == [f"sync-1-v{version}"]
    assert json.loads(first.cursor or "") == {"tick": 1, "queue_version": version}
    second = evaluate(instance, root, cursor=first.cursor)
    assert isinstance(second, dg.SensorResult)
    assert [r.run_key for r in second.run_requests or []] == [f"sync-2-v{version}"]
    replay = evaluate(instance, root, cursor=first.cursor)  # a tick evaluated again gets the same key
    assert isinstance(replay, dg.SensorResult)
    assert [r.run_key for r in replay.run_requests or []] == [f"sync-2-v{version}"]


def test_a_reset_cursor_does_not_reuse_old_run_keys(instance: dg.DagsterInstance, root: str) -> None:
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    queue.insert(265598, "AAPL")
    before = evaluate(instance, root)
    queue.insert(101000, "MSFT")  # the queue moved on: any later run key differs, whatever the cursor says
    after_reset = evaluate(instance, root, cursor=None)
    assert isinstance(before, dg.SensorResult) and isinstance(after_reset, dg.SensorResult)
    assert before.run_requests[0].run_key != after_reset.run_requests[0].run_key  # type: ignore[index]


def test_priority_1_items_are_picked_up(instance: dg.DagsterInstance, root: str) -> None:
    PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE)).insert(265598, "AAPL", priority=1)
    assert isinstance(evaluate(instance, root), dg.SensorResult)


def test_backs_off_after_failed_sync_runs(instance: dg.DagsterInstance, root: str) -> None:
    PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE)).insert(265598, "AAPL")
    run_id = add_run(instance, dg.DagsterRunStatus.NOT_STARTED)
    instance.report_run_failed(instance.get_run_by_id(run_id))  # type: ignore[arg-type]
    result = evaluate(instance, root)
    assert isinstance(result, dg.SkipReason)
    assert "the last 1 sync run(s) failed" in (result.skip_message or "") and run_id in (result.skip_message or "")


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED])
def test_never_requests_a_run_while_a_sync_run_is_queued_or_running(
    instance: dg.DagsterInstance, root: str, status: dg.DagsterRunStatus
) -> None:
    PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE)).insert(265598, "AAPL")
    run_id = add_run(instance, status)
    result = evaluate(instance, root)
    assert isinstance(result, dg.SkipReason)
    assert run_id in (result.skip_message or "") and status.value in (result.skip_message or "")


def test_runs_of_other_jobs_do_not_block(instance: dg.DagsterInstance, root: str) -> None:
    PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE)).insert(265598, "AAPL")
    add_run(instance, dg.DagsterRunStatus.STARTED, job_name="some_other_job")
    assert isinstance(evaluate(instance, root), dg.SensorResult)


def test_gives_back_the_claims_of_runs_that_ended_without_writing_back(instance: dg.DagsterInstance, root: str) -> None:
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    queue.insert_many([(265598, "AAPL"), (101000, "MSFT"), (102000, "NVDA")])
    dead = add_run(instance, dg.DagsterRunStatus.FAILURE)
    alive = add_run(instance, dg.DagsterRunStatus.SUCCESS)
    past_max_runtime = datetime.now(UTC) - timedelta(seconds=MAX_RUNTIME_SECONDS + 5)
    queue.claim(2, 2, claimed_by=dead, now=past_max_runtime)
    queue.claim(2, 1, claimed_by=alive, now=past_max_runtime)
    result = evaluate(instance, root)
    # the failed run's two items are PENDING again and a run is requested for them; the SUCCESS run's item is
    # released too: a finished run holds no claim legitimately
    assert isinstance(result, dg.SensorResult)
    statuses = queue.read()["status"].to_list()
    assert statuses.count(QueueStatus.PENDING) == 3
    assert queue.claims_by_run() == {}


def test_keeps_a_finished_runs_claims_until_they_are_past_its_write_fence(
    instance: dg.DagsterInstance, root: str
) -> None:
    """Reported finished is not proof the worker stopped: until the claim is MAX_RUNTIME_SECONDS old (its write fence
    plus two minutes) the run could still append, so the items must not go to another run yet."""
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    queue.insert_many([(265598, "AAPL"), (101000, "MSFT")])
    terminated = add_run(instance, dg.DagsterRunStatus.CANCELED)
    queue.claim(2, 1, claimed_by=terminated, now=datetime.now(UTC) - timedelta(seconds=WRITE_FENCE_SECONDS + 60))
    result = evaluate(instance, root)
    assert queue.claims_by_run() == {terminated: 1}
    assert isinstance(result, dg.SensorResult)  # for the other item
    assert WRITE_FENCE_SECONDS + 60 < MAX_RUNTIME_SECONDS < CLAIM_LEASE_SECONDS


def test_keeps_the_claims_of_a_run_still_in_progress(instance: dg.DagsterInstance, root: str) -> None:
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    queue.insert(265598, "AAPL")
    running = add_run(instance, dg.DagsterRunStatus.STARTED)
    queue.claim(2, 1, claimed_by=running)
    assert isinstance(evaluate(instance, root), dg.SkipReason)
    assert queue.claims_by_run() == {running: 1}


def test_requests_the_hour_partition_of_the_next_claimable_item_with_a_sensor_sized_batch(
    instance: dg.DagsterInstance, root: str
) -> None:
    """Items of past hours are picked up without an operator: the run is for their hour, priority 1 first."""
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    now = datetime.now(UTC)
    queue.insert_many([(265598, "AAPL")], queued_at=now - timedelta(hours=5))
    queue.insert_many([(272093, "MSFT", 1)], queued_at=now - timedelta(hours=2))
    result = evaluate(instance, root)
    assert isinstance(result, dg.SensorResult)
    [request] = result.run_requests or []
    assert request.partition_key == hour_key(now - timedelta(hours=2))  # priority 1 first
    assert request.run_config == {"ops": {"queued_positions": {"config": {"batch_size": SENSOR_BATCH_SIZE}}}}

    claimed = queue.claim(1, 10, claimed_by="run-1")
    assert queue.mark_success(claimed["request_id"].to_list(), claimed_by="run-1") == 1
    [request] = evaluate(instance, root, cursor=result.cursor).run_requests or []  # type: ignore[union-attr]
    assert request.partition_key == hour_key(now - timedelta(hours=5))


def test_items_queued_before_the_first_partition_or_in_a_future_hour_map_to_existing_partitions() -> None:
    now = datetime(2026, 11, 24, 10, 30, tzinfo=UTC)
    assert partition_key_for(datetime(2020, 5, 1, tzinfo=UTC), now) == "2026-01-01-00:00"
    assert partition_key_for(datetime(2026, 11, 24, 13, 0, tzinfo=UTC), now) == "2026-11-24-10:00"
    assert partition_key_for(datetime(2026, 11, 24, 9, 59, 59, tzinfo=UTC), now) == "2026-11-24-09:00"
    first = queued_window(queued_hour_partitions.time_window_for_partition_key("2026-01-01-00:00"), now)
    assert first.start is None and first.end == datetime(2026, 1, 1, 1, tzinfo=UTC)  # and anything earlier
    current = queued_window(queued_hour_partitions.time_window_for_partition_key("2026-11-24-10:00"), now)
    assert current.start == datetime(2026, 11, 24, 10, tzinfo=UTC) and current.end is None  # and anything later
    past = queued_window(queued_hour_partitions.time_window_for_partition_key("2026-11-24-08:00"), now)
    assert (past.start, past.end) == (datetime(2026, 11, 24, 8, tzinfo=UTC), datetime(2026, 11, 24, 9, tzinfo=UTC))
    with pytest.raises(ValueError, match="timezone-aware"):
        partition_key_for(datetime(2026, 11, 24, 10), now)


def test_gives_back_claims_older_than_the_lease_even_when_the_run_is_unknown(
    instance: dg.DagsterInstance, root: str
) -> None:
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    queue.insert_many([(265598, "AAPL"), (272093, "MSFT")])
    long_ago = datetime.now(UTC) - timedelta(seconds=CLAIM_LEASE_SECONDS + 60)
    queue.claim(None, 1, claimed_by="vanished-run", now=long_ago)
    queue.claim(None, 1, claimed_by="live-run")  # within the lease: kept
    result = evaluate(instance, root)
    assert isinstance(result, dg.SensorResult)
    assert queue.claims_by_run() == {"live-run": 1}
    assert queue.counts()[QueueStatus.PENDING] == 1


def test_the_sensor_is_due_on_every_loop_of_the_sensor_daemon() -> None:
    """The daemon evaluates sensors once per 5-second loop, and skips a sensor whose last tick began less than its
    minimum interval ago. A minimum of exactly one loop lost every tick that began a few ms later in its loop than the
    one before to a 10-second wait (measured by benchmarks/freshness.py); below one loop, every loop evaluates it."""
    from position_pipeline.defs.dagster_internals import MIN_INTERVAL_LOOP_TIME

    interval = position_sync_sensor.minimum_interval_seconds
    assert interval is not None and 0 < interval < MIN_INTERVAL_LOOP_TIME


def test_every_tick_remembers_the_highest_queue_version_it_saw(instance: dg.DagsterInstance, root: str) -> None:
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    queue.insert(265598, "AAPL")
    queue.mark_success(queue.read()["request_id"].to_list())  # nothing claimable: the tick skips
    context = dg.build_sensor_context(instance=instance, resources={"lake": LakeResource(root_uri=root)})
    assert isinstance(position_sync_sensor(context), dg.SkipReason)
    assert json.loads(context.cursor or "") == {"queue_version": queue.version()}


def test_a_queue_version_below_the_one_seen_stops_syncing_with_what_happened(
    instance: dg.DagsterInstance, root: str
) -> None:
    """A rolled-back log (commits deleted, an older copy restored): the tick fails rather than sync on it."""
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    queue.insert(265598, "AAPL")
    seen = json.dumps({"tick": 4, "queue_version": queue.version() + 2})
    with pytest.raises(QueueRolledBack) as refused:
        evaluate(instance, root, cursor=seen)
    message = str(refused.value)
    assert f"went back from version {queue.version() + 2} to {queue.version()}" in message
    assert "dagster sensor cursor position_sync_sensor --delete" in message
    assert set(queue.read()["status"].to_list()) == {QueueStatus.PENDING}  # nothing claimed, nothing released
    assert isinstance(evaluate(instance, root, cursor=None), dg.SensorResult)  # a cleared cursor accepts the table
