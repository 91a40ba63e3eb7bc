"""What the queue holds and what the pipeline last wrote, read from a lake for an operator. Reads only.

`collect_status` reads both tables of a lake (neither is created when absent: an absent table counts as empty) and
returns a `Status`; `position-pipeline status` (cli/status.py) prints it as text or JSON.

Consistency: the queue figures this module computes itself (depth, oldest PENDING, failures) come from one Delta
version of the queue, the one reported. Claimability and the claims per run come from the queue's own methods, so
eligibility is the same as `PositionQueue.claim`'s; each of those reads the newest version. If the queue changed
while it was read, `Status.queue_changed` says so and the figures may disagree by what changed.

Polars, deltalake and the queue are imported when a status is collected, so importing this module (the CLI's parser
does, through cli/status.py) stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from position_pipeline.core.terms import MAX_ATTEMPTS, Priority, QueueStatus
from position_pipeline.core.time_text import iso, utc

RECENT_FAILURES = 5
"""How many of the most recently failed items a status lists."""


@dataclass(frozen=True, slots=True)
class TableStats:
    """One Delta table as found: absent tables have no version, no files and no rows."""

    uri: str
    exists: bool
    version: int | None
    files: int
    rows: int

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.uri,
            "exists": self.exists,
            "version": self.version,
            "files": self.files,
            "rows": self.rows,
        }


@dataclass(frozen=True, slots=True)
class FailedItem:
    """A FAILED queue item: when it last failed (its updated_at), how often, and why."""

    request_id: str
    conid: int
    symbol: str
    priority: int
    attempts: int
    failed_at: datetime
    retry_after: datetime | None
    error_message: str | None

    @classmethod
    def from_queue_row(cls, row: Mapping[str, Any]) -> FailedItem:
        """A FAILED row of the queue table; its failure time is its updated_at."""
        return cls(
            request_id=row["request_id"],
            conid=row["conid"],
            symbol=row["symbol"],
            priority=row["priority"],
            attempts=row["attempts"],
            failed_at=row["updated_at"],
            retry_after=row["retry_after"],
            error_message=row["error_message"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "conid": self.conid,
            "symbol": self.symbol,
            "priority": self.priority,
            "attempts": self.attempts,
            "failed_at": iso(self.failed_at),
            "retry_after": iso(self.retry_after),
            "error_message": self.error_message,
        }


@dataclass(frozen=True, slots=True)
class Batch:
    """The newest run in position_updates: its snapshot time, how many rows it appended, and the time of its oldest
    values (IB's account update time; None for rows written before it was stored)."""

    run_id: str
    snapshot_at: datetime
    rows: int
    values_as_of: datetime | None = None

    @property
    def values_age_s(self) -> float | None:
        """How old the oldest values were when the run read them (snapshot_at - values_as_of)."""
        return None if self.values_as_of is None else (self.snapshot_at - self.values_as_of).total_seconds()


@dataclass(frozen=True, slots=True)
class Status:
    """The lake's state at `now`. `depth` maps every status to every priority (1, 2 and any other found) to a count."""

    root: str
    now: datetime
    queue: TableStats
    position_updates: TableStats
    queue_changed: bool
    depth: dict[str, dict[int, int]]
    claimable: int
    oldest_pending_at: datetime | None
    oldest_claimable_at: datetime | None
    max_attempts: int
    failed_by_attempts: dict[int, int]
    recent_failures: list[FailedItem]
    processing_by_run: dict[str, int]
    last_batch: Batch | None

    @property
    def priorities(self) -> list[int]:
        return sorted({p for row in self.depth.values() for p in row})

    @property
    def by_status(self) -> dict[str, int]:
        return {status: sum(row.values()) for status, row in self.depth.items()}

    @property
    def by_priority(self) -> dict[int, int]:
        return {p: sum(row.get(p, 0) for row in self.depth.values()) for p in self.priorities}

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    @property
    def oldest_pending_age_s(self) -> float | None:
        return self.age_s(self.oldest_pending_at)

    @property
    def oldest_claimable_age_s(self) -> float | None:
        return self.age_s(self.oldest_claimable_at)

    def age_s(self, at: datetime | None) -> float | None:
        """Seconds from `at` to `now` (negative when `at` is later: a writer's clock ahead of ours)."""
        return None if at is None else (self.now - at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        """One JSON-ready dict: timestamps as UTC ISO-8601 strings, integer keys (priorities, attempts) as strings."""
        depth: dict[str, dict[str, int]] = {
            status: {**{str(p): row.get(p, 0) for p in self.priorities}, "total": sum(row.values())}
            for status, row in self.depth.items()
        }
        depth["total"] = {**{str(p): n for p, n in self.by_priority.items()}, "total": self.total}
        batch = self.last_batch
        return {
            "lake": self.root,
            "now": iso(self.now),
            "queue": {
                **self.queue.to_json(),
                "changed_while_reading": self.queue_changed,
                "total": self.total,
                "by_status": self.by_status,
                "by_priority": {str(p): n for p, n in self.by_priority.items()},
                "depth": depth,
                "claimable": self.claimable,
                "oldest_pending": _moment(self.oldest_pending_at, self.oldest_pending_age_s),
                "oldest_claimable": _moment(self.oldest_claimable_at, self.oldest_claimable_age_s),
                "max_attempts": self.max_attempts,
                "failed_by_attempts": {str(a): n for a, n in self.failed_by_attempts.items()},
                "recent_failures": [f.to_json() for f in self.recent_failures],
                "processing_by_run": dict(self.processing_by_run),
            },
            "position_updates": {
                **self.position_updates.to_json(),
                "last_batch": None
                if batch is None
                else {
                    "run_id": batch.run_id,
                    "snapshot_at": iso(batch.snapshot_at),
                    "age_seconds": self.age_s(batch.snapshot_at),
                    "rows": batch.rows,
                    "values_as_of": iso(batch.values_as_of),
                    "values_age_seconds": batch.values_age_s,
                },
            },
        }


def collect_status(root: str, *, now: datetime | None = None, max_attempts: int = MAX_ATTEMPTS) -> Status:
    """Read the queue and position_updates under lake `root` (a folder or an object-store URI); writes nothing.

    `now` (timezone-aware; default the current time) is the moment ages and claimability are computed for.
    `max_attempts` is the sync job's (SyncConfig.max_attempts): FAILED items with that many attempts are not claimable.
    """
    from position_pipeline.core import lake

    at = utc(now)
    queue_uri = lake.table_uri(root, lake.QUEUE_TABLE)
    updates_uri = lake.table_uri(root, lake.POSITION_UPDATES_TABLE)
    queue_part = _queue_status(queue_uri, at, max_attempts)
    updates, batch = _updates_status(updates_uri)
    return Status(
        root=root, now=at, position_updates=updates, last_batch=batch, max_attempts=max_attempts, **queue_part
    )


def _queue_status(uri: str, at: datetime, max_attempts: int) -> dict[str, Any]:
    import polars as pl

    from position_pipeline.core import lake
    from position_pipeline.core.queue import PositionQueue

    statuses = [str(s) for s in QueueStatus]
    dt = lake.open_existing(uri)
    if dt is None:
        return {
            "queue": TableStats(uri, False, None, 0, 0),
            "queue_changed": False,
            "depth": {status: dict.fromkeys(map(int, Priority), 0) for status in statuses},
            "claimable": 0,
            "oldest_pending_at": None,
            "oldest_claimable_at": None,
            "failed_by_attempts": {},
            "recent_failures": [],
            "processing_by_run": {},
        }
    version = dt.version()
    # The queue's own reads first: its first read checks the table's columns and refuses a table that is no queue.
    queue = PositionQueue(uri)
    claimable = queue.claimable_count(None, now=at, max_attempts=max_attempts)
    oldest_claimable = queue.oldest_claimable_at(None, now=at, max_attempts=max_attempts)
    processing_by_run = dict(sorted(queue.claims_by_run().items()))

    scan = pl.scan_delta(dt)  # the version loaded above
    failed = scan.filter(pl.col("status") == QueueStatus.FAILED)
    depth_frame, attempts_frame, recent_frame = pl.collect_all(
        [
            scan.group_by("status", "priority").agg(items=pl.len(), oldest=pl.col("created_at").min()),
            failed.group_by("attempts").agg(items=pl.len()).sort("attempts"),
            failed.sort(["updated_at", "created_at", "request_id"], descending=True)
            .head(RECENT_FAILURES)
            .select(
                "request_id", "conid", "symbol", "priority", "attempts", "updated_at", "retry_after", "error_message"
            ),
        ]
    )
    # Every status and priority gets a cell; a value outside the queue's (never written by it) gets its own.
    found = depth_frame.select("status", "priority")
    statuses += sorted(set(found["status"].to_list()) - set(statuses))
    priorities = sorted(set(map(int, Priority)) | set(found["priority"].to_list()))
    depth = {status: dict.fromkeys(priorities, 0) for status in statuses}
    oldest_pending: datetime | None = None
    for status, priority, items, oldest in depth_frame.iter_rows():
        depth[status][priority] = int(items)
        if status == QueueStatus.PENDING and (oldest_pending is None or oldest < oldest_pending):
            oldest_pending = oldest
    return {
        "queue": TableStats(uri, True, version, len(dt.file_uris()), int(depth_frame["items"].sum())),
        "queue_changed": queue.version() != version,
        "depth": depth,
        "claimable": claimable,
        "oldest_pending_at": oldest_pending,
        "oldest_claimable_at": oldest_claimable,
        "failed_by_attempts": {int(a): int(n) for a, n in attempts_frame.iter_rows()},
        "recent_failures": [FailedItem.from_queue_row(r) for r in recent_frame.iter_rows(named=True)],
        "processing_by_run": processing_by_run,
    }


def _updates_status(uri: str) -> tuple[TableStats, Batch | None]:
    """position_updates' version, files, rows, and its newest run (greatest snapshot_at, then run_id).

    A run's rows share one snapshot_at and so one snapshot_date partition: only the newest partition is read, and of
    it only run_id, snapshot_at and values_as_of. The row count reads no column (Parquet footers only).
    """
    import polars as pl

    from position_pipeline.core import lake

    dt = lake.open_existing(uri)
    if dt is None:
        return TableStats(uri, False, None, 0, 0), None
    days = [p.get(lake.POSITION_UPDATES_PARTITION) or "" for p in dt.partitions()]
    newest = max((d for d in days if d), default=None)
    scan = lake.with_desk_values(pl.scan_delta(dt))
    queries = [scan.select(pl.len())]
    if newest is not None:
        queries.append(
            scan.filter(pl.col(lake.POSITION_UPDATES_PARTITION) == date.fromisoformat(newest))
            .group_by("run_id")
            .agg(snapshot_at=pl.col("snapshot_at").max(), rows=pl.len(), values_as_of=pl.col("values_as_of").min())
            .sort(["snapshot_at", "run_id"], descending=True)
            .head(1)
        )
    frames = pl.collect_all(queries)
    batch = None
    if len(frames) > 1 and frames[1].height:
        run_id, snapshot_at, rows, values_as_of = frames[1].row(0)
        batch = Batch(str(run_id), snapshot_at, int(rows), values_as_of)
    return TableStats(uri, True, dt.version(), len(dt.file_uris()), int(frames[0].item())), batch


def _moment(at: datetime | None, age_s: float | None) -> dict[str, Any] | None:
    return None if at is None else {"at": iso(at), "age_seconds": age_s}
