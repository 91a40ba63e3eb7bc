"""A sync run whose worker died (with the daemon, with its code server, or alone) stops blocking the queue within a
sensor tick, not at run monitoring's ten-minute max runtime.

Each sync run tags itself with its worker's identity (`core.workers`) before it claims anything. Once that worker
is provably gone, the sensor reports the run failed through the instance (unless the code server that launched it
already did), gives its claims back at once (a dead process writes nothing, so the write fence needs no wait) and
frees the `ib_read` pool slot its step held, so the next run's IB read does not wait for run monitoring to free it
(`free_slots_after_run_end_seconds`, dagster.yaml). A worker that lives (stalled, or on a machine the sensor cannot
see) is left to the lease and run monitoring, as before.
"""

from __future__ import annotations

import dagster as dg

from position_pipeline.core.queue import PositionQueue
from position_pipeline.core.workers import Worker, this_worker, worker_gone

WORKER_TAG = "position_pipeline/worker"
"""Run tag: host, PID namespace, PID and start time of the process executing the run's steps."""


def record_worker(context: dg.AssetExecutionContext) -> None:
    """Tag the run with the process running it; call before the claim, so every claim's run has the tag."""
    context.instance.add_run_tags(context.run_id, {WORKER_TAG: str(this_worker())})


def give_back_runs_whose_worker_died(
    context: dg.SensorEvaluationContext, queue: PositionQueue, holders: list[str], job_name: str
) -> int:
    """For every run holding claims (`holders`) and every started run of `job_name` whose worker is provably gone:
    report it failed if it is not finished (a run the code server already reported failed is), and give its
    claims back now. Returns how many items came back."""
    started = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]
    records = list(context.instance.get_run_records(dg.RunsFilter(job_name=job_name, statuses=started)))
    if holders:
        records += context.instance.get_run_records(dg.RunsFilter(run_ids=holders))
    released = 0
    for run in {r.dagster_run.run_id: r.dagster_run for r in records}.values():
        worker = Worker.parse(run.tags.get(WORKER_TAG, ""))
        if worker is None or not worker_gone(worker):
            continue
        if not run.is_finished:
            context.instance.report_run_failed(
                run, f"its worker (pid {worker.pid} on {worker.host}) is gone: the process died without ending the run"
            )
        _free_pool_slots(context.instance, run.run_id)
        given_back = queue.release_runs([run.run_id]) if run.run_id in holders else 0
        released += given_back
        context.log.warning(f"run {run.run_id}: worker pid {worker.pid} is gone; {given_back} items given back")
    return released


def _free_pool_slots(instance: dg.DagsterInstance, run_id: str) -> None:
    """Free the concurrency slots a dead run's steps held (its `ib_read` slot), as Dagster's monitoring daemon does
    `free_slots_after_run_end_seconds` after a run ends, but now."""
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        storage.free_concurrency_slots_for_run(run_id)
