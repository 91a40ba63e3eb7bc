"""The asset graph: position_queue (written by producers) -> queued_positions -> ib_snapshot -> position_updates.

Exactly once: a run claims its batch in the queue (PROCESSING, claimed_by = run id), appends the rows through the
Delta IO manager, and only then marks the items SUCCESS or FAILED. A run that dies in between leaves its items
PROCESSING; the sensor gives them back to PENDING once Dagster reports the run finished, and the next run skips
writing rows that an earlier run of the same item already committed (`claims > 1` items are checked).

Dagster forbids cycles, so the write-back to the queue is recorded as a materialization of the `position_queue`
asset: its history in the UI lists every run's write-back.
"""

import time
import warnings
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import polars as pl
from deltalake import DeltaTable
from pydantic import Field

from position_pipeline.core.ib_reader import IBError
from position_pipeline.core.lake import SNAPSHOT_RESULTS_SCHEMA, existing_request_ids, storage_options_for
from position_pipeline.core.leases import MAX_RUNTIME_SECONDS, WRITE_FENCE_SECONDS
from position_pipeline.core.sync import failures, position_update_rows, snapshot_results
from position_pipeline.core.terms import BACKFILL_BATCH_SIZE, MAX_ATTEMPTS, SENSOR_BATCH_SIZE
from position_pipeline.defs.metadata import markdown_table
from position_pipeline.defs.partitions import queued_hour_partitions, queued_window
from position_pipeline.defs.resources import IBResource, LakeResource

GROUP = "positions"
OWNERS = ["team:trading-data"]
# Dagster flags backfill_policy as beta; it is what makes a backfill of many hours one run. Said once, here.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
_SYNC: dict[str, Any] = {
    "partitions_def": queued_hour_partitions,
    "backfill_policy": dg.BackfillPolicy.single_run(),
    "group_name": GROUP,
    "owners": OWNERS,
}
"""Shared by the three sync assets: one hour partition per queued hour, a backfill of any range in one run."""


class SyncConfig(dg.Config):
    """What one run claims from its partitions' window. The sensor asks for 50; a backfill takes the whole window."""

    batch_size: int = Field(
        default=BACKFILL_BATCH_SIZE,
        ge=1,
        description=f"Items claimed per run (the sensor sets {SENSOR_BATCH_SIZE}). What a run leaves in its window is "
        "picked up by the sensor later.",
    )
    priority: int | None = Field(
        default=None, description="Queue priority to claim: 1 active, 2 monitoring; None: any, priority 1 first."
    )
    max_attempts: int = Field(
        default=MAX_ATTEMPTS, ge=1, description="Item-level failures after which an item stays FAILED."
    )


position_queue = dg.AssetSpec(
    "position_queue",
    description=(
        "The work queue (Delta table `positions/position_queue`). Producers append items through `PositionQueue` "
        "or `position-pipeline enqueue`; each sync run claims a batch and writes the outcome back here, recorded as "
        "a materialization of this asset."
    ),
    group_name=GROUP,
    owners=OWNERS,
    kinds={"delta"},
)


@dg.asset(
    deps=[position_queue],
    io_manager_key="batch_io_manager",
    kinds={"polars", "delta"},
    description=(
        "Claims up to batch_size claimable items queued in this run's hours (priority 1 first, then oldest), so no "
        "other run can take them."
    ),
    **_SYNC,
)
def queued_positions(context: dg.AssetExecutionContext, config: SyncConfig, lake: LakeResource) -> dg.Output:
    window = queued_window(context.partition_time_window)
    batch = lake.queue().claim(
        config.priority,
        config.batch_size,
        claimed_by=context.run_id,
        max_attempts=config.max_attempts,
        queued_from=window.start,
        queued_before=window.end,
    )
    partitions = context.partition_key_range
    context.log.info(
        f"run {context.run_id} claimed {batch.height} items {window.describe()} (partitions {partitions.start} to "
        f"{partitions.end}, priority {config.priority or 'any'}, at most {config.batch_size})"
    )
    return dg.Output(
        batch,
        metadata={
            "claimed": batch.height,
            "window": window.describe(),
            "reclaimed": batch.filter(pl.col("claims") > 1).height,
            "oldest_queued_at": str(batch["created_at"].min()) if batch.height else "",
            "preview": dg.MetadataValue.md(markdown_table(batch.select("request_id", "conid", "symbol", "account"))),
        },
    )


