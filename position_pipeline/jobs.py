"""The sync job: the three assets in one process (they pass the batch in memory), one run per batch."""

from __future__ import annotations

import dagster as dg

from .assets import ib_snapshot, position_updates, queued_positions

SYNC_JOB_NAME = "position_sync"
MAX_RUNTIME_SECONDS = 600  # run monitoring fails a run older than this, so its claims come back
CLAIM_LEASE_SECONDS = 900  # a claim older than this is given back even if its run was never reported finished

position_sync_job = dg.define_asset_job(
    SYNC_JOB_NAME,
    selection=[queued_positions, ib_snapshot, position_updates],
    executor_def=dg.in_process_executor,
    description=(
        "Claim a batch of one hour partition's items from the queue, read it from IB in one polling read, append it "
        "to position_updates. The sensor runs it; backfills of hour ranges run the same assets in one run."
    ),
    tags={"pipeline": "position_sync", "dagster/max_runtime": str(MAX_RUNTIME_SECONDS)},
)
