"""purge_runs and the purge_run_history job on a real SQLite instance, with runs made by executing a real job."""

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from position_pipeline.defs.dagster_internals import (
    BACKFILL_ID_TAG,
    BulkActionStatus,
    PartitionBackfill,
    RegisteredCodeLocationOrigin,
    RemoteRepositoryOrigin,
    freeze_time,
)
from position_pipeline.defs.run_retention import (
    RETENTION_DAYS_ENV,
    purge_run_history,
    purge_run_history_schedule,
    purge_runs,
)

WEEK = timedelta(days=7)
# Where a daemon-launched run says its job lives (a queued run must say it).
TINY_JOB_ORIGIN = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("tests"), "__repository__").get_job_origin(
    "tiny_job"
)


class TinyConfig(dg.Config):
    fail: bool = False


@dg.op
def tiny_step(context: dg.OpExecutionContext, config: TinyConfig) -> int:
    print("captured stdout")  # lands in the run's compute logs
    context.log.info("a line in the event log")
    if config.fail:
        raise dg.Failure("asked to fail")
    return 1


@dg.job(executor_def=dg.in_process_executor)
def tiny_job() -> None:
    tiny_step()


def run_tiny(instance: dg.DagsterInstance, *, fail: bool = False, tags: dict[str, str] | None = None) -> str:
    result = tiny_job.execute_in_process(
        instance=instance,
        run_config={"ops": {"tiny_step": {"config": {"fail": fail}}}},
        tags=tags,
        raise_on_error=False,
    )
    assert result.success is not fail
    return result.run_id


def add_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus, tags: dict[str, str] | None = None) -> str:
    """A run record as the run coordinator or a worker leaves it, with one event of its own."""
    run = dg.DagsterRun(
        job_name="tiny_job", run_id=str(uuid.uuid4()), status=status, tags=tags, remote_job_origin=TINY_JOB_ORIGIN
    )
    instance.add_run(run)
    instance.report_engine_event("worker says hello", run)
    return run.run_id


def exists(instance: dg.DagsterInstance, run_id: str) -> bool:
    return instance.get_run_record_by_id(run_id) is not None


def run_files(instance: dg.DagsterInstance, run_id: str) -> list[Path]:
    """What the default SQLite instance keeps on disk per run: its event log database and its captured logs."""
    root = Path(instance.root_directory)
    return [p for p in (root / "history" / "runs" / f"{run_id}.db", root / "storage" / run_id) if p.exists()]


@pytest.mark.system  # over 2 s: too slow for the fast tier
def test_deletes_only_finished_runs_older_than_the_cutoff_with_their_events_and_files(
    instance: dg.DagsterInstance,
) -> None:
    old = [run_tiny(instance, fail=i % 4 == 0) for i in range(10)]
    old.append(add_run(instance, dg.DagsterRunStatus.CANCELED))
    cutoff = datetime.now(UTC)
    recent = [run_tiny(instance, fail=i % 4 == 0) for i in range(6)]
    active = [add_run(instance, status) for status in (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED)]
    assert all(instance.all_logs(run_id) and run_files(instance, run_id) for run_id in old + recent)

    deleted = purge_runs(instance, WEEK, now=cutoff + WEEK, batch_size=5)

    assert deleted == len(old) == 11
    for run_id in old:
        assert not exists(instance, run_id)
        assert run_files(instance, run_id) == []
        assert instance.all_logs(run_id) == []
    for run_id in recent + active:
        assert exists(instance, run_id)
        assert instance.all_logs(run_id)
    assert all(len(run_files(instance, run_id)) == 2 for run_id in recent)
    assert purge_runs(instance, WEEK, now=cutoff + WEEK) == 0


def test_active_runs_survive_any_cutoff(instance: dg.DagsterInstance) -> None:
    active_statuses = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ]
    active = [add_run(instance, status) for status in active_statuses]
    finished = run_tiny(instance)

    assert purge_runs(instance, timedelta(days=1), now=datetime.now(UTC) + timedelta(days=365)) == 1

    assert not exists(instance, finished)
    for run_id in active:
        assert exists(instance, run_id)
    assert instance.all_logs(active[0])


@pytest.mark.system  # over 2 s: too slow for the fast tier
def test_runs_of_a_backfill_in_progress_are_kept_until_it_ends(instance: dg.DagsterInstance) -> None:
    for backfill_id, status in [("running", BulkActionStatus.REQUESTED), ("done", BulkActionStatus.COMPLETED_SUCCESS)]:
        instance.add_backfill(PartitionBackfill(backfill_id, status, False, {}, datetime.now(UTC).timestamp()))
    kinds = ["running", "done", None] * 4  # kept runs interleaved with deleted ones across small batches
    runs = {run_tiny(instance, tags={BACKFILL_ID_TAG: kind} if kind else None): kind for kind in kinds}
    later = datetime.now(UTC) + timedelta(days=30)

    assert purge_runs(instance, WEEK, now=later, batch_size=2) == 8

    assert {run_id for run_id in runs if exists(instance, run_id)} == {r for r, k in runs.items() if k == "running"}
    backfill = instance.get_backfill("running")
    assert backfill is not None
    instance.update_backfill(backfill.with_status(BulkActionStatus.COMPLETED_FAILED))
    assert purge_runs(instance, WEEK, now=later, batch_size=2) == 4
    assert not any(exists(instance, run_id) for run_id in runs)


