"""The asset graph: position_queue (written by producers) -> queued_positions -> ib_snapshot -> position_updates.

Exactly once: a run claims its batch in the queue (PROCESSING, claimed_by = run id), appends the rows through the
Delta IO manager, and only then marks the items SUCCESS or FAILED. A step that fails in between gives the batch
back at once (`give_back`); a run that dies in between leaves its items PROCESSING, and the sensor gives them back
to PENDING on its next tick when the run's worker process is gone (`run_workers`), else once Dagster reports the run
finished. The next run skips writing the (request_id, account) rows an earlier run of the same item already
committed.

Dagster forbids cycles, so the write-back to the queue is recorded as a materialization of the `position_queue`
asset: its history in the UI lists every run's write-back.
"""

import time
import warnings
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from position_pipeline.core.ib_reader import IBError
from position_pipeline.core.lake import (
    POSITION_UPDATES_NULLABLE,
    POSITION_UPDATES_SCHEMA,
    POSITION_UPDATES_TABLE,
    QUEUE_NULLABLE,
    QUEUE_SCHEMA,
    QUEUE_TABLE,
    SNAPSHOT_RESULTS_SCHEMA,
)
from position_pipeline.core.sync import (
    accounts_read,
    given_back,
    missing_rates,
    pinned_accounts,
    position_moves,
    read_summary,
    snapshot_results,
)
from position_pipeline.core.terms import BACKFILL_BATCH_SIZE, MAX_ATTEMPTS, SENSOR_BATCH_SIZE
from position_pipeline.core.write_plan import WriteRefusal, apply_write_back, plan_write
from position_pipeline.defs.give_back import failing_with_cause, give_back_batch, step_failure
from position_pipeline.defs.metadata import markdown_table, table_definition_metadata
from position_pipeline.defs.partitions import queued_hour_partitions, queued_window
from position_pipeline.defs.reexecution import continue_parent_batch
from position_pipeline.defs.resources import IBResource, LakeResource
from position_pipeline.defs.run_workers import record_worker

GROUP = "positions"
OWNERS = ["team:trading-data"]
IB_READ_POOL = "ib_read"
"""The concurrency pool of ib_snapshot: the instance's default pool limit (1, dagster.yaml) makes IB reads of the
sensor's runs and of backfill runs take turns, as IB serves account updates to one client at a time."""
# Dagster flags backfill_policy as beta; it is what makes a backfill of many hours one run. Said once, here.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
_SYNC: dict[str, Any] = {
    "partitions_def": queued_hour_partitions,
    "backfill_policy": dg.BackfillPolicy.single_run(),
    "group_name": GROUP,
    "owners": OWNERS,
    "hooks": {give_back_batch},
}
"""Shared by the three sync assets: one hour partition per queued hour, a backfill of any range in one run, and
a failed step gives the run's batch back at once (`give_back`)."""


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
    metadata=table_definition_metadata(QUEUE_TABLE, QUEUE_SCHEMA, QUEUE_NULLABLE),
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
    record_worker(context)  # before the claim: the sensor can tell when this process is gone
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
    pool=IB_READ_POOL,
    description=(
        "One polling read from IB for the whole batch: reqPositions once, then the portfolio of each account "
        "involved (reqAccountUpdates, one account at a time). Per item, one result per account holding its contract "
        "(or its pinned account), with quantity and values from that account's download. No market-data request, "
        "no order."
    ),
    **_SYNC,
)
def ib_snapshot(
    context: dg.AssetExecutionContext, queued_positions: pl.DataFrame, ib: IBResource, lake: LakeResource
) -> dg.Output:
    queued_positions = continue_parent_batch(context, queued_positions, lake)
    if queued_positions.is_empty():
        return dg.Output(pl.DataFrame(schema=SNAPSHOT_RESULTS_SCHEMA), metadata={"items": 0, "ib_read_seconds": 0.0})
    settings = ib.settings()
    started = time.perf_counter()
    try:
        conids = queued_positions["conid"].unique().to_list()
        snapshot = ib.read_snapshot(conids, context.run_id, pinned_accounts(queued_positions))
    except IBError as exc:
        released = lake.queue().release(queued_positions["request_id"].to_list(), claimed_by=context.run_id)
        context.log.error(f"IB read failed; {released} items released for a later run: {exc}")
        raise dg.Failure(
            description=str(exc),
            metadata={"gateway": f"{settings.host}:{settings.port}", "items_released": released},
        ) from exc
    except Exception as exc:
        raise step_failure("the IB read", exc) from exc
    with failing_with_cause("building the results of the IB read"):
        back = given_back(queued_positions, snapshot)
        if back:  # accounts whose download failed: their items go back unjudged, the others' rows are written
            lake.queue().release(list(back), claimed_by=context.run_id)
            for account, why in snapshot.unavailable.items():
                context.log.warning(f"account {account} not read, its items given back for a later run: {why}")
        results = snapshot_results(queued_positions.filter(~pl.col("request_id").is_in(list(back))), snapshot)
        summary = {**read_summary(results, snapshot), "given_back": len(back)}
    for line in position_moves(snapshot):
        context.log.warning(f"position changed between reqPositions and the values' message: {line}")
    for line in missing_rates(results):
        context.log.warning(f"no base-currency values: {line}")
    context.log.info(
        f"IB read for {summary['items']} items with client id {snapshot.client_id} "
        f"from accounts {', '.join(snapshot.accounts)}: {summary['found']} found ({summary['rows']} rows, one per "
        f"holding account), {summary['not_found']} not; values up to {summary['values_age_seconds_max']} s old"
    )
    return dg.Output(
        results,
        metadata={
            **summary,
            "ib_read_seconds": round(time.perf_counter() - started, 3),
            "accounts_read": dg.MetadataValue.md(markdown_table(accounts_read(snapshot))),
        },
    )


