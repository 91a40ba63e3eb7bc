"""The sync assets as tests materialize them: the asset list, and resources pointing at a lake and a simulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.defs.assets import ib_snapshot, position_queue, position_updates, queued_positions
from position_pipeline.defs.partitions import hour_key, partition_range_tags
from position_pipeline.defs.resources import IBResource, build_resources
from position_pipeline.ib_gateway_sim import GatewayThread

ASSETS = [position_queue, queued_positions, ib_snapshot, position_updates]
"""The graph with its source, `position_queue`, so a run can record the write-back as its materialization."""
SYNC = [queued_positions, ib_snapshot, position_updates]
"""What a sync run materializes."""


def sim_resources(root: str, sim: GatewayThread, **ib: Any) -> dict[str, Any]:
    """The code location's resources on `root`, reading the simulator with timeouts short enough for tests."""
    return build_resources(root, IBResource(port=sim.port, request_timeout=2, connect_timeout=3, **ib))


def run_sync(
    root: str, sim: GatewayThread, instance: dg.DagsterInstance, batch_size: int = 50, **ib: object
) -> dg.ExecuteInProcessResult:
    """One run over the last two hour partitions, so an item queued just before an hour turned is still taken."""
    return dg.materialize(
        ASSETS,
        selection=SYNC,
        resources=sim_resources(root, sim, **ib),
        instance=instance,
        run_config=dg.RunConfig({"queued_positions": {"config": {"batch_size": batch_size}}}),
        tags=partition_range_tags(hour_key(datetime.now(UTC) - timedelta(hours=1)), hour_key(datetime.now(UTC))),
        raise_on_error=False,
    )


def updates(root: str) -> pl.DataFrame:
    """Every row of position_updates."""
    return pl.from_arrow(DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).to_pyarrow_table())  # type: ignore[return-value]
