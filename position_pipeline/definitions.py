"""The code location: assembles the definitions, nothing else."""

from __future__ import annotations

import dagster as dg

from .assets import ib_snapshot, position_queue, position_updates, queued_positions
from .jobs import position_sync_job
from .resources import delta_io_manager, ib_resource, lake_resource
from .sensors import position_sync_sensor

defs = dg.Definitions(
    assets=[position_queue, queued_positions, ib_snapshot, position_updates],
    jobs=[position_sync_job],
    sensors=[position_sync_sensor],
    resources={
        "ib": ib_resource(),
        "lake": lake_resource(),
        "delta_io_manager": delta_io_manager(),
        "batch_io_manager": dg.mem_io_manager,
    },
    executor=dg.in_process_executor,
)
