"""The queue's Delta table itself: opening (and creating) it, scanning a version, and one retried MERGE update.

`QueueTable` is the base the queue's reads, enqueues, claims and legacy import build on; `PositionQueue` combines
them. Every method takes the table through `self._open()`, so each retry (and a test) sees the version it opens.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.queue import rules
from position_pipeline.core.queue.arguments import aware
from position_pipeline.core.queue.commits import COMMIT_ATTEMPTS, T, queue_commit_properties, retry_on_conflict

logger = logging.getLogger(__name__)

Prepare = Callable[[DeltaTable, pl.DataFrame], pl.DataFrame]
"""Builds a MERGE source from the caller's rows and the snapshot the MERGE runs on."""


class QueueTable:
    """The `position_queue` Delta table, safe to use from many processes at once.

    Nothing touches storage until the first call, and the first call creates the table if it is absent, so building
    a queue at Dagster definition load costs nothing. `storage_options` None: those `lake.storage_options_for`
    gives for the table's URI (none for a local folder; AWS_* variables for s3://). The table is named by
    `table_uri` or, as the design note's producers spell it, `delta_lake_path=`: exactly one of the two.
    """

    def __init__(
        self,
        table_uri: str | os.PathLike[str] | None = None,
        storage_options: dict[str, str] | None = None,
        *,
        delta_lake_path: str | os.PathLike[str] | None = None,
        commit_attempts: int = COMMIT_ATTEMPTS,
    ) -> None:
        if commit_attempts < 1:
            raise ValueError(f"commit_attempts must be at least 1, got {commit_attempts}")
        self.table_uri = table_location(table_uri, delta_lake_path)
        self._storage_options = lake.resolve_storage_options(self.table_uri, storage_options)
        self._commit_attempts = commit_attempts
        self._schema_checked = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.table_uri!r})"

    def _open(self) -> DeltaTable:
        """The table at its latest version, created first if absent (with the declared schema)."""
        dt = lake.open_or_create(
            self.table_uri,
            lake.QUEUE_ARROW_SCHEMA,
            name=lake.QUEUE_TABLE,
            description="Position refresh requests; one row per request, in exactly one status.",
            storage_options=self._storage_options,
        )
        if not self._schema_checked:
            found = pl.scan_delta(dt).collect_schema()
            if found != lake.QUEUE_SCHEMA:
                raise ValueError(
                    f"{self.table_uri} is not a position queue table: columns {dict(found)}, "
                    f"expected {dict(lake.QUEUE_SCHEMA)}"
                )
            self._schema_checked = True
        return dt

    def _scan(self, dt: DeltaTable) -> pl.LazyFrame:
        """A lazy read of exactly the version `dt` holds; collect before `dt` changes version."""
        return pl.scan_delta(dt).select(lake.QUEUE_SCHEMA.names())

    def _claimable_scan(
        self,
        dt: DeltaTable,
        priority: int | None,
        at: datetime,
        max_attempts: int,
        queued_from: datetime | None = None,
        queued_before: datetime | None = None,
    ) -> pl.LazyFrame:
        """The rows `claim` may take at `at`, lazily: polars reads only the columns the caller then selects."""
        window = rules.queued_between(
            None if queued_from is None else aware("queued_from", queued_from),
            None if queued_before is None else aware("queued_before", queued_before),
        )
        rule = rules.with_priority(priority) & rules.claimable(at, max_attempts) & window
        return self._scan(dt).filter(rule.expr())

    def _failed_scan(self, dt: DeltaTable, since: datetime | None) -> pl.LazyFrame:
        """FAILED rows, only those that failed at or after `since` when given: what `requeue_failed` takes."""
        return self._scan(dt).filter(rules.failed_since(since).expr())

    def _retrying(self, operation: str, attempt: Callable[[], T]) -> T:
        return retry_on_conflict(operation, attempt, self._commit_attempts)

    def _merge_update(
        self,
        operation: str,
        source: pl.DataFrame,
        predicate: str,
        updates: dict[str, str],
        run: str | None,
        at: datetime,
        *,
        prepare: Prepare | None = None,
        warn_unchanged: bool = True,
    ) -> int:
        """One MERGE (retried on conflict) updating the target rows that match `predicate`; returns how many.

        `prepare`, when given, builds the MERGE source from `source` and the snapshot the MERGE runs on (again on
        every retry); an empty prepared source commits nothing. `warn_unchanged` logs a warning when fewer rows
        changed than `source` has (off when `source` does not hold one row per item).
        """
        asked = source.height

        def attempt() -> int:
            dt = self._open()
            rows = source if prepare is None else prepare(dt, source)
            if rows.is_empty():
                return 0
            rows = rows.with_columns(updated_at=pl.lit(at, dtype=lake.UTC_TIMESTAMP))
            metrics = (
                dt.merge(
                    rows.to_arrow(),
                    predicate=predicate,
                    source_alias=rules.SOURCE,
                    target_alias=rules.TARGET,
                    # Not streamed: delta-rs then derives a file-pruning predicate from the (small) source.
                    streamed_exec=False,
                    commit_properties=queue_commit_properties(operation, run, rows.height),
                )
                .when_matched_update({**updates, "updated_at": "s.updated_at"})
                .execute()
            )
            return int(metrics["num_target_rows_updated"])

        changed = self._retrying(operation, attempt)
        if warn_unchanged and changed < asked:
            logger.warning(
                "%s: %d of %d items left unchanged (unknown, finished, or not held by %s)",
                operation,
                asked - changed,
                asked,
                run or "the run that was asked",
            )
        else:
            logger.info("%s: %d items%s", operation, changed, f" by {run}" if run else "")
        return changed


def table_location(table_uri: str | os.PathLike[str] | None, delta_lake_path: str | os.PathLike[str] | None) -> str:
    """The queue table's URI from either spelling of it; exactly one must be given."""
    if (table_uri is None) == (delta_lake_path is None):
        raise TypeError("give the queue table as table_uri or as delta_lake_path=, exactly one of them")
    location = table_uri if table_uri is not None else delta_lake_path
    assert location is not None
    return os.fspath(location)


def to_arrow(frame: pl.DataFrame) -> pa.Table:
    """The frame in the table's Arrow schema; the cast refuses nulls in NOT NULL columns before Delta sees them."""
    return frame.select(lake.QUEUE_SCHEMA.names()).to_arrow().cast(lake.QUEUE_ARROW_SCHEMA)
