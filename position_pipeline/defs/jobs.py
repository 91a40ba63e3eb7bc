"""Every job of the code location, each named here.

- `position_sync`: the three sync assets in one process (the batch passes between them through the run's folder,
  defs/reexecution.py), one run per batch;
- `position_checks`: the asset checks, unpartitioned, next to the hourly-partitioned sync assets;
- `table_upkeep`: archive, compaction, checkpoint and vacuum; it carries the sync job's `pipeline` tag, so the
  instance's tag concurrency limit (dagster.yaml, limit 1) never runs it beside a sync run: those wait behind it;
- `purge_run_history`: defined with its op in `run_retention.py`, listed here with the others.
"""

from __future__ import annotations

import dagster as dg

from position_pipeline.core.leases import MAX_RUNTIME_SECONDS
from position_pipeline.defs.assets import ib_snapshot, position_updates, queued_positions
from position_pipeline.defs.checks import ASSET_CHECKS
from position_pipeline.defs.run_retention import purge_run_history
from position_pipeline.defs.upkeep import upkeep_tables

SYNC_JOB_NAME = "position_sync"
CHECKS_JOB_NAME = "position_checks"
UPKEEP_JOB_NAME = "table_upkeep"
UPKEEP_MAX_RUNTIME_SECONDS = 600
"""Upkeep holds the sync runs' concurrency slot, so it must stay short: run monitoring fails it after this."""

position_sync_job = dg.define_asset_job(
    SYNC_JOB_NAME,
    # Without the asset checks of position_updates: those run on their own 5-minute schedule, not on every batch.
    selection=dg.AssetSelection.assets(queued_positions, ib_snapshot, position_updates).without_checks(),
    executor_def=dg.in_process_executor,
    description=(
        "Claim a batch of one hour partition's items from the queue, read it from IB in one polling read, append it "
        "to position_updates. The sensor runs it; backfills of hour ranges run the same assets in one run."
    ),
    tags={"pipeline": SYNC_JOB_NAME, "dagster/max_runtime": str(MAX_RUNTIME_SECONDS)},
)

position_checks_job = dg.define_asset_job(
    CHECKS_JOB_NAME,
    selection=dg.AssetSelection.checks(*ASSET_CHECKS),
    executor_def=dg.in_process_executor,
    description="Runs the queue's and position_updates' health checks; results show on each asset's Checks tab.",
    tags={"pipeline": CHECKS_JOB_NAME},
)


@dg.job(
    name=UPKEEP_JOB_NAME,
    executor_def=dg.in_process_executor,
    description="Bound the queue (old SUCCESS items to the archive) and compact, checkpoint and vacuum the lake's "
    "tables; every few minutes only the compaction of small files. Tagged like the sync job, so the instance never "
    "runs the two at once: sync runs wait behind it.",
    tags={"pipeline": SYNC_JOB_NAME, "dagster/max_runtime": str(UPKEEP_MAX_RUNTIME_SECONDS)},
)
def table_upkeep() -> None:
    upkeep_tables()


__all__ = [
    "CHECKS_JOB_NAME",
    "SYNC_JOB_NAME",
    "UPKEEP_JOB_NAME",
    "position_checks_job",
    "position_sync_job",
    "purge_run_history",
    "table_upkeep",
]
