"""What position_updates appends for a batch, and the write-back to the queue once the append is committed.

Exactly once, per row key (request_id, account): a run appends a batch's rows only while it still holds every claim
and no later than the write fence, skips the keys position_updates already holds for its items (an earlier run that
died after its append, a queue log rolled back past a write-back), and marks
the items SUCCESS or FAILED only after its append. `plan_write` decides (or refuses) before the append;
`apply_write_back` marks the items after it. No Dagster here: the `position_updates` asset raises a refusal as the
run's failure and shows the metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

import polars as pl
import pyarrow.compute as pc
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.leases import MAX_RUNTIME_SECONDS, WRITE_FENCE_SECONDS
from position_pipeline.core.sync import failures, position_update_rows

if TYPE_CHECKING:
    from position_pipeline.core.queue import PositionQueue


@dataclass(frozen=True)
class WriteRefusal:
    """Why a run must not (or could not fully) write its batch: the run fails with this description and metadata."""

    description: str
    metadata: dict[str, int | float] = field(default_factory=dict)


@dataclass(frozen=True)
class WritePlan:
    """One batch's write: the rows to append, then the items to mark. Invariants: `succeeded` is the rows' request
    ids (each once, in row order) followed by the rest of `already_written` (sorted); no row's key is in the table
    already; `failed` holds none of `already_written`; when `refusal` is set the run writes nothing and
    `version_before` is None (the table is not read)."""

    run_id: str
    claimed: int
    claimed_at: datetime | None
    rows: pl.DataFrame
    succeeded: list[str]
    failed: dict[str, str]
    already_written: set[str]
    table_uri: str
    storage_options: lake.StorageOptions | None = None
    version_before: int | None = None
    refusal: WriteRefusal | None = None

    @property
    def version_planned(self) -> int:
        """position_updates' version before the append; a refused plan has none (ValueError)."""
        if self.version_before is None:
            raise ValueError(f"a refused write has no table version: {self.refusal}")
        return self.version_before

    def output_metadata(self) -> dict[str, int | float]:
        """What the UI shows for the append: counts, the table version it makes, the batch's age."""
        version = self.version_planned
        return {
            "claimed": self.claimed,
            "succeeded": len(self.succeeded),
            "failed": len(self.failed),
            "rows_written": self.rows.height,
            "table_version": version + 1 if self.rows.height else version,
            "batch_seconds": round(seconds_since(self.claimed_at), 3),
        }

    def failures_frame(self) -> pl.DataFrame:
        """The items marked FAILED, with why (request_id, error)."""
        return pl.DataFrame({"request_id": list(self.failed), "error": list(self.failed.values())})


@dataclass(frozen=True)
class WriteBack:
    """What the write-back marked, and the table version after it."""

    plan: WritePlan
    marked_success: int
    marked_failed: int
    version_after: int

    @property
    def other_writer(self) -> bool:
        """Another writer committed to position_updates between this run's version reads."""
        return self.version_after != self.plan.version_planned + (1 if self.plan.rows.height else 0)

    def summary(self) -> str:
        return (
            f"batch of {self.plan.claimed}: {self.plan.rows.height} rows appended (position_updates version "
            f"{self.version_after}), {self.marked_success} marked SUCCESS, {self.marked_failed} marked FAILED"
        )

    @property
    def refusal(self) -> WriteRefusal | None:
        """Set when items were taken from this run between its append and its write-back."""
        marked = self.marked_success + self.marked_failed
        if marked >= self.plan.claimed:
            return None
        return WriteRefusal(
            description=f"only {marked} of {self.plan.claimed} items could be written back: the others were taken "
            f"from this run meanwhile; check position_updates for request_ids written twice",
            metadata={"marked_success": self.marked_success, "marked_failed": self.marked_failed},
        )


def plan_write(
    results: pl.DataFrame,
    run_id: str,
    queue: PositionQueue,
    root_uri: str,
    storage_options: lake.StorageOptions | None = None,
) -> WritePlan:
    """The write of one batch's `results` (a frame in SNAPSHOT_RESULTS_SCHEMA) by run `run_id`, or its refusal.

    Creates position_updates if absent. Refuses when the run no longer holds every claim (it was reported finished
    and they were given back) and when the claims are older than the write fence; past the fence it gives the items
    back first, so another run takes them.
    """
    uri = lake.ensure_position_updates_table(root_uri, storage_options)
    rows = position_update_rows(results, run_id)
    written_before = _already_written(root_uri, results, storage_options)
    if written_before:
        done = pl.DataFrame(
            list(written_before), schema={"request_id": pl.String(), "account": pl.String()}, orient="row"
        )
        rows = rows.join(done, on=list(lake.POSITION_UPDATES_KEY), how="anti", maintain_order="left")
    written_ids = {request_id for request_id, _ in written_before}
    row_ids = rows["request_id"].unique(maintain_order=True).to_list()
    request_ids = results["request_id"].unique(maintain_order=True).to_list()
    plan = WritePlan(
        run_id=run_id,
        claimed=len(request_ids),
        claimed_at=results["claimed_at"].min() if results.height else None,  # type: ignore[arg-type]
        rows=rows,
        succeeded=row_ids + sorted(written_ids - set(row_ids)),
        failed={i: error for i, error in failures(results).items() if i not in written_ids},
        already_written=written_ids,
        table_uri=uri,
        storage_options=storage_options,
    )
    refusal = _claims_refusal(request_ids, run_id, queue) if request_ids else None
    if refusal is not None:
        return replace(plan, refusal=refusal)
    return replace(plan, version_before=_table_version(uri, storage_options))