def test_refuses_a_cutoff_that_is_not_in_the_past(instance: dg.DagsterInstance) -> None:
    finished = run_tiny(instance)
    with pytest.raises(ValueError, match="positive"):
        purge_runs(instance, timedelta(0))
    with pytest.raises(ValueError, match="timezone-aware"):
        purge_runs(instance, WEEK, now=datetime(2030, 1, 1))
    assert exists(instance, finished)


def runs_at(instance: dg.DagsterInstance, when: datetime, count: int) -> list[str]:
    """Real runs executed with Dagster's clock set back, as they would be after `when` went by."""
    with freeze_time(when):
        return [run_tiny(instance) for _ in range(count)]


def run_purge_job(instance: dg.DagsterInstance, older_than_days: float | None = None) -> dg.ExecuteInProcessResult:
    config = {} if older_than_days is None else {"older_than_days": older_than_days}
    return purge_run_history.execute_in_process(
        instance=instance, run_config={"ops": {"purge_finished_runs": {"config": config}}}, raise_on_error=False
    )


def deleted_count(result: dg.ExecuteInProcessResult) -> int:
    assert result.success
    (output,) = [event for event in result.all_node_events if event.is_successful_output]
    metadata = output.step_output_data.metadata
    assert metadata["runs_deleted"].value == result.output_for_node("purge_finished_runs")
    assert isinstance(metadata["duration_seconds"].value, float)
    return result.output_for_node("purge_finished_runs")


@pytest.mark.system  # over 2 s: too slow for the fast tier
def test_purge_job_takes_its_retention_from_config_then_env_then_seven_days(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    forty_days = runs_at(instance, now - timedelta(days=40), 2)
    ten_days = runs_at(instance, now - timedelta(days=10), 2)
    three_days = runs_at(instance, now - timedelta(days=3), 2)
    today = [run_tiny(instance)]

    monkeypatch.setenv(RETENTION_DAYS_ENV, "30")
    assert deleted_count(run_purge_job(instance)) == 2
    monkeypatch.setenv(RETENTION_DAYS_ENV, " ")  # blank is unset
    assert deleted_count(run_purge_job(instance)) == 2
    assert deleted_count(run_purge_job(instance, older_than_days=1.5)) == 2

    survivors = [run_id for run_id in forty_days + ten_days + three_days + today if exists(instance, run_id)]
    assert survivors == today
    purge_runs_in_history = instance.get_run_records(dg.RunsFilter(job_name="purge_run_history"))
    assert len(purge_runs_in_history) == 3
    assert all(r.dagster_run.tags["pipeline"] == "maintenance" for r in purge_runs_in_history)


def test_purge_job_fails_on_a_retention_that_is_not_positive(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = runs_at(instance, datetime.now(UTC) - timedelta(days=40), 1)
    for env_value in ["0", "-3", "seven", "nan"]:
        monkeypatch.setenv(RETENTION_DAYS_ENV, env_value)
        result = run_purge_job(instance)
        assert not result.success
        failure = result.failure_data_for_node("purge_finished_runs")
        assert failure is not None and failure.error is not None
        assert f"{RETENTION_DAYS_ENV}='{env_value}' is not a positive number" in failure.error.message
    monkeypatch.delenv(RETENTION_DAYS_ENV)
    for days in [-1.0, 0.0]:
        assert not run_purge_job(instance, older_than_days=days).success
    assert exists(instance, old[0])


def test_job_and_schedule_load_in_a_code_location() -> None:
    job = dg.Definitions(jobs=[purge_run_history], schedules=[purge_run_history_schedule]).get_job_def(
        "purge_run_history"
    )
    assert job.executor_def is dg.in_process_executor
    assert job.tags["pipeline"] == "maintenance"
    assert int(job.tags["dagster/max_runtime"]) > 600  # more than run monitoring gives a sync run


def test_schedule_runs_the_purge_job_daily_in_utc() -> None:
    assert purge_run_history_schedule.job_name == "purge_run_history"
    assert purge_run_history_schedule.cron_schedule == "17 3 * * *"
    assert purge_run_history_schedule.execution_timezone == "UTC"
    assert purge_run_history_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 24, 3, 17, tzinfo=UTC))
    request = purge_run_history_schedule.evaluate_tick(context).run_requests
    assert request is not None and len(request) == 1