@dg.asset(
    io_manager_key="batch_io_manager",
    kinds={"polars"},
    description=(
        "One polling read from IB for the whole batch: reqPositions once, then the portfolio of each account "
        "involved (reqAccountUpdates, one account at a time). No market-data request, no order."
    ),
    **_SYNC,
)
def ib_snapshot(
    context: dg.AssetExecutionContext, queued_positions: pl.DataFrame, ib: IBResource, lake: LakeResource
) -> dg.Output:
    if queued_positions.is_empty():
        return dg.Output(pl.DataFrame(schema=SNAPSHOT_RESULTS_SCHEMA), metadata={"items": 0, "ib_read_seconds": 0.0})
    settings = ib.settings()
    started = time.perf_counter()
    try:
        snapshot = ib.read_snapshot(queued_positions["conid"].unique().to_list(), context.run_id)
    except IBError as exc:
        released = lake.queue().release(queued_positions["request_id"].to_list(), claimed_by=context.run_id)
        context.log.error(f"IB read failed; {released} items released for a later run: {exc}")
        raise dg.Failure(
            description=str(exc),
            metadata={"gateway": f"{settings.host}:{settings.port}", "items_released": released},
        ) from exc
    results = snapshot_results(queued_positions, snapshot)
    failed = results.filter(pl.col("error").is_not_null()).height
    context.log.info(
        f"IB read for {queued_positions.height} items with client id {snapshot.client_id} "
        f"from accounts {', '.join(snapshot.accounts)}: {results.height - failed} found, {failed} not"
    )
    return dg.Output(
        results,
        metadata={
            "items": results.height,
            "found": results.height - failed,
            "not_found": failed,
            "client_id": snapshot.client_id,
            "accounts": ", ".join(sorted({a for a in results["account"].to_list() if a})),
            "ib_read_seconds": round(time.perf_counter() - started, 3),
        },
    )


