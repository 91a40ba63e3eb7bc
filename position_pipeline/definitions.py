"""The code location: assembles the definitions, nothing else."""

from __future__ import annotations

import warnings

import dagster as dg

from position_pipeline.defs.alerts import alert_resource, sync_alert_sensor
from position_pipeline.defs.assets import ib_snapshot, position_queue, position_updates, queued_positions
from position_pipeline.defs.checks import ASSET_CHECKS
from position_pipeline.defs.jobs import position_checks_job, position_sync_job, purge_run_history, table_upkeep
from position_pipeline.defs.queue_depth import queue_depth_sensor
from position_pipeline.defs.resources import build_resources
from position_pipeline.defs.schedules import position_checks_schedule, purge_run_history_schedule, table_upkeep_schedule
from position_pipeline.defs.sensors import position_sync_sensor

# Code references are beta in Dagster 1.13; they only add links to the UI. Said once, here.
warnings.filterwarnings(
    "ignore",
    message=".*(with_source_code_references|LocalFileCodeReference|CodeReferencesMetadataValue)",
    category=dg.BetaWarning,
)

defs = dg.Definitions(
    # Each asset links to the file and line that defines it (the UI's "Open source" on the asset's page).
    assets=dg.with_source_code_references([position_queue, queued_positions, ib_snapshot, position_updates]),
    asset_checks=ASSET_CHECKS,
    jobs=[position_sync_job, position_checks_job, table_upkeep, purge_run_history],
    sensors=[position_sync_sensor, sync_alert_sensor, queue_depth_sensor],
    schedules=[position_checks_schedule, table_upkeep_schedule, purge_run_history_schedule],
    resources={**build_resources(), "alerts": alert_resource()},
    executor=dg.in_process_executor,
)
