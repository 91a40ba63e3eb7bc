"""Table upkeep in Dagster: the op and its run config (the `table_upkeep` job is in jobs.py, its schedule in
schedules.py).

What upkeep does, and why, is `core/maintenance`; the op only runs it with its config and shows the report.
"""

from datetime import timedelta
from typing import Any

import dagster as dg
from pydantic import Field

from position_pipeline.core.maintenance import (
    COMPACT_MIN_SMALL_FILES,
    DEFAULT_VACUUM_RETENTION,
    MAX_VACUUM_RETENTION,
    MIN_VACUUM_RETENTION,
    Markdown,
    run_upkeep,
)
from position_pipeline.core.queue.archive import DEFAULT_SUCCESS_RETENTION
from position_pipeline.defs.resources import LakeResource


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
