"""The code location: assembles the definitions, nothing else."""

from __future__ import annotations

import dagster as dg

from position_pipeline.defs.assets import ib_snapshot, position_queue, position_updates, queued_positions
from position_pipeline.defs.checks import ASSET_CHECKS
from position_pipeline.defs.jobs import position_checks_job, position_sync_job, purge_run_history, table_upkeep
from position_pipeline.defs.resources import build_resources
from position_pipeline.defs.schedules import position_checks_schedule, purge_run_history_schedule, table_upkeep_schedule
from position_pipeline.defs.sensors import position_sync_sensor

defs = dg.Definitions(
    assets=[position_queue, queued_positions, ib_snapshot, position_updates],
    asset_checks=ASSET_CHECKS,
    jobs=[position_sync_job, position_checks_job, table_upkeep, purge_run_history],
    sensors=[position_sync_sensor],
    schedules=[position_checks_schedule, table_upkeep_schedule, purge_run_history_schedule],
    resources=build_resources(),
    executor=dg.in_process_executor,
)
