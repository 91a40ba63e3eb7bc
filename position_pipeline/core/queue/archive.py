"""The queue archive: SUCCESS items moved out of `positions/position_queue` into `positions/position_queue_archive`.

Why: a claim reads the whole queue table, so its cost follows the rows the queue holds. Moving finished items out
once they are older than a retention period makes that cost follow the live queue, not its history. The archive has
the queue's schema, and each item is moved exactly once (see `archive_succeeded`), under any interleaving with
claims, marks and a crashed earlier round. Commits that conflict with concurrent queue writers are retried like
theirs (`retry_on_conflict`).
"""

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.queue.arguments import utc_or_now
from position_pipeline.core.queue.commits import retry_on_conflict, upkeep_commit_properties
from position_pipeline.core.queue.rules import merge_predicate, succeeded_before

logger = logging.getLogger(__name__)

DEFAULT_SUCCESS_RETENTION = timedelta(hours=24)
"""How long a SUCCESS item stays in the queue before upkeep archives it."""
ARCHIVE_BATCH = 100_000
"""Items moved per exactly-once round: bounds the memory and the size of each MERGE after a long pause."""


def archive_uri(root: str | os.PathLike[str]) -> str:
    """`{root}/positions/position_queue_archive`."""
    return lake.table_uri(root, lake.ARCHIVE_TABLE)


def archive_succeeded(
    root_uri: str,
    older_than: timedelta,
    *,
    now: datetime | None = None,
    storage_options: lake.StorageOptions | None = None,
    batch_size: int = ARCHIVE_BATCH,
) -> int:
    """Move SUCCESS items last updated before `now - older_than` from the queue to the archive; returns how many left.

    Exactly once, in two commits per round of up to `batch_size` items (oldest first):
    1. a MERGE into the archive on request_id inserts each item that is absent (and refreshes an archived copy whose
       updated_at differs, left by a crashed round whose item changed before this one);
    2. the items the archive is then read to hold, with that updated_at, are deleted from the queue by a MERGE that
       re-checks on the row it deletes: status SUCCESS, updated_at before the cutoff and equal to the archived one.
    A crash between the two leaves the items in both tables; the next call inserts nothing and deletes them. An item
    a concurrent call requeued or re-marked is never deleted, so nothing is lost; its archived copy is replaced when
    it succeeds and is archived again. Conflicts with concurrent claims and marks are retried like theirs.
    """
    if older_than <= timedelta(0):
        raise ValueError(f"older_than must be positive, got {older_than}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    options = lake.resolve_storage_options(root_uri, storage_options)
    cutoff = utc_or_now(now) - older_than
    queue_uri = lake.table_uri(root_uri, lake.QUEUE_TABLE)
    moved = 0
    while True:
        candidates = _archivable(queue_uri, cutoff, batch_size, options)
        if candidates is None or candidates.is_empty():
            break
        archived = _insert_into_archive(archive_uri(root_uri), candidates, options)
        deleted = _delete_archived(queue_uri, archived, cutoff, options)
        moved += deleted
        logger.info(
            "archived %d SUCCESS items updated before %s (%d selected, %d already archived by an earlier round)",
            deleted,
            cutoff.isoformat(),
            candidates.height,
            candidates.height - archived.inserted,
        )
        if candidates.height < batch_size or deleted == 0:
            break
    return moved


@dataclass(frozen=True, slots=True)
class _Archived:
    """What the archive holds of a round's candidates (request_id, updated_at), and how many the MERGE inserted."""

    rows: pl.DataFrame
    inserted: int


def _archivable(
    queue_uri: str, cutoff: datetime, limit: int, options: lake.StorageOptions | None
) -> pl.DataFrame | None:
    """Up to `limit` SUCCESS rows updated before `cutoff`, oldest first, whole; None when there is no queue."""
    dt = lake.open_existing(queue_uri, options)
    if dt is None:
        return None
    return (
        pl.scan_delta(dt)
        .select(lake.QUEUE_SCHEMA.names())
        .filter(succeeded_before(cutoff).expr())
        .sort("updated_at", "request_id")
        .head(limit)
        .collect()
    )


def _insert_into_archive(uri: str, rows: pl.DataFrame, options: lake.StorageOptions | None) -> _Archived:
    """Insert-if-absent on request_id, then read back which of `rows` the archive holds at the version committed."""
    source = rows.to_arrow().cast(lake.QUEUE_ARROW_SCHEMA)

    def attempt() -> _Archived:
        dt = _open_archive(uri, options)
        metrics = (
            dt.merge(
                source,
                predicate="t.request_id = s.request_id",
                source_alias="s",
                target_alias="t",
                streamed_exec=False,
                commit_properties=upkeep_commit_properties("archive_insert", rows.height),
            )
            .when_matched_update_all(predicate="t.updated_at <> s.updated_at")
            .when_not_matched_insert_all()
            .execute()
        )
        # `dt` now holds the version the MERGE committed: delete only what is seen there.
        held = (
            pl.scan_delta(dt)
            .select("request_id", "updated_at")
            .filter(pl.col("request_id").is_in(rows["request_id"].implode()))
            .collect()
        )
        return _Archived(held, int(metrics["num_target_rows_inserted"]))

    return retry_on_conflict("archive_insert", attempt)


def _delete_archived(queue_uri: str, archived: _Archived, cutoff: datetime, options: lake.StorageOptions | None) -> int:
    """Delete from the queue the archived items still SUCCESS, before `cutoff`, and unchanged since archived."""
    if archived.rows.is_empty():
        return 0
    source = archived.rows.to_arrow()
    # Literal conditions first: delta-rs checks concurrent commits against them (see PositionQueue.claim).
    predicate = merge_predicate(succeeded_before(cutoff), "request_id", "updated_at")

    def attempt() -> int:
        dt = DeltaTable(queue_uri, storage_options=options)
        metrics = (
            dt.merge(
                source,
                predicate=predicate,
                source_alias="s",
                target_alias="t",
                streamed_exec=False,
                commit_properties=upkeep_commit_properties("archive_delete", archived.rows.height),
            )
            .when_matched_delete()
            .execute()
        )
        return int(metrics["num_target_rows_deleted"])

    return retry_on_conflict("archive_delete", attempt)


def _open_archive(uri: str, options: lake.StorageOptions | None) -> DeltaTable:
    """The archive at its newest version, created first if absent; a table with other columns is refused."""
    dt = lake.open_or_create(
        uri,
        lake.QUEUE_ARROW_SCHEMA,
        name=lake.ARCHIVE_TABLE,
        description="SUCCESS queue items moved out of position_queue by table upkeep.",
        storage_options=options,
    )
    found = pl.scan_delta(dt).collect_schema()
    if found != lake.QUEUE_SCHEMA:
        raise ValueError(f"{uri} is not a queue archive: columns {dict(found)}, expected {dict(lake.QUEUE_SCHEMA)}")
    return dt
