"""The health checks executed by Dagster: the `position_checks` job on real Delta tables under tmp_path, its results
read back from the instance, and the schedule that runs it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from position_pipeline.core.queue import PositionQueue
from position_pipeline.defs.checks import ASSET_CHECKS, no_expired_claims
from position_pipeline.defs.jobs import CHECKS_JOB_NAME, position_checks_job
from position_pipeline.defs.resources import IBResource, build_resources
from position_pipeline.defs.schedules import position_checks_schedule
from position_pipeline_tests.support.lake_tables import append_rows
from position_pipeline_tests.support.sync_runs import ASSETS

pytestmark = pytest.mark.timeout(60)

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
MINUTE = timedelta(minutes=1)


def check_defs(root: str) -> dg.Definitions:
    """The code location's assets (hourly-partitioned sync assets) with the checks, job and schedule added."""
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=ASSET_CHECKS,
        jobs=[position_checks_job],
        schedules=[position_checks_schedule],
        resources=build_resources(root, IBResource()),
    )


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
    assert stored["no_duplicate_rows"].metadata["rows_scanned"].value == 2
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
        "no_duplicate_rows": ERROR,
        "no_expired_claims": ERROR,
        "failed_share_last_hour": WARN,
        "fresh_while_pending": ERROR,
    }
    assert stored["no_duplicate_rows"].metadata["duplicates"].value == 1
    assert "| dup | DU1000001 | 2 | run-a, run-b |" in str(stored["no_duplicate_rows"].metadata["sample"].value)
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


def test_status_names_its_evaluations_after_the_checks_that_show_them(root: str) -> None:
    from position_pipeline.core.health import evaluate_for_status

    check_names = {key.name for check in ASSET_CHECKS for key in check.check_keys}
    assert set(evaluate_for_status(root, datetime.now(UTC))) <= check_names
