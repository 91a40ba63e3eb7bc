"""Re-execution from failure of a sync run: the steps that run again continue with the parent run's batch.

The batch passes between the three sync assets through `batch_io_manager` (`RunBatchIOManager`), which keeps each
step's output in the run's folder of the instance's storage (`storage/<run_id>/<step>/result.parquet`, deleted with
the run by the run history purge), so a re-execution of a failed run from `ib_snapshot` or `position_updates`
loads what its parent claimed and read. Before using it, the re-executed step takes over those items
(`PositionQueue.take_over`): it goes on with the ones its parent still held or gave back, and drops those another
run took or finished meanwhile.
"""

from __future__ import annotations

import dagster as dg
import polars as pl

from position_pipeline.defs.resources import LakeResource


def continue_parent_batch(context: dg.AssetExecutionContext, batch: pl.DataFrame, lake: LakeResource) -> pl.DataFrame:
    """`batch` as this run may process it: unchanged in a first run; in a re-execution, only the items this run now
    holds, with the queue's new `claimed_at` and `claims` (so the write plan looks for rows the parent committed)."""
    parent = context.run.parent_run_id
    if parent is None or batch.is_empty():
        return batch
    held = lake.queue().take_over(batch["request_id"].unique().to_list(), from_run=parent, claimed_by=context.run_id)
    claims = held.select("request_id", "claimed_at", "claims")
    continued = (
        batch.drop("claimed_at", "claims")
        .join(claims, on="request_id", how="inner", maintain_order="left")
        .select(batch.columns)
    )
    context.log.info(
        f"re-execution of run {parent}: took over {claims.height} of its {batch['request_id'].n_unique()} items "
        "(the others were taken by another run or finished meanwhile)"
    )
    return continued
