"""Backfills after an IB outage, launched the way the UI launches them: an asset backfill of the three sync assets over
a range of queued-hour partitions, stored in the instance and run by the daemon through the run queue.

With the single-run backfill policy the daemon makes one run for the whole range; that run claims every claimable
item queued in those hours (up to SyncConfig.batch_size, 200,000 by default) in one batch. The sensor keeps running
meanwhile: claims are exclusive, so the two never take the same item, and a second backfill of the same hours finds
nothing left to claim and adds no rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.defs.dagster_internals import PartitionBackfill, make_new_backfill_id
from position_pipeline.defs.partitions import QueuedWindow, partition_key_for, queued_hour_partitions, queued_window

SYNC_ASSET_KEYS = [dg.AssetKey("queued_positions"), dg.AssetKey("ib_snapshot"), dg.AssetKey("position_updates")]
BACKFILL_TAGS = {"pipeline": "position_backfill"}
"""Marks the backfills `position-pipeline backfill` stores. Only a label: what limits backfill runs to one at a time is
the `dagster/backfill` tag every backfill run carries, however launched (dagster.yaml's concurrency.runs)."""
_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
_SUCCEEDED = {"COMPLETED", "COMPLETED_SUCCESS"}


@dataclass(frozen=True)
class BackfillRequest:
    backfill_id: str
    first_partition: str
    last_partition: str
    partitions: int
    window: QueuedWindow


@dataclass(frozen=True)
class BackfillProgress:
    """One look at a running backfill: the daemon's view and the queue's."""

    status: str
    runs: dict[str, int]
    claimable: int
    processing: int
    elapsed_s: float

    @property
    def done(self) -> bool:
        return self.status in _DONE

    @property
    def succeeded(self) -> bool:
        return self.status in _SUCCEEDED

    def line(self) -> str:
        runs = ", ".join(f"{n} {status.lower()}" for status, n in sorted(self.runs.items())) or "none yet"
        return (
            f"{self.elapsed_s:6.1f} s  backfill {self.status.lower()}; runs: {runs}; items in window: "
            f"{self.claimable} waiting, {self.processing} being processed"
        )


def partition_range(start: datetime, end: datetime, now: datetime | None = None) -> list[str]:
    """The hour partitions from the hour holding `start` to the hour holding `end`, inclusive."""
    now = now or datetime.now(UTC)
    first, last = partition_key_for(start, now), partition_key_for(end, now)
    if first > last:
        raise ValueError(f"the window ends before it starts: {start.isoformat()} > {end.isoformat()}")
    return list(queued_hour_partitions.get_partition_keys_in_range(dg.PartitionKeyRange(first, last)))


def launch_backfill(
    instance: dg.DagsterInstance, start: datetime, end: datetime, *, now: datetime | None = None
) -> BackfillRequest:
    """Store an asset backfill of the sync assets over [start's hour, end's hour]; the daemon launches its run."""
    from position_pipeline.definitions import defs

    keys = partition_range(start, end, now)
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=defs.resolve_asset_graph(),
        partition_names=keys,
        asset_selection=SYNC_ASSET_KEYS,
        backfill_timestamp=time.time(),
        tags=BACKFILL_TAGS,
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=f"position sync {keys[0]} to {keys[-1]}",
        description="Items queued in these hours that have not succeeded yet (position-pipeline backfill).",
        run_config=None,
    )
    instance.add_backfill(backfill)
    window = queued_window(queued_hour_partitions.time_window_for_partition_key(keys[0]), now)
    last = queued_window(queued_hour_partitions.time_window_for_partition_key(keys[-1]), now)
    return BackfillRequest(backfill.backfill_id, keys[0], keys[-1], len(keys), QueuedWindow(window.start, last.end))


def backfill_progress(
    instance: dg.DagsterInstance, queue: PositionQueue, request: BackfillRequest, started: float
) -> BackfillProgress:
    backfill = instance.get_backfill(request.backfill_id)
    if backfill is None:
        raise LookupError(f"backfill {request.backfill_id} is not in this Dagster instance")
    runs: dict[str, int] = {}
    for record in instance.get_run_records(dg.RunsFilter.for_backfill(request.backfill_id)):
        status = record.dagster_run.status.value
        runs[status] = runs.get(status, 0) + 1
    window = request.window
    claimable = queue.claimable_count(None, queued_from=window.start, queued_before=window.end)
    processing = _processing_in_window(queue, window)
    return BackfillProgress(backfill.status.value, runs, claimable, processing, time.monotonic() - started)


def wait_for_backfill(
    instance: dg.DagsterInstance,
    queue: PositionQueue,
    request: BackfillRequest,
    *,
    timeout_s: float,
    poll_s: float = 2.0,
    report: Callable[[BackfillProgress], None] = lambda progress: None,
) -> BackfillProgress:
    """Poll until the daemon finishes the backfill or `timeout_s` passes; `report` gets every changed view."""
    started = time.monotonic()
    last_line = ""
    while True:
        progress = backfill_progress(instance, queue, request, started)
        line = progress.line().split("backfill", 1)[1]
        if line != last_line:
            report(progress)
            last_line = line
        if progress.done or progress.elapsed_s >= timeout_s:
            return progress
        time.sleep(poll_s)


def _processing_in_window(queue: PositionQueue, window: QueuedWindow) -> int:
    import polars as pl

    frame = queue.read().filter(pl.col("status") == QueueStatus.PROCESSING.value)
    if window.start is not None:
        frame = frame.filter(pl.col("created_at") >= window.start)
    if window.end is not None:
        frame = frame.filter(pl.col("created_at") < window.end)
    return frame.height