@dg.asset(
    io_manager_key="delta_io_manager",
    metadata={"mode": "append", "partition_expr": "queued_at"},
    kinds={"polars", "delta"},
    description=(
        "Position history: one row per successful item, appended in one Delta commit per batch, stored by "
        "snapshot_date. Rows keep queued_at (the hour partition) and snapshot_at (positions are as of the run, "
        "also in a backfill: IB has no history). After the append, the batch is written back to position_queue."
    ),
    **_SYNC,
)
def position_updates(context: dg.AssetExecutionContext, ib_snapshot: pl.DataFrame, lake: LakeResource):  # type: ignore[no-untyped-def]
    run_id = context.run_id
    rows = position_update_rows(ib_snapshot, run_id)
    failed = failures(ib_snapshot)
    uri = lake.position_updates_uri()
    written_before = _already_written(lake, ib_snapshot)
    if written_before:
        context.log.warning(f"{len(written_before)} items were written by an earlier run that died; not again")
        rows = rows.filter(~pl.col("request_id").is_in(list(written_before)))
    succeeded = rows["request_id"].to_list() + sorted(written_before)
    failed = {request_id: error for request_id, error in failed.items() if request_id not in written_before}
    claimed_at: datetime | None = ib_snapshot["claimed_at"].min() if ib_snapshot.height else None  # type: ignore[assignment]
    queue = lake.queue()
    if ib_snapshot.height:
        # A run reported finished while its worker lives on (forced termination, max runtime) lost its claims:
        # the items may be another run's now, so write nothing for them.
        held = queue.held_by(ib_snapshot["request_id"].to_list(), run_id)
        lost = set(ib_snapshot["request_id"].to_list()) - held
        if lost:
            raise dg.Failure(
                description=f"{len(lost)} of {ib_snapshot.height} items are no longer claimed by this run (it was "
                f"reported finished and they were given back): nothing written, they are processed by another run",
                metadata={"lost_claims": len(lost)},
            )
        # The write fence: the sensor hands a finished run's claims on only MAX_RUNTIME_SECONDS after the claim, so
        # a run that appends no later than WRITE_FENCE_SECONDS after it cannot meet another writer of its items.
        since = queue.held_since(ib_snapshot["request_id"].to_list(), run_id)
        if since is None:
            raise dg.Failure(
                description="the batch's claims were given back while this run was writing: nothing written, they "
                "are processed by another run",
            )
        age = _seconds_since(since)
        if age > WRITE_FENCE_SECONDS:
            released = queue.release(ib_snapshot["request_id"].to_list(), claimed_by=run_id)
            raise dg.Failure(
                description=f"the batch was claimed {age:.0f} s ago, past the {WRITE_FENCE_SECONDS} s write fence: "
                f"nothing written, {released} items given back for another run (after {MAX_RUNTIME_SECONDS} s "
                "the sensor may hand a finished run's items to another run, so a late writer must not append)",
                metadata={"claim_age_seconds": round(age, 1), "items_released": released},
            )
    version_before = _table_version(uri)
    yield dg.Output(
        rows,
        metadata={
            "claimed": ib_snapshot.height,
            "succeeded": len(succeeded),
            "failed": len(failed),
            "rows_written": rows.height,
            "table_version": version_before + 1 if rows.height else version_before,
            "batch_seconds": round(_seconds_since(claimed_at), 3),
            "preview": dg.MetadataValue.md(markdown_table(rows.drop("run_id", "snapshot_date"))),
        },
    )
    # The IO manager has committed the append at this point: only now is it safe to mark the items done.
    marked = queue.mark_success(succeeded, claimed_by=run_id) if succeeded else 0
    marked_failed = queue.mark_failed_many(failed, claimed_by=run_id) if failed else 0
    version_after = _table_version(uri)
    if version_after != version_before + (1 if rows.height else 0):
        context.log.warning(f"another writer committed to position_updates meanwhile: now at version {version_after}")
    context.log.info(
        f"batch of {ib_snapshot.height}: {rows.height} rows appended (position_updates version {version_after}), "
        f"{marked} marked SUCCESS, {marked_failed} marked FAILED"
    )
    yield dg.AssetMaterialization(
        asset_key=position_queue.key,
        description=f"write-back of run {run_id}",
        metadata={
            "run_id": run_id,
            "marked_success": marked,
            "marked_failed": marked_failed,
            "position_updates_version": version_after,
            "failures": dg.MetadataValue.md(
                markdown_table(pl.DataFrame({"request_id": list(failed), "error": list(failed.values())}))
            ),
        },
    )
    if marked + marked_failed < ib_snapshot.height:
        raise dg.Failure(
            description=f"only {marked + marked_failed} of {ib_snapshot.height} items could be written back: the "
            f"others were taken from this run meanwhile; check position_updates for request_ids written twice",
            metadata={"marked_success": marked, "marked_failed": marked_failed},
        )


def _already_written(lake: LakeResource, results: pl.DataFrame) -> set[str]:
    """Rows that an earlier run of the same items committed before dying (only re-claimed items can have one)."""
    again = results.filter(pl.col("claims") > 1)
    if again.is_empty():
        return set()
    since = again["queued_at"].min().date()  # type: ignore[union-attr]
    return existing_request_ids(lake.root_uri, again["request_id"].to_list(), since)


def _table_version(uri: str) -> int:
    return DeltaTable(uri, storage_options=storage_options_for(uri)).version()


def _seconds_since(moment: datetime | None) -> float:
    return (datetime.now(UTC) - moment).total_seconds() if moment else 0.0
