"""What the sensor, the status command, the checks and the backfill ask the queue: reads only, never a commit.

Each read opens the table's latest version and, where it can, lets polars read only the columns it needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from position_pipeline.core.queue import rules
from position_pipeline.core.queue.arguments import aware, check_limit, check_max_attempts, check_request_ids, utc_or_now
from position_pipeline.core.queue.table import QueueTable
from position_pipeline.core.terms import MAX_ATTEMPTS, Priority, QueueStatus


@dataclass(frozen=True, slots=True)
class QueuedPosition:
    """One queue item: the design note's record (with UTC times), then the account, claims and retry_after columns."""

    request_id: str
    conid: int
    symbol: str
    priority: int
    status: QueueStatus
    created_at: datetime
    updated_at: datetime
    error_message: str | None = None
    attempts: int = 0
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    account: str | None = None
    claims: int = 0
    retry_after: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> QueuedPosition:
        """Build from a row of the queue table (a dict from `DataFrame.iter_rows(named=True)`)."""
        return cls(
            request_id=row["request_id"],
            conid=row["conid"],
            symbol=row["symbol"],
            priority=row["priority"],
            status=QueueStatus(row["status"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            error_message=row["error_message"],
            attempts=row["attempts"],
            claimed_by=row["claimed_by"],
            claimed_at=row["claimed_at"],
            account=row["account"],
            claims=row["claims"],
            retry_after=row["retry_after"],
        )


class QueueReads(QueueTable):
    """The queue's readers."""

    def get_batch(
        self, priority: int | None = Priority.MONITORING, limit: int = 50, status: str = QueueStatus.PENDING
    ) -> list[QueuedPosition]:
        """Up to `limit` items with `status` (and `priority`, None for any), oldest first. Reads only: claims nothing.

        Kept for the original producers and for inspection. Unlike the design note's QueueWorker loop, nothing here
        takes the items: two callers get the same batch, and the items stay PENDING. The pipeline, not a producer,
        claims (`claim`, exclusive: one MERGE per batch), so a producer that wants an item refreshed only inserts it.
        """
        wanted = rules.with_priority(priority) & rules.status_in(QueueStatus(status))
        frame = (
            self._scan(self._open()).filter(wanted.expr()).sort(rules.QUEUE_ORDER).head(check_limit(limit)).collect()
        )
        return [QueuedPosition.from_row(row) for row in frame.iter_rows(named=True)]

    def counts(self) -> dict[QueueStatus, int]:
        """Number of items per status, every status present (0 when none)."""
        frame = self._scan(self._open()).group_by("status").len().collect()
        found = dict(zip(frame["status"].to_list(), frame["len"].to_list(), strict=True))
        return {status: int(found.get(status.value, 0)) for status in QueueStatus}

    def version(self) -> int:
        """The table's current Delta version: it changes with every enqueue, claim and mark."""
        return self._open().version()

    def held_by(self, request_ids: Iterable[str], claimed_by: str) -> set[str]:
        """Which of these items are still PROCESSING under run `claimed_by` (a run checks before it writes)."""
        frame = self._held_scan(check_request_ids(list(request_ids)), claimed_by).select("request_id").collect()
        return set(frame["request_id"].to_list())

    def held_since(self, request_ids: Iterable[str], claimed_by: str) -> datetime | None:
        """When run `claimed_by` claimed these items, if it still holds every one of them; None otherwise.

        Read from the table, not the run's memory, just before the append: the write fence's clock."""
        ids = check_request_ids(list(request_ids))
        frame = (
            self._held_scan(ids, claimed_by)
            .select(pl.len().alias("held"), pl.col("claimed_at").min().alias("since"))
            .collect()
        )
        held, since = frame.row(0)
        return since if held == len(set(ids)) else None

    def read(self) -> pl.DataFrame:
        """The whole table in QUEUE_SCHEMA, oldest first; for checks and operators, not for hot paths."""
        return self._scan(self._open()).sort(rules.QUEUE_ORDER).collect()

    def claimable_count(
        self,
        priority: int | None = Priority.MONITORING,
        *,
        now: datetime | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        queued_from: datetime | None = None,
        queued_before: datetime | None = None,
    ) -> int:
        """How many items `claim` could take now (same eligibility and window); read only.

        Reads only the status, priority, attempts and retry_after (and created_at for a window) columns.
        """
        at, cap = utc_or_now(now), check_max_attempts(max_attempts)
        scan = self._claimable_scan(self._open(), priority, at, cap, queued_from, queued_before)
        return int(scan.select(pl.len()).collect().item())

    def next_claimable_at(self, *, now: datetime | None = None, max_attempts: int = MAX_ATTEMPTS) -> datetime | None:
        """The `created_at` of the item `claim(None, ...)` would take first (priority 1 first, then oldest), or None.

        The sensor runs the partition of this item, so no item waits on the hour it was queued in.
        """
        at, cap = utc_or_now(now), check_max_attempts(max_attempts)
        first = (
            self._claimable_scan(self._open(), None, at, cap)
            .sort(rules.QUEUE_ORDER)
            .head(1)
            .select("created_at")
            .collect()
        )
        return first["created_at"][0] if first.height else None

    def oldest_claimable_at(
        self,
        priority: int | None = Priority.MONITORING,
        *,
        now: datetime | None = None,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> datetime | None:
        """The `created_at` of the oldest item `claim` could take now, or None when there is none; read only."""
        at, cap = utc_or_now(now), check_max_attempts(max_attempts)
        value = (
            self._claimable_scan(self._open(), priority, at, cap).select(pl.col("created_at").min()).collect().item()
        )
        return value if isinstance(value, datetime) else None

    def claims_by_run(self) -> dict[str, int]:
        """Run id -> number of items that run holds PROCESSING; read only (status and claimed_by columns)."""
        frame = (
            self._scan(self._open())
            .filter(rules.status_in(QueueStatus.PROCESSING).expr())
            .group_by("claimed_by")
            .len()
            .collect()
        )
        return {str(run): int(n) for run, n in frame.iter_rows() if run is not None}

    def failed_items(self, since: datetime | None = None, limit: int | None = None) -> pl.DataFrame:
        """FAILED items in QUEUE_SCHEMA, newest failure first; read only.

        The items `requeue_failed` would take with the same `since` (an operator's dry run); `limit` keeps the
        newest. Ordered by updated_at (when it failed), then created_at and request_id, all descending.
        """
        start = None if since is None else aware("since", since)
        count = None if limit is None else check_limit(limit)
        scan = self._failed_scan(self._open(), start).sort(["updated_at", "created_at", "request_id"], descending=True)
        return (scan if count is None else scan.head(count)).collect()

    def _held_scan(self, ids: list[str], claimed_by: str) -> pl.LazyFrame:
        """The rows of `ids` still PROCESSING under run `claimed_by`, lazily."""
        return self._scan(self._open()).filter(pl.col("request_id").is_in(ids) & rules.held_by(claimed_by).expr())
