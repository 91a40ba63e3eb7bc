"""Every schedule of the code location, each named here (UTC, running by default).

- `position_checks_every_5_minutes`: the asset checks, so a stalled or failing pipeline shows in the UI;
- `table_upkeep_schedule`: every 3 minutes, a compaction-only upkeep when small files pile up (otherwise no run),
  and at FULL_UPKEEP_MINUTE of every hour the full upkeep;
- `purge_run_history_schedule`: defined in `run_retention.py`, listed here with the others.
"""

from datetime import UTC, datetime
from typing import Any

import dagster as dg

from position_pipeline.core.maintenance import COMPACT_MIN_SMALL_FILES, HOT_TARGET_SIZE, crowded_tables
from position_pipeline.defs.jobs import position_checks_job, table_upkeep
from position_pipeline.defs.resources import LakeResource
from position_pipeline.defs.run_retention import purge_run_history_schedule

CHECKS_CRON = "*/5 * * * *"
UPKEEP_CRON = "2-59/3 * * * *"
"""Every 3 minutes (minute 2, 5, ... 59: 36 sensor batches apart at most), through minute FULL_UPKEEP_MINUTE."""
FULL_UPKEEP_MINUTE = 23
"""The tick of each hour that runs the full upkeep (archive, compaction, checkpoint, vacuum), away from :00."""

position_checks_schedule = dg.ScheduleDefinition(
    name="position_checks_every_5_minutes",
    job=position_checks_job,
    cron_schedule=CHECKS_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Runs the health checks every 5 minutes, so a stalled or failing pipeline shows in the UI.",
)


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


__all__ = [
    "CHECKS_CRON",
    "FULL_UPKEEP_MINUTE",
    "UPKEEP_CRON",
    "position_checks_schedule",
    "purge_run_history_schedule",
    "table_upkeep_schedule",
]
