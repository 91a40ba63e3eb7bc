"""The sync job: the three assets in one process (they pass the batch in memory), one run per batch."""

from __future__ import annotations

import dagster as dg

from position_pipeline.core.leases import MAX_RUNTIME_SECONDS
from position_pipeline.defs.assets import ib_snapshot, position_updates, queued_positions

SYNC_JOB_NAME = "position_sync"

position_sync_job = dg.define_asset_job(
    SYNC_JOB_NAME,
    # Without the asset checks of position_updates: those run on their own 5-minute schedule, not on every batch.
    selection=dg.AssetSelection.assets(queued_positions, ib_snapshot, position_updates).without_checks(),
    executor_def=dg.in_process_executor,
    description=(
        "Claim a batch of one hour partition's items from the queue, read it from IB in one polling read, append it "
        "to position_updates. The sensor runs it; backfills of hour ranges run the same assets in one run."
    ),
    tags={"pipeline": "position_sync", "dagster/max_runtime": str(MAX_RUNTIME_SECONDS)},
)
