"""The position_sync job as `dg.reconstructable` needs it (a module-level function) for re-execution tests: its lake and
gateway port come from POSITION_LAKE_URI (read when the job is built) and IB_PORT (read when each run starts)."""

from __future__ import annotations

import os

import dagster as dg

from position_pipeline.defs.jobs import position_sync_job
from position_pipeline.defs.resources import IBResource, build_resources
from position_pipeline_tests.support.sync_runs import ASSETS


def sync_job() -> dg.JobDefinition:
    ib = IBResource(port=dg.EnvVar.int("IB_PORT"), request_timeout=2, connect_timeout=3)  # read by each run
    defs = dg.Definitions(
        assets=ASSETS, jobs=[position_sync_job], resources=build_resources(os.environ["POSITION_LAKE_URI"], ib)
    )
    return defs.resolve_job_def(position_sync_job.name)
