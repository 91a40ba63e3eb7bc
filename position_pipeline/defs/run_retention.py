"""Run history retention. Dagster keeps every run and its event log forever, and the 5-second sync sensor can start
17,280 runs a day, so the instance's storage grows without bound unless something deletes old runs.

`purge_runs` deletes finished runs older than a cutoff; the `purge_run_history` job runs it daily from
`purge_run_history_schedule`. Materialization events go with their runs: the UI's history of an asset then starts
at the cutoff, while the Delta tables keep every row (each `position_updates` row names its run).
"""

import os
import time
from contextlib import suppress
from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import Field

from position_pipeline.defs.dagster_internals import (
    BACKFILL_ID_TAG,
    BulkActionsFilter,
    BulkActionStatus,
    SqliteEventLogStorage,
)

RETENTION_DAYS_ENV = "DAGSTER_RUN_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 7.0
DEFAULT_BATCH_SIZE = 500
MAX_RUNTIME_SECONDS = 3600  # the instance's run monitoring default (600 s) is sized for sync runs, not a backlog

FINISHED_STATUSES = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
# The backfill daemon still reads the runs of a backfill in these states to decide what to launch or cancel next.
_ACTIVE_BACKFILL_STATUSES = [BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING]


def purge_runs(
    instance: dg.DagsterInstance,
    older_than: timedelta,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    now: datetime | None = None,
) -> int:
    """Delete finished runs (SUCCESS, FAILURE, CANCELED) last updated before `now - older_than`; return how many.

    A finished run's update time is the time it finished (or a later tag change), so a run never goes before it is
    `older_than` past its end. Queued, starting, running and canceling runs are never touched, nor are the runs of a
    backfill the daemon is still working on. Each run goes with its tags, its event log, its captured stdout/stderr
    and, on the default SQLite storage, its per-run database file. Runs are read oldest first, `batch_size` at a
    time, so memory stays flat however large the backlog.
    """
    if older_than <= timedelta(0):
        raise ValueError(f"older_than must be positive, got {older_than}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    cutoff = (now or datetime.now(UTC)).astimezone(UTC) - older_than
    active_backfills = {
        backfill.backfill_id
        for backfill in instance.get_backfills(filters=BulkActionsFilter(statuses=_ACTIVE_BACKFILL_STATUSES))
    }
    filters = dg.RunsFilter(statuses=FINISHED_STATUSES, updated_before=cutoff)
    deleted = 0
    kept_cursor: str | None = None  # the newest run kept so far: deleted runs drop out of the query, kept ones don't
    while True:
        records = instance.get_run_records(filters, limit=batch_size, ascending=True, cursor=kept_cursor)
        for record in records:
            run = record.dagster_run
            if run.tags.get(BACKFILL_ID_TAG) in active_backfills:
                kept_cursor = run.run_id
                continue
            _delete_run(instance, run.run_id)
            deleted += 1
        if len(records) < batch_size:
            return deleted


def _delete_run(instance: dg.DagsterInstance, run_id: str) -> None:
    instance.delete_run(run_id)  # the run row, its tags and its event log
    # Captured stdout/stderr; the local manager's folder `storage/<run_id>` also holds the run's op outputs.
    instance.compute_log_manager.delete_logs(prefix=[run_id])
    storage = instance.event_log_storage
    if isinstance(storage, SqliteEventLogStorage):
        # One database file per run, which delete_run empties but keeps. The storage also remembers which files it
        # has set up; forget this one so that a later read of the run's events finds no events instead of no table.
        for suffix in ("", "-wal", "-shm"):
            with suppress(FileNotFoundError):
                os.unlink(storage.path_for_shard(run_id) + suffix)
        storage._initialized_dbs.discard(run_id)


def retention_days_from_env() -> float:
    """`DAGSTER_RUN_RETENTION_DAYS` if set and not blank, else 7; read at run time, in the run's own process."""
    raw = os.environ.get(RETENTION_DAYS_ENV, "").strip()
    if not raw:
        return DEFAULT_RETENTION_DAYS
    try:
        days = float(raw)
    except ValueError:
        days = float("nan")
    if not days > 0:  # also rejects nan
        raise dg.Failure(f"{RETENTION_DAYS_ENV}={raw!r} is not a positive number of days")
    return days


class PurgeRunHistoryConfig(dg.Config):
    older_than_days: float | None = Field(
        default=None,
        gt=0,
        description=(
            f"Delete finished runs that finished more than this many days ago. Unset: ${RETENTION_DAYS_ENV}, "
            f"else {DEFAULT_RETENTION_DAYS:g}."
        ),
    )


@dg.op(description="Delete finished runs older than the retention, with their event logs and captured logs.")
def purge_finished_runs(context: dg.OpExecutionContext, config: PurgeRunHistoryConfig) -> dg.Output[int]:
    days = config.older_than_days or retention_days_from_env()
    started = time.monotonic()
    deleted = purge_runs(context.instance, timedelta(days=days))
    seconds = time.monotonic() - started
    context.log.info(f"deleted {deleted} finished runs older than {days:g} days in {seconds:.1f} s")
    return dg.Output(
        deleted,
        metadata={
            "runs_deleted": deleted,
            "older_than_days": days,
            "duration_seconds": dg.MetadataValue.float(round(seconds, 3)),
        },
    )


@dg.job(
    executor_def=dg.in_process_executor,
    tags={"pipeline": "maintenance", "dagster/max_runtime": str(MAX_RUNTIME_SECONDS)},
    description=(
        f"Deletes finished runs older than {RETENTION_DAYS_ENV} days (default {DEFAULT_RETENTION_DAYS:g}) "
        "with their event logs: Dagster itself keeps runs forever."
    ),
)
def purge_run_history() -> None:
    purge_finished_runs()


purge_run_history_schedule = dg.ScheduleDefinition(
    name="purge_run_history_schedule",
    job=purge_run_history,
    cron_schedule="17 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 03:17 UTC: purge_run_history with the retention from the run's environment.",
)
