"""The sensor evaluated with build_sensor_context on a real DagsterInstance and a real queue table."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from position_pipeline import lake
from position_pipeline.jobs import SYNC_JOB_NAME
from position_pipeline.queue import PositionQueue, QueueStatus
from position_pipeline.resources import LakeResource
from position_pipeline.sensors import position_sync_sensor


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def lake_root(tmp_path: Path) -> str:
    return str(tmp_path / "lake")


def evaluate(
    instance: dg.DagsterInstance, lake_root: str, cursor: str | None = None
) -> dg.SensorResult | dg.SkipReason:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"lake": LakeResource(root_uri=lake_root)}
    )
    return position_sync_sensor(context)  # type: ignore[return-value]


def add_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus, job_name: str = SYNC_JOB_NAME) -> str:
    """A run record as the daemon would leave it."""
    run = dg.DagsterRun(job_name=job_name, run_id=str(uuid.uuid4()), status=status)
    instance.add_run(run)
    return run.run_id


def test_skips_with_a_reason_when_the_queue_is_empty(instance: dg.DagsterInstance, lake_root: str) -> None:
    result = evaluate(instance, lake_root)
    assert isinstance(result, dg.SkipReason)
    assert "no claimable items" in (result.skip_message or "")


def test_requests_one_run_with_a_new_run_key_and_cursor(instance: dg.DagsterInstance, lake_root: str) -> None:
    PositionQueue(lake.table_uri(lake_root, lake.QUEUE_TABLE)).insert(265598, "AAPL")
    version = PositionQueue(lake.table_uri(lake_root, lake.QUEUE_TABLE)).version()
    first = evaluate(instance, lake_root)
    assert isinstance(first, dg.SensorResult)
    assert [r.run_key for r in first.run_requests or []] == [f"sync-1-v{version}"]
    assert json.loads(first.cursor or "") == {"tick": 1}
    second = evaluate(instance, lake_root, cursor=first.cursor)
    assert isinstance(second, dg.SensorResult)
    assert [r.run_key for r in second.run_requests or []] == [f"sync-2-v{version}"]
    replay = evaluate(instance, lake_root, cursor=first.cursor)  # a tick evaluated again gets the same key
    assert isinstance(replay, dg.SensorResult)
    assert [r.run_key for r in replay.run_requests or []] == [f"sync-2-v{version}"]


def test_a_reset_cursor_does_not_reuse_old_run_keys(instance: dg.DagsterInstance, lake_root: str) -> None:
    queue = PositionQueue(lake.table_uri(lake_root, lake.QUEUE_TABLE))
    queue.insert(265598, "AAPL")
    before = evaluate(instance, lake_root)
    queue.insert(101000, "MSFT")  # the queue moved on: any later run key differs, whatever the cursor says
    after_reset = evaluate(instance, lake_root, cursor=None)
    assert isinstance(before, dg.SensorResult) and isinstance(after_reset, dg.SensorResult)
    assert before.run_requests[0].run_key != after_reset.run_requests[0].run_key  # type: ignore[index]


def test_priority_1_items_are_picked_up(instance: dg.DagsterInstance, lake_root: str) -> None:
    PositionQueue(lake.table_uri(lake_root, lake.QUEUE_TABLE)).insert(265598, "AAPL", priority=1)
    assert isinstance(evaluate(instance, lake_root), dg.SensorResult)


def test_backs_off_after_failed_sync_runs(instance: dg.DagsterInstance, lake_root: str) -> None:
    PositionQueue(lake.table_uri(lake_root, lake.QUEUE_TABLE)).insert(265598, "AAPL")
    run_id = add_run(instance, dg.DagsterRunStatus.NOT_STARTED)
    instance.report_run_failed(instance.get_run_by_id(run_id))  # type: ignore[arg-type]
    result = evaluate(instance, lake_root)
    assert isinstance(result, dg.SkipReason)
    assert "the last 1 sync run(s) failed" in (result.skip_message or "") and run_id in (result.skip_message or "")


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED])
def test_never_requests_a_run_while_a_sync_run_is_queued_or_running(
    instance: dg.DagsterInstance, lake_root: str, status: dg.DagsterRunStatus
) -> None:
    PositionQueue(lake.table_uri(lake_root, lake.QUEUE_TABLE)).insert(265598, "AAPL")
    run_id = add_run(instance, status)
    result = evaluate(instance, lake_root)
    assert isinstance(result, dg.SkipReason)
    assert run_id in (result.skip_message or "") and status.value in (result.skip_message or "")


def test_runs_of_other_jobs_do_not_block(instance: dg.DagsterInstance, lake_root: str) -> None:
    PositionQueue(lake.table_uri(lake_root, lake.QUEUE_TABLE)).insert(265598, "AAPL")
    add_run(instance, dg.DagsterRunStatus.STARTED, job_name="some_other_job")
    assert isinstance(evaluate(instance, lake_root), dg.SensorResult)


def test_gives_back_the_claims_of_runs_that_ended_without_writing_back(
    instance: dg.DagsterInstance, lake_root: str
) -> None:
    queue = PositionQueue(lake.table_uri(lake_root, lake.QUEUE_TABLE))
    queue.insert_many([(265598, "AAPL"), (101000, "MSFT"), (102000, "NVDA")])
    dead = add_run(instance, dg.DagsterRunStatus.FAILURE)
    alive = add_run(instance, dg.DagsterRunStatus.SUCCESS)
    queue.claim(2, 2, claimed_by=dead)
    queue.claim(2, 1, claimed_by=alive)
    result = evaluate(instance, lake_root)
    # the failed run's two items are PENDING again and a run is requested for them; the SUCCESS run's item is
    # released too: a finished run holds no claim legitimately
    assert isinstance(result, dg.SensorResult)
    statuses = queue.read()["status"].to_list()
    assert statuses.count(QueueStatus.PENDING) == 3
    assert queue.claims_by_run() == {}


def test_keeps_the_claims_of_a_run_still_in_progress(instance: dg.DagsterInstance, lake_root: str) -> None:
    queue = PositionQueue(lake.table_uri(lake_root, lake.QUEUE_TABLE))
    queue.insert(265598, "AAPL")
    running = add_run(instance, dg.DagsterRunStatus.STARTED)
    queue.claim(2, 1, claimed_by=running)
    assert isinstance(evaluate(instance, lake_root), dg.SkipReason)
    assert queue.claims_by_run() == {running: 1}
