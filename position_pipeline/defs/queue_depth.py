"""Queue depth in the UI: an observation of `position_queue` each time the queue table gets a new version.

The sensor compares the table's Delta version with the one in its cursor and, when it moved, records an
AssetObservation with the figures `position-pipeline status` computes (`core.status.collect_status`): pending and
claimable items, the oldest pending and claimable items' age and the version. The asset's *Plots* show them over time.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from position_pipeline.core.lake import QUEUE_TABLE, open_existing, table_uri
from position_pipeline.core.status import Status, collect_status
from position_pipeline.core.terms import QueueStatus
from position_pipeline.defs.assets import position_queue
from position_pipeline.defs.resources import LakeResource

QUEUE_DEPTH_INTERVAL_SECONDS = 30


def queue_depth_metadata(status: Status) -> dict[str, Any]:
    """The observation's figures; ages in seconds (0 when nothing waits), so every point of the plots is a number."""
    pending = sum(status.depth.get(str(QueueStatus.PENDING), {}).values())
    return {
        "pending": dg.MetadataValue.int(pending),
        "claimable": dg.MetadataValue.int(status.claimable),
        "oldest_pending_age_s": dg.MetadataValue.float(round(status.age_s(status.oldest_pending_at) or 0.0, 1)),
        "oldest_claimable_age_s": dg.MetadataValue.float(round(status.age_s(status.oldest_claimable_at) or 0.0, 1)),
        "delta_version": dg.MetadataValue.int(status.queue.version or 0),
    }


@dg.sensor(
    minimum_interval_seconds=QUEUE_DEPTH_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        f"Every {QUEUE_DEPTH_INTERVAL_SECONDS} s: when the queue table has a new version, records an observation of "
        "position_queue with its pending and claimable items, the oldest ones' age and the version (plotted on the "
        "asset's page)."
    ),
)
def queue_depth_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult | dg.SkipReason:
    table = table_uri(lake.root_uri, QUEUE_TABLE)
    dt = open_existing(table, lake.storage_options())
    if dt is None:
        return dg.SkipReason(f"no queue table at {table} yet")
    version = dt.version()
    if context.cursor is not None and int(context.cursor) == version:
        return dg.SkipReason(f"the queue is still at version {version}")
    metadata = queue_depth_metadata(collect_status(lake.root_uri))
    return dg.SensorResult(
        asset_events=[dg.AssetObservation(asset_key=position_queue.key, metadata=metadata)],
        cursor=str(metadata["delta_version"].value),
    )