@dg.asset(
    io_manager_key="delta_io_manager",
    metadata={
        "mode": "append",
        "partition_expr": "queued_at",
        **table_definition_metadata(POSITION_UPDATES_TABLE, POSITION_UPDATES_SCHEMA, POSITION_UPDATES_NULLABLE),
    },
    kinds={"polars", "delta"},
    description=(
        "Position history: one row per successful item and account holding its contract, appended in one Delta "
        "commit per batch, stored by snapshot_date. Rows keep queued_at (the hour partition), snapshot_at (the read; "
        "positions are as of the run, also in a backfill: IB has no history) and values_as_of (when IB computed the "
        "values). After the append, the batch is written back to position_queue."
    ),
    **_SYNC,
)
def position_updates(context: dg.AssetExecutionContext, ib_snapshot: pl.DataFrame, lake: LakeResource):  # type: ignore[no-untyped-def]
    queue = lake.queue()
    ib_snapshot = continue_parent_batch(context, ib_snapshot, lake)
    with failing_with_cause("planning the append to position_updates"):
        plan = plan_write(ib_snapshot, context.run_id, queue, lake.root_uri, lake.storage_options())
    if plan.already_written:
        context.log.warning(
            f"{len(plan.already_written)} items have rows from an earlier run that died; not written again"
        )
    _fail_if_refused(plan.refusal)
    yield dg.Output(
        plan.rows,
        metadata={
            **plan.output_metadata(),
            "preview": dg.MetadataValue.md(markdown_table(plan.rows.drop("run_id", "snapshot_date"))),
        },
    )
    # The IO manager has committed the append at this point: only now is it safe to mark the items done.
    with failing_with_cause("the write-back to the queue after the append"):
        written = apply_write_back(plan, queue)
    if written.other_writer:
        context.log.warning(
            f"another writer committed to position_updates meanwhile: now at version {written.version_after}"
        )
    context.log.info(written.summary())
    yield dg.AssetMaterialization(
        asset_key=position_queue.key,
        description=f"write-back of run {plan.run_id}",
        metadata={
            "run_id": plan.run_id,
            "marked_success": written.marked_success,
            "marked_failed": written.marked_failed,
            "position_updates_version": written.version_after,
            "failures": dg.MetadataValue.md(markdown_table(plan.failures_frame())),
        },
    )
    _fail_if_refused(written.refusal)


def _fail_if_refused(refusal: WriteRefusal | None) -> None:
    """A refused write fails the step with the refusal's description and metadata."""
    if refusal is not None:
        raise dg.Failure(description=refusal.description, metadata=refusal.metadata)
