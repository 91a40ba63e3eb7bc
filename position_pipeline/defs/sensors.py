"""The 5-second sensor that keeps position_updates current while producers enqueue."""

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import dagster as dg

from position_pipeline.core.leases import CLAIM_LEASE_SECONDS, MAX_RUNTIME_SECONDS
from position_pipeline.core.queue import PositionQueue
from position_pipeline.core.terms import SENSOR_BATCH_SIZE
from position_pipeline.defs.jobs import SYNC_JOB_NAME, position_sync_job
from position_pipeline.defs.partitions import partition_key_for
from position_pipeline.defs.resources import LakeResource
from position_pipeline.defs.run_workers import give_back_runs_whose_worker_died

INTERVAL_SECONDS = 5
"""The sensor daemon's loop: it evaluates a sensor at most once per 5-second loop (dagster/_daemon/sensor.py)."""
MINIMUM_INTERVAL_SECONDS = INTERVAL_SECONDS - 1
"""Below the loop, so that every loop evaluates the sensor. At exactly 5 s, a tick that starts a few ms later in its
loop than the one before is "under the minimum interval" by those ms and waits a whole loop more (benchmarks/
freshness.py measured a 95th percentile gap between ticks of 10 s, and in some runs a median of 10 s; at 4 s every
gap is 5 s)."""
BACKOFF_SECONDS = 10
MAX_BACKOFF_SECONDS = 300
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
_FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


@dg.sensor(
    job=position_sync_job,
    minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every 5 s: stops if the queue's log went back; reports failed any sync run whose worker process is gone "
        "and gives its claims back at once; gives back the claims of sync runs that ended without writing back (and "
        "any claim older than "
        f"the {CLAIM_LEASE_SECONDS} s lease), then requests one sync run of {SENSOR_BATCH_SIZE} items for the hour "
        "partition of the next claimable item (priority 1 first, then oldest) when no sync run is queued or in "
        "progress. After failed sync runs it waits 10 s, 20 s, 40 s ... (at most 5 min) before trying again."
    ),
)
def position_sync_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult | dg.SkipReason:
    queue = lake.queue()
    cursor = _remember_queue_version(json.loads(context.cursor or "{}"), queue.version())
    result = _sync_tick(context, queue, cursor)
    if isinstance(result, dg.SkipReason):
        context.update_cursor(json.dumps(cursor))  # a skipped tick remembers the version it saw too
    return result


class QueueRolledBack(Exception):
    """The queue's Delta log is older than one the sensor saw: the tick fails, and so every tick until an operator
    looks (a rolled-back log can show items written back as PENDING again)."""


def _remember_queue_version(cursor: dict[str, int], version: int) -> dict[str, int]:
    """The cursor with the highest queue version seen; QueueRolledBack when `version` is below it."""
    seen = cursor.get("queue_version", -1)
    if version < seen:
        raise QueueRolledBack(
            f"the queue's Delta log went back from version {seen} to {version}: its latest commits were deleted or "
            "the table was restored from an older copy, so items written back since may read PENDING again. "
            "Syncing is stopped. Check positions/position_queue/_delta_log (and restore the missing commits if you "
            "can), then clear this sensor's cursor to accept the table as it is: `dagster sensor cursor "
            "position_sync_sensor --delete`, or Edit cursor on the sensor's page in the UI. Rows already in "
            "position_updates are not written again."
        )
    return {**cursor, "queue_version": max(version, seen)}


def _sync_tick(
    context: dg.SensorEvaluationContext, queue: PositionQueue, cursor: dict[str, int]
) -> dg.SensorResult | dg.SkipReason:
    holders = queue.claims_by_run()
    released = give_back_runs_whose_worker_died(context, queue, list(holders), SYNC_JOB_NAME)
    released += _release_claims_of_finished_runs(context, queue, holders) + _release_expired_claims(context, queue)
    note = f" (gave back {released} items of finished runs)" if released else ""
    active = context.instance.get_run_records(dg.RunsFilter(job_name=SYNC_JOB_NAME, statuses=_ACTIVE), limit=1)
    if active:
        run = active[0].dagster_run
        age = time.time() - (active[0].start_time or active[0].create_timestamp.timestamp())
        return dg.SkipReason(
            f"sync run {run.run_id} is {run.status.value} since {age:.0f} s; one sync run at a time. If it is stuck, "
            f"terminate it in the UI (run monitoring fails it after {MAX_RUNTIME_SECONDS} s){note}"
        )
    wait = _backoff_after_failures(context)
    if wait:
        return dg.SkipReason(wait + note)
    next_queued_at = queue.next_claimable_at()
    if next_queued_at is None:
        return dg.SkipReason(f"no claimable items in the queue{note}")
    partition_key = partition_key_for(next_queued_at)
    tick = cursor.get("tick", 0) + 1
    # The tick makes a replayed evaluation reuse its key; the queue version keeps keys new after a cursor reset.
    run_key = f"sync-{tick}-v{queue.version()}"
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=run_key,
                partition_key=partition_key,
                run_config={"ops": {"queued_positions": {"config": {"batch_size": SENSOR_BATCH_SIZE}}}},
                tags={"next_queued_at": next_queued_at.isoformat()},
            )
        ],
        cursor=json.dumps({**cursor, "tick": tick}),
    )


def _backoff_after_failures(context: dg.SensorEvaluationContext) -> str | None:
    """Consecutive failed sync runs (IB down, bad config) push the next try out exponentially, up to 5 minutes."""
    recent = context.instance.get_run_records(dg.RunsFilter(job_name=SYNC_JOB_NAME, statuses=_FINISHED), limit=10)
    failures = 0
    for record in recent:  # newest first
        if record.dagster_run.status != dg.DagsterRunStatus.FAILURE:
            break
        failures += 1
    if not failures or recent[0].end_time is None:
        return None
    delay = min(BACKOFF_SECONDS * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)
    retry_at = recent[0].end_time + delay
    if time.time() >= retry_at:
        return None
    return (
        f"the last {failures} sync run(s) failed (latest {recent[0].dagster_run.run_id}: see its error in the UI); "
        f"next try in {retry_at - time.time():.0f} s"
    )


def _release_expired_claims(context: dg.SensorEvaluationContext, queue: PositionQueue) -> int:
    """A claim older than the lease belongs to a run Dagster never reported finished (its worker and monitoring
    died with it): give it back. A live run that lost its claim writes nothing (it re-checks before its append)."""
    released = queue.release_stale(timedelta(seconds=CLAIM_LEASE_SECONDS))
    if released:
        context.log.warning(f"released {released} items whose claim was older than {CLAIM_LEASE_SECONDS} s")
    return released


def _release_claims_of_finished_runs(
    context: dg.SensorEvaluationContext, queue: PositionQueue, holders: Mapping[str, int]
) -> int:
    """Items stay PROCESSING if their run died between claim and write-back; give them back once the run ended."""
    if not holders:
        return 0
    records = context.instance.get_run_records(dg.RunsFilter(run_ids=list(holders)))
    finished = [r.dagster_run.run_id for r in records if r.dagster_run.is_finished]
    if not finished:
        return 0
    # Not before the claim is MAX_RUNTIME_SECONDS old: until its write fence, a run reported finished while its
    # worker lives on may still append, and its items must not be written by another run too.
    released = queue.release_runs(finished, claimed_before=datetime.now(UTC) - timedelta(seconds=MAX_RUNTIME_SECONDS))
    if released:
        context.log.warning(f"released {released} items claimed by finished runs {finished}")
    return released