def apply_write_back(plan: WritePlan, queue: PositionQueue) -> WriteBack:
    """Mark the planned items SUCCESS and FAILED; call only once the append is committed."""
    marked = queue.mark_success(plan.succeeded, claimed_by=plan.run_id) if plan.succeeded else 0
    marked_failed = queue.mark_failed_many(plan.failed, claimed_by=plan.run_id) if plan.failed else 0
    return WriteBack(plan, marked, marked_failed, _table_version(plan.table_uri, plan.storage_options))


def seconds_since(moment: datetime | None) -> float:
    """Seconds from `moment` (timezone-aware) to now; 0 for None."""
    return (datetime.now(UTC) - moment).total_seconds() if moment else 0.0


def _claims_refusal(request_ids: list[str], run_id: str, queue: PositionQueue) -> WriteRefusal | None:
    """Why the run must not append these items now, or None while it may."""
    # A run reported finished while its worker lives on (forced termination, max runtime) lost its claims:
    # the items may be another run's now, so write nothing for them.
    lost = set(request_ids) - queue.held_by(request_ids, run_id)
    if lost:
        return WriteRefusal(
            description=f"{len(lost)} of {len(request_ids)} items are no longer claimed by this run (it was "
            f"reported finished and they were given back): nothing written, they are processed by another run",
            metadata={"lost_claims": len(lost)},
        )
    # The write fence: the sensor hands a finished run's claims on only MAX_RUNTIME_SECONDS after the claim, so
    # a run that appends no later than WRITE_FENCE_SECONDS after it cannot meet another writer of its items.
    since = queue.held_since(request_ids, run_id)
    if since is None:
        return WriteRefusal(
            description="the batch's claims were given back while this run was writing: nothing written, they "
            "are processed by another run",
        )
    age = seconds_since(since)
    if age > WRITE_FENCE_SECONDS:
        released = queue.release(request_ids, claimed_by=run_id)
        return WriteRefusal(
            description=f"the batch was claimed {age:.0f} s ago, past the {WRITE_FENCE_SECONDS} s write fence: "
            f"nothing written, {released} items given back for another run (after {MAX_RUNTIME_SECONDS} s "
            "the sensor may hand a finished run's items to another run, so a late writer must not append)",
            metadata={"claim_age_seconds": round(age, 1), "items_released": released},
        )
    return None


def _already_written(
    root_uri: str, results: pl.DataFrame, storage_options: lake.StorageOptions | None
) -> set[tuple[str, str]]:
    """Row keys that an earlier run of the same items committed: looked up for every item, not only re-claimed
    ones, since a queue log rolled back past a write-back shows a written item as never claimed (`claims` 0).
    Reads the key columns of the partitions from the batch's oldest queued day on (benchmarks/written_check.py)."""
    if results.is_empty():
        return set()
    since = results["queued_at"].min().date()  # type: ignore[union-attr]
    return existing_row_keys(root_uri, results["request_id"].unique().to_list(), since, storage_options)


def existing_row_keys(
    root: str, request_ids: Iterable[str], since: date, storage_options: Mapping[str, str] | None = None
) -> set[tuple[str, str]]:
    """The (request_id, account) keys of position_updates rows of `request_ids` with snapshot_date >= `since`.

    Reads only the partitions from `since` on, and only the key columns. An absent table has no rows. A datetime
    `since` counts by its UTC day (naive: taken as UTC). `storage_options` None: those
    `lake.storage_options_for(root)` gives.
    """
    wanted = sorted({str(i) for i in ([request_ids] if isinstance(request_ids, str) else request_ids)})
    if not wanted:
        return set()
    if not isinstance(since, date):
        raise TypeError(f"since must be a date, got {since!r}")
    if isinstance(since, datetime):  # partitions are UTC days
        since = (since if since.tzinfo is None else since.astimezone(UTC)).date()
    dt = lake.open_existing(lake.table_uri(root, lake.POSITION_UPDATES_TABLE), storage_options)
    if dt is None:
        return set()
    pruning = [(lake.POSITION_UPDATES_PARTITION, ">=", since.isoformat())]
    dataset = dt.to_pyarrow_dataset(file_pruning_predicate=pruning)  # type: ignore[arg-type]
    found = dataset.to_table(columns=list(lake.POSITION_UPDATES_KEY), filter=pc.field("request_id").isin(wanted))
    ids, accounts = (found.column(c).to_pylist() for c in lake.POSITION_UPDATES_KEY)
    return {(str(r), str(a)) for r, a in zip(ids, accounts, strict=True)}


def _table_version(uri: str, storage_options: lake.StorageOptions | None) -> int:
    return DeltaTable(uri, storage_options=lake.resolve_storage_options(uri, storage_options)).version()
