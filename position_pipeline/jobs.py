"""The sync job: the three assets in one process (they pass the batch in memory), one run per batch."""

from __future__ import annotations

import dagster as dg

from .assets import ib_snapshot, position_updates, queued_positions

SYNC_JOB_NAME = "position_sync"
MAX_RUNTIME_SECONDS = 600  # run monitoring fails a run older than this, so its claims come back

position_sync_job = dg.define_asset_job(
    SYNC_JOB_NAME,
    selection=[queued_positions, ib_snapshot, position_updates],
    executor_def=dg.in_process_executor,
    description="Claim a batch from the queue, read it from IB in one polling read, append it to position_updates.",
    tags={"pipeline": "position_sync", "dagster/max_runtime": str(MAX_RUNTIME_SECONDS)},
)
