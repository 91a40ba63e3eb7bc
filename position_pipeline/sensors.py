"""The 5-second sensor that keeps position_updates current while producers enqueue."""

import json

import dagster as dg

from .jobs import SYNC_JOB_NAME, position_sync_job
from .queue import PositionQueue
from .resources import LakeResource

INTERVAL_SECONDS = 5
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dg.sensor(
    job=position_sync_job,
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every 5 s: gives back the claims of sync runs that ended without writing back, then requests one sync run "
        "when the queue has claimable items and no sync run is queued or in progress."
    ),
)
def position_sync_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult | dg.SkipReason:
    queue = lake.queue()
    released = _release_claims_of_finished_runs(context, queue)
    active = context.instance.get_run_records(dg.RunsFilter(job_name=SYNC_JOB_NAME, statuses=_ACTIVE), limit=1)
    if active:
        run = active[0].dagster_run
        return dg.SkipReason(f"sync run {run.run_id} is {run.status.value}; one sync run at a time")
    claimable = queue.claimable_count()
    if claimable == 0:
        note = f"; released {released} items of finished runs" if released else ""
        return dg.SkipReason(f"no claimable items in the queue{note}")
    tick = json.loads(context.cursor or "{}").get("tick", 0) + 1
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"sync-{tick}", tags={"claimable_at_request": str(claimable)}),
        ],
        cursor=json.dumps({"tick": tick}),
    )


def _release_claims_of_finished_runs(context: dg.SensorEvaluationContext, queue: PositionQueue) -> int:
    """Items stay PROCESSING if their run died between claim and write-back; give them back once the run ended."""
    holders = queue.claims_by_run()
    if not holders:
        return 0
    records = context.instance.get_run_records(dg.RunsFilter(run_ids=list(holders)))
    finished = [r.dagster_run.run_id for r in records if r.dagster_run.is_finished]
    if not finished:
        return 0
    released = queue.release_runs(finished)
    context.log.warning(f"released {released} items claimed by finished runs {finished}")
    return released
