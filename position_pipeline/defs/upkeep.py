"""Table upkeep in Dagster: the op's run config, the op, and the job and schedule that run it.

What upkeep does, and why, is `core/maintenance`; the op only runs it with its config and shows the report.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from pydantic import Field

from position_pipeline.core.maintenance import (
    COMPACT_MIN_SMALL_FILES,
    DEFAULT_VACUUM_RETENTION,
    HOT_TARGET_SIZE,
    MAX_VACUUM_RETENTION,
    MIN_VACUUM_RETENTION,
    Markdown,
    crowded_tables,
    run_upkeep,
)
from position_pipeline.core.queue_archive import DEFAULT_SUCCESS_RETENTION
from position_pipeline.defs.resources import LakeResource

UPKEEP_CRON = "2-59/3 * * * *"
"""Every 3 minutes (minute 2, 5, ... 59: 36 sensor batches apart at most), through minute FULL_UPKEEP_MINUTE."""
FULL_UPKEEP_MINUTE = 23
"""The tick of each hour that runs the full upkeep (archive, compaction, checkpoint, vacuum), away from :00."""

UPKEEP_JOB_NAME = "table_upkeep"
UPKEEP_MAX_RUNTIME_SECONDS = 600
"""Upkeep holds the sync runs' concurrency slot, so it must stay short: run monitoring fails it after this."""


class UpkeepConfig(dg.Config):
    """How long SUCCESS items stay in the hot queue, how long replaced files stay readable, and how much to do."""

    success_retention_hours: int = Field(
        default=int(DEFAULT_SUCCESS_RETENTION / timedelta(hours=1)),
        ge=1,
        le=24 * 366,
        description="SUCCESS items last updated longer ago than this move to position_queue_archive.",
    )
    vacuum_retention_hours: int = Field(
        default=int(DEFAULT_VACUUM_RETENTION / timedelta(hours=1)),
        ge=int(MIN_VACUUM_RETENTION / timedelta(hours=1)),
        le=int(MAX_VACUUM_RETENTION / timedelta(hours=1)),
        description="Files replaced by compaction or MERGEs are deleted this long after; readers of older "
        "snapshots (and time travel) need them until then. 1 to 168 (Delta's own record of them lasts 7 days).",
    )
    compact_only: bool = Field(
        default=False,
        description="Only compact the small files of the queue and position_updates' open day, where a partition "
        f"holds at least {COMPACT_MIN_SMALL_FILES} (the schedule's runs between full upkeeps). False: the full upkeep.",
    )


@dg.op(
    description="Full upkeep: archive old SUCCESS queue items, then compact, checkpoint and vacuum the queue, its "
    "archive and position_updates. With compact_only: merge the small files of the queue and position_updates' open "
    "day only.",
)
def upkeep_tables(context: dg.OpExecutionContext, config: UpkeepConfig, lake: LakeResource) -> None:
    report = run_upkeep(context.log, config, lake.root_uri, lake.storage_options())
    context.add_output_metadata(upkeep_metadata(report))


def upkeep_metadata(report: dict[str, Any]) -> dict[str, Any]:
    """The run's report as the UI shows it: its `Markdown` texts rendered as markdown, the rest as they are."""
    return {key: dg.MetadataValue.md(value) if isinstance(value, Markdown) else value for key, value in report.items()}


@dg.job(
    name=UPKEEP_JOB_NAME,
    executor_def=dg.in_process_executor,
    description="Bound the queue (old SUCCESS items to the archive) and compact, checkpoint and vacuum the lake's "
    "tables; every few minutes only the compaction of small files. Tagged like the sync job, so the instance never "
    "runs the two at once: sync runs wait behind it.",
    tags={"pipeline": "position_sync", "dagster/max_runtime": str(UPKEEP_MAX_RUNTIME_SECONDS)},
)
def table_upkeep() -> None:
    upkeep_tables()


@dg.schedule(
    name="table_upkeep_schedule",
    job=table_upkeep,
    cron_schedule=UPKEEP_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"The full table_upkeep at minute {FULL_UPKEEP_MINUTE} of every hour (UTC); every 3 minutes in "
    f"between, a compaction-only run when the queue or position_updates has a partition with at least "
    f"{COMPACT_MIN_SMALL_FILES} small files (otherwise no run).",
)
def table_upkeep_schedule(context: dg.ScheduleEvaluationContext, lake: LakeResource) -> dg.RunRequest | dg.SkipReason:
    """Full at :23; in between, only when compaction has something to merge, so an idle lake launches no runs."""
    at = context.scheduled_execution_time or datetime.now(UTC)
    if at.astimezone(UTC).minute == FULL_UPKEEP_MINUTE:
        return dg.RunRequest(run_config=_upkeep_run_config(compact_only=False), tags={"upkeep": "full"})
    crowded = crowded_tables(lake.root_uri, lake.storage_options())
    if not crowded:
        return dg.SkipReason(
            f"no partition of the queue or position_updates holds {COMPACT_MIN_SMALL_FILES} files under "
            f"{HOT_TARGET_SIZE // 2**20} MiB: nothing to compact"
        )
    return dg.RunRequest(
        run_config=_upkeep_run_config(compact_only=True),
        tags={"upkeep": "compaction", **{f"small_files/{name}": str(n) for name, n in crowded.items()}},
    )


def _upkeep_run_config(*, compact_only: bool) -> dict[str, Any]:
    return {"ops": {"upkeep_tables": {"config": {"compact_only": compact_only}}}}
