"""The position queue: a Delta table producers append refresh requests to and pipeline runs claim batches from.

Invariants:
- every item is in exactly one status: PENDING -> PROCESSING (claim) -> SUCCESS | FAILED, or back to PENDING
  (release); a FAILED item with attempts < max_attempts is claimable again once its `retry_after` has passed
  (exponential backoff), so FAILED -> PROCESSING too;
- an item is held by at most one run: `claim` is a Delta MERGE whose predicate re-checks that the target row is
  still claimable (PENDING, or FAILED, under max_attempts and past retry_after), and Delta's optimistic commit
  refuses it when a concurrent commit rewrote a file it read, so two claimers never both get the same item (the
  loser re-reads and picks other items);
- `attempts` counts item-level failures only (claims and releases leave it alone); `claims` counts every claim, so
  an item with claims > 1 was held by an earlier run that may already have written its result;
- a run that passes `claimed_by` only changes items it still holds, so a stale run cannot overwrite a newer claim;
- every public write is one Delta commit, and input is validated in full before anything is written.

No Dagster here: assets and producer programs call this module directly.
"""

from __future__ import annotations

import csv
import logging
import numbers
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from position_pipeline.core import lake
from position_pipeline.core.terms import MAX_ATTEMPTS, Priority, QueueStatus

logger = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[str], None]
"""Hears one line at each step of a long operation (a large CSV, an import): the command prints them."""
PROGRESS_EVERY = 100_000
"""Rows read between two progress lines of a CSV enqueue."""

_INT64_MAX = 2**63 - 1
_INT32_MAX = 2**31 - 1
_INTEGER = re.compile(r"[+-]?\d+")
_ACCOUNT = re.compile(r"[A-Za-z0-9]+")
_ITEM_FIELDS = ("conid", "symbol", "priority", "account")
_MAX_PROBLEMS_SHOWN = 10

# Conflicts are expected under contention: each retry re-reads the table and picks again. deltalake 1.6.6 fails a
# MERGE when a concurrent commit added a file that could match the MERGE's target-only literal conditions (even an
# append declared blind: measured), so claims and marks state their status (and a claim its newest created_at) as
# literals. 20 attempts, jittered backoff capped at 0.5 s: at most 7.6 s asleep in all.
_COMMIT_ATTEMPTS = 20
_BACKOFF_BASE_S = 0.02
_BACKOFF_CAP_S = 0.5
# delta-rs re-commits by itself at a newer version when its conflict checker finds no overlap with the commits
# that landed first; anything else raises CommitFailedError into our retry loop.
_DELTA_COMMIT_RETRIES = 15

# A failed item waits backoff * 2**attempts (capped) before it is claimable again: 30 s, 1 min, 2 min, ... 1 h.
_RETRY_BACKOFF = timedelta(seconds=30)
_RETRY_MAX_BACKOFF = timedelta(hours=1)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class InputProblem:
    """One invalid field of one input row.

    `row` is the 0-based index of the item (for a CSV, of the data row; None for the header or a missing column),
    `line` the 1-based line of a CSV file.
    """

    row: int | None
    field: str
    problem: str
    line: int | None = None

    def __str__(self) -> str:
        if self.row is None:
            where = "input" if self.line is None else f"line {self.line}"
        else:
            where = f"row {self.row}" if self.line is None else f"row {self.row} (line {self.line})"
        return f"{where}: {self.field}: {self.problem}"


class QueueInputError(ValueError):
    """Input the queue refuses; raised before any write, so the table is unchanged."""

    def __init__(self, problems: Sequence[InputProblem]) -> None:
        self.problems = tuple(problems)
        shown = "; ".join(str(p) for p in self.problems[:_MAX_PROBLEMS_SHOWN])
        more = len(self.problems) - _MAX_PROBLEMS_SHOWN
        suffix = f"; and {more} more" if more > 0 else ""
        super().__init__(f"invalid queue input, nothing written: {shown}{suffix}")

    @property
    def row(self) -> int | None:
        """Index of the first invalid row (None when the problem is the header or the table's columns)."""
        return self.problems[0].row

    @property
    def field(self) -> str:
        """Field of the first problem."""
        return self.problems[0].field

    @property
    def line(self) -> int | None:
        """CSV line of the first problem, when the input was a CSV file."""
        return self.problems[0].line


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


ItemInput = Mapping[str, Any] | Sequence[Any]
"""A producer's item: {"conid": ..., "symbol": ...[, "priority": ...][, "account": ...]} or
(conid, symbol[, priority[, account]])."""


class PositionQueue:
    """The `position_queue` Delta table, safe to use from many processes at once.

    Nothing touches storage until the first call, and the first call creates the table if it is absent, so building
    a queue at Dagster definition load costs nothing. `storage_options` None: those `lake.storage_options_for`
    gives for the table's URI (none for a local folder; AWS_* variables for s3://).
    """

    def __init__(
        self,
        table_uri: str | os.PathLike[str],
        storage_options: dict[str, str] | None = None,
        *,
        commit_attempts: int = _COMMIT_ATTEMPTS,
    ) -> None:
        if commit_attempts < 1:
            raise ValueError(f"commit_attempts must be at least 1, got {commit_attempts}")
        self.table_uri = os.fspath(table_uri)
        self._storage_options = lake.resolve_storage_options(self.table_uri, storage_options)
        self._commit_attempts = commit_attempts
        self._schema_checked = False

    def __repr__(self) -> str:
        return f"PositionQueue({self.table_uri!r})"

    # Producers

    def insert(self, conid: int, symbol: str, priority: int = Priority.MONITORING, account: str | None = None) -> str:
        """Queue one position refresh; returns its request_id.

        `account` pins the IB account the position is read from (letters and digits, e.g. "DU1000001"); None lets the
        pipeline use any configured account.
        """
        return self.insert_many([(conid, symbol, priority, account)])[0]

    def insert_many(self, items: Iterable[ItemInput], *, queued_at: datetime | None = None) -> list[str]:
        """Queue many refreshes in one commit; returns their request_ids in input order.

        The whole batch is validated first: one bad item raises QueueInputError and nothing is written. `queued_at`
        stamps `created_at` (which decides the item's hour partition) for items queued elsewhere first; default now.
        """
        rows, problems = _validate_items(items)
        if problems:
            raise QueueInputError(problems)
        return self._append_new(rows, _aware("queued_at", queued_at) if queued_at is not None else None)

    def enqueue_csv(self, path: str | os.PathLike[str], progress: Progress | None = None) -> list[str]:
        """Queue the rows of a CSV file with a header `conid,symbol[,priority][,account]`, in one commit.

        Columns may come in any order; an empty priority means monitoring, an empty account any account. Parsed with
        the csv module rather than polars so that every error names the file's line number. A large file takes
        seconds (about 11 s for 1,000,000 rows): `progress` hears every PROGRESS_EVERY rows read and each phase.
        """
        report = progress or _silent
        rows, problems = _read_csv_items(path, report)
        if problems:
            raise QueueInputError(problems)
        report(f"{len(rows):,} rows valid; writing them in one commit")
        ids = self._append_new(rows)
        report(f"committed {len(ids):,} items")
        logger.info("enqueued %d items from %s", len(ids), os.fspath(path))
        return ids

    # Readers

    def get_batch(
        self, priority: int | None = Priority.MONITORING, limit: int = 50, status: str = QueueStatus.PENDING
    ) -> list[QueuedPosition]:
        """Up to `limit` items with `status` (and `priority`, None for any), oldest first. Reads only: claims nothing.

        Kept for the original producers and for inspection; a pipeline run must use `claim`, which is exclusive.
        """
        wanted = QueueStatus(status)
        frame = (
            self._scan(self._open())
            .filter(_priority_filter(priority) & (pl.col("status") == wanted.value))
            .sort(_QUEUE_ORDER)
            .head(_check_limit(limit))
            .collect()
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
        frame = self._held_scan(_check_request_ids(list(request_ids)), claimed_by).select("request_id").collect()
        return set(frame["request_id"].to_list())

    def held_since(self, request_ids: Iterable[str], claimed_by: str) -> datetime | None:
        """When run `claimed_by` claimed these items, if it still holds every one of them; None otherwise.

        Read from the table, not the run's memory, just before the append: the write fence's clock."""
        ids = _check_request_ids(list(request_ids))
        frame = (
            self._held_scan(ids, claimed_by)
            .select(pl.len().alias("held"), pl.col("claimed_at").min().alias("since"))
            .collect()
        )
        held, since = frame.row(0)
        return since if held == len(set(ids)) else None

    def read(self) -> pl.DataFrame:
        """The whole table in QUEUE_SCHEMA, oldest first; for checks and operators, not for hot paths."""
        return self._scan(self._open()).sort(_QUEUE_ORDER).collect()

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
        at, cap = utc_or_now(now), _check_max_attempts(max_attempts)
        scan = self._claimable_scan(self._open(), priority, at, cap, queued_from, queued_before)
        return int(scan.select(pl.len()).collect().item())

    def next_claimable_at(self, *, now: datetime | None = None, max_attempts: int = MAX_ATTEMPTS) -> datetime | None:
        """The `created_at` of the item `claim(None, ...)` would take first (priority 1 first, then oldest), or None.

        The sensor runs the partition of this item, so no item waits on the hour it was queued in.
        """
        at, cap = utc_or_now(now), _check_max_attempts(max_attempts)
        first = (
            self._claimable_scan(self._open(), None, at, cap).sort(_QUEUE_ORDER).head(1).select("created_at").collect()
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
        at, cap = utc_or_now(now), _check_max_attempts(max_attempts)
        value = (
            self._claimable_scan(self._open(), priority, at, cap).select(pl.col("created_at").min()).collect().item()
        )
        return value if isinstance(value, datetime) else None

    def claims_by_run(self) -> dict[str, int]:
        """Run id -> number of items that run holds PROCESSING; read only (status and claimed_by columns)."""
        frame = (
            self._scan(self._open())
            .filter(pl.col("status") == QueueStatus.PROCESSING.value)
            .group_by("claimed_by")
            .len()
            .collect()
        )
        return {str(run): int(n) for run, n in frame.iter_rows() if run is not None}

    # The pipeline

    def claim(
        self,
        priority: int | None = Priority.MONITORING,
        limit: int = 50,
        *,
        claimed_by: str,
        now: datetime | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        queued_from: datetime | None = None,
        queued_before: datetime | None = None,
    ) -> pl.DataFrame:
        """Move up to `limit` claimable items (oldest first) to PROCESSING for run `claimed_by`; returns them.

        Claimable: PENDING, or FAILED with `attempts < max_attempts` and `retry_after <= now`. Each claim adds one to
        `claims` and clears `retry_after`; `attempts` and the last error_message are kept. `queued_from` (inclusive)
        and `queued_before` (exclusive) restrict it to items created in that window (a partition's hours).

        One MERGE per attempt, matching `request_id` AND the eligibility conditions as literals. Delta commits
        optimistically: if another claim (or mark) rewrote a file this one read, the commit fails with
        CommitFailedError and we re-read and pick again, so no item is ever returned to two claimers. Two commits that
        change the same row both remove the file holding it, and Delta never lets both land (ConcurrentDeleteDelete),
        whatever the isolation level.
        """
        run = _check_run_id(claimed_by)
        limit = _check_limit(limit)
        attempts_cap = _check_max_attempts(max_attempts)
        at = utc_or_now(now)
        eligible_sql = _claimable_sql(at, attempts_cap)
        oldest_sql = f" AND t.created_at >= '{sql_timestamp(queued_from)}'" if queued_from is not None else ""

        def attempt() -> pl.DataFrame:
            dt = self._open()
            picked = (
                self._claimable_scan(dt, priority, at, attempts_cap, queued_from, queued_before)
                .sort(_QUEUE_ORDER)
                .head(limit)
                .select("request_id", "created_at")
                .collect()
            )
            if picked.is_empty():
                return pl.DataFrame(schema=lake.QUEUE_SCHEMA)
            newest = sql_timestamp(picked["created_at"].max())
            source = picked.select("request_id").with_columns(
                claimed_by=pl.lit(run, dtype=pl.String),
                claimed_at=pl.lit(at, dtype=lake.UTC_TIMESTAMP),
            )
            metrics = (
                dt.merge(
                    source.to_arrow(),
                    # The target row must still be claimable, checked on the row the MERGE rewrites. The literal
                    # conjuncts are redundant for the rows picked, but delta-rs checks conflicts with them: files
                    # appended since (newer, or in no claimable state) can then no longer fail this commit.
                    predicate=f"({eligible_sql}){oldest_sql} AND t.created_at <= '{newest}' "
                    "AND t.request_id = s.request_id",
                    source_alias="s",
                    target_alias="t",
                    streamed_exec=False,
                    commit_properties=self._commit_properties("claim", run, source.height),
                )
                .when_matched_update(
                    {
                        "status": f"'{QueueStatus.PROCESSING}'",
                        "claims": "t.claims + 1",
                        "retry_after": "NULL",
                        "claimed_by": "s.claimed_by",
                        "claimed_at": "s.claimed_at",
                        "updated_at": "s.claimed_at",
                    }
                )
                .execute()
            )
            # `dt` now holds the version this merge committed: read back exactly what it gave this run.
            claimed = (
                self._scan(dt)
                .filter(
                    pl.col("request_id").is_in(picked["request_id"].implode())
                    & (pl.col("status") == QueueStatus.PROCESSING.value)
                    & (pl.col("claimed_by") == run)
                    & (pl.col("claimed_at") == at)
                )
                .sort(_QUEUE_ORDER)
                .collect()
            )
            logger.info(
                "claim by %s: %d items (merge updated %d) at version %d",
                run,
                claimed.height,
                metrics.get("num_target_rows_updated", -1),
                dt.version(),
            )
            return claimed

        return self._retrying("claim", attempt)

    def mark_success(
        self, request_ids: str | Iterable[str], claimed_by: str | None = None, *, now: datetime | None = None
    ) -> int:
        """Mark items SUCCESS in one commit; returns how many changed.

        With `claimed_by`, only items still PROCESSING under that run change; others are left alone and logged.
        Without it (the original producers' call) the items change whatever their status.
        """
        ids = _check_request_ids(request_ids)
        source = pl.DataFrame({"request_id": ids}, schema={"request_id": pl.String})
        return self._mark(
            "mark_success",
            source,
            claimed_by,
            now,
            {"status": f"'{QueueStatus.SUCCESS}'", "error_message": "NULL", "retry_after": "NULL"},
        )

    def mark_failed(
        self, request_id: str, error_message: str, claimed_by: str | None = None, *, now: datetime | None = None
    ) -> int:
        """Mark one item FAILED (the design note's call); see `mark_failed_many`."""
        return self.mark_failed_many({request_id: error_message}, claimed_by, now=now)

    def mark_failed_many(
        self,
        errors: Mapping[str, str],
        claimed_by: str | None = None,
        *,
        now: datetime | None = None,
        backoff: timedelta = _RETRY_BACKOFF,
        max_backoff: timedelta = _RETRY_MAX_BACKOFF,
    ) -> int:
        """Mark items FAILED with their error in one commit, adding one to `attempts`; returns how many changed.

        Each item gets `retry_after = now + min(backoff * 2**attempts, max_backoff)`, from the attempts it had before
        this failure (30 s, 60 s, 120 s, ... by default): `claim` takes it again after that, while attempts stays
        under its `max_attempts`. The attempts are read in the same snapshot the MERGE runs on, and the MERGE also
        requires them unchanged, so the delay always matches the count it increments.

        `claimed_by` restricts the change to items this run still holds, as in `mark_success`.
        """
        if backoff < timedelta(0) or max_backoff < timedelta(0):
            raise ValueError(f"backoff and max_backoff must not be negative, got {backoff} and {max_backoff}")
        ids = _check_request_ids(list(errors))
        messages = [str(errors[i]) for i in ids]
        source = pl.DataFrame(
            {"request_id": ids, "error_message": messages},
            schema={"request_id": pl.String, "error_message": pl.String},
        )
        at = utc_or_now(now)

        def with_retry_after(dt: DeltaTable, source: pl.DataFrame) -> pl.DataFrame:
            current = (
                self._scan(dt)
                .filter(pl.col("request_id").is_in(source["request_id"].implode()))
                .select("request_id", "attempts")
                .collect()
            )
            joined = source.join(current, on="request_id", how="inner", maintain_order="left")
            delays = [retry_delay(a, backoff, max_backoff) for a in joined["attempts"].to_list()]
            return joined.with_columns(
                retry_after=pl.Series([at + d for d in delays], dtype=lake.UTC_TIMESTAMP),
            )

        return self._mark(
            "mark_failed",
            source,
            claimed_by,
            at,
            {
                "status": f"'{QueueStatus.FAILED}'",
                "error_message": "s.error_message",
                "attempts": "t.attempts + 1",
                "retry_after": "s.retry_after",
            },
            extra_conditions=["t.attempts = s.attempts"],
            prepare=with_retry_after,
        )

    def release(
        self, request_ids: str | Iterable[str], claimed_by: str | None = None, *, now: datetime | None = None
    ) -> int:
        """Put PROCESSING or FAILED items back to PENDING (claim cleared) in one commit; returns how many changed.

        For a run giving back what it could not process, or an operator recovering a dead run's claim or retrying
        failures. SUCCESS items are never reopened. `claimed_by` restricts it to one run's items.
        """
        ids = _check_request_ids(request_ids)
        source = pl.DataFrame({"request_id": ids}, schema={"request_id": pl.String})
        return self._mark(
            "release",
            source,
            claimed_by,
            now,
            _RELEASED,
            allowed=(QueueStatus.PROCESSING, QueueStatus.FAILED),
        )

    def requeue_failed(self, *, since: datetime | None = None, now: datetime | None = None) -> int:
        """Put FAILED items back to PENDING with attempts reset to 0, in one commit; returns how many changed.

        The operator's way back for items that used up `max_attempts` (or wait out a backoff): `claim` takes them
        again at once, with every attempt available. `since` (timezone-aware) keeps only items that failed at or
        after it (their updated_at). The claim and retry_after are cleared; error_message stays, so the last error is
        visible until `mark_success` clears it, and `claims` stays, so the pipeline still looks for a row an earlier
        run wrote.

        The FAILED items are looked up again on every retry, and the MERGE re-checks the status (and `since`) on the
        row it rewrites: an item a run claims or marks meanwhile stays that run's.
        """
        at = utc_or_now(now)
        start = None if since is None else _aware("since", since)
        conditions = [_status_in([QueueStatus.FAILED]), "t.request_id = s.request_id"]
        if start is not None:
            conditions.append(f"t.updated_at >= '{sql_timestamp(start)}'")

        def failed(dt: DeltaTable, _: pl.DataFrame) -> pl.DataFrame:
            return self._failed_scan(dt, start).select("request_id").collect()

        return self._merge_update(
            "requeue_failed",
            pl.DataFrame(schema={"request_id": pl.String}),
            conditions,
            {**_RELEASED, "attempts": "0"},
            None,
            at,
            prepare=failed,
            warn_unchanged=False,
        )

    def failed_items(self, since: datetime | None = None, limit: int | None = None) -> pl.DataFrame:
        """FAILED items in QUEUE_SCHEMA, newest failure first; read only.

        The items `requeue_failed` would take with the same `since` (an operator's dry run); `limit` keeps the
        newest. Ordered by updated_at (when it failed), then created_at and request_id, all descending.
        """
        start = None if since is None else _aware("since", since)
        count = None if limit is None else _check_limit(limit)
        scan = self._failed_scan(self._open(), start).sort(["updated_at", "created_at", "request_id"], descending=True)
        return (scan if count is None else scan.head(count)).collect()

    def _failed_scan(self, dt: DeltaTable, since: datetime | None) -> pl.LazyFrame:
        """FAILED rows, only those that failed at or after `since` when given: what `requeue_failed` takes."""
        condition = pl.col("status") == QueueStatus.FAILED.value
        if since is not None:
            condition &= pl.col("updated_at") >= since
        return self._scan(dt).filter(condition)

    def release_runs(
        self,
        run_ids: str | Iterable[str],
        *,
        claimed_before: datetime | None = None,
        now: datetime | None = None,
    ) -> int:
        """Put every item these runs hold PROCESSING back to PENDING in one commit; returns how many changed.

        For runs Dagster reports finished (succeeded, failed or canceled) that still hold claims: they died between
        claim and write-back. The claim is cleared and `attempts` left alone (the item did not fail). Each item is
        released only while it is still PROCESSING under that run, and the items are looked up again on every retry.
        `claimed_before` releases only claims made before it: a run "finished" while its worker lives on may still
        write until its write fence, so its claims must not go to another run before then.
        """
        runs = list(dict.fromkeys(_check_run_id(r) for r in ([run_ids] if isinstance(run_ids, str) else run_ids)))
        if not runs:
            return 0
        source = pl.DataFrame({"claimed_by": runs}, schema={"claimed_by": pl.String})
        conditions = [
            _status_in([QueueStatus.PROCESSING]),
            "t.request_id = s.request_id",
            "t.claimed_by = s.claimed_by",
        ]
        old_enough = pl.lit(True)
        if claimed_before is not None:
            cutoff = _aware("claimed_before", claimed_before)
            conditions.append(f"t.claimed_at < '{sql_timestamp(cutoff)}'")
            old_enough = pl.col("claimed_at") < cutoff

        def held_items(dt: DeltaTable, source: pl.DataFrame) -> pl.DataFrame:
            return (
                self._scan(dt)
                .filter(
                    (pl.col("status") == QueueStatus.PROCESSING.value)
                    & pl.col("claimed_by").is_in(source["claimed_by"].implode())
                    & old_enough
                )
                .select("request_id", "claimed_by")
                .collect()
            )

        return self._merge_update(
            "release_runs",
            source,
            conditions,
            _RELEASED,
            None,
            utc_or_now(now),
            prepare=held_items,
            warn_unchanged=False,
        )

    def release_stale(self, older_than: timedelta, *, now: datetime | None = None) -> int:
        """Put items claimed more than `older_than` ago and still PROCESSING back to PENDING; returns how many.

        Recovers the claims of runs that died between claim and mark. Each item is released only if its claim is
        still the one that was seen (same run, same claimed_at), so an item re-claimed meanwhile is left alone.
        """
        if older_than <= timedelta(0):
            raise ValueError(f"older_than must be positive, got {older_than}")
        at = utc_or_now(now)
        stale = (
            self._scan(self._open())
            .filter((pl.col("status") == QueueStatus.PROCESSING.value) & (pl.col("claimed_at") < at - older_than))
            .select("request_id", "claimed_by", "claimed_at")
            .collect()
        )
        if stale.is_empty():
            return 0
        return self._merge_update(
            "release_stale",
            stale,
            [
                _status_in([QueueStatus.PROCESSING]),
                "t.request_id = s.request_id",
                "t.claimed_by = s.claimed_by",
                "t.claimed_at = s.claimed_at",
            ],
            _RELEASED,
            None,
            at,
        )

    # Migration

    def import_legacy(
        self, source_uri: str, storage_options: dict[str, str] | None = None, progress: Progress | None = None
    ) -> int:
        """Adopt the original design's queue table at `source_uri`; returns how many items were added.

        Naive timestamps are taken as UTC. Items whose request_id is already here are skipped, so a second import
        adds nothing. Legacy PROCESSING items had no owner that survives the migration, so they come back PENDING.
        Every row is validated first; one bad row raises QueueInputError and nothing is written. `progress` hears
        each phase (read, validated, merged).
        """
        report = progress or _silent
        options = lake.resolve_storage_options(source_uri, storage_options)
        source = pl.scan_delta(DeltaTable(source_uri, storage_options=options)).collect()
        report(f"read {source.height:,} rows from {source_uri}")
        rows = _legacy_rows(source)
        report(f"{rows.height:,} rows valid; adding those not already here in one commit")

        def attempt() -> int:
            dt = self._open()
            present = (
                self._scan(dt)
                .select("request_id")
                .filter(pl.col("request_id").is_in(rows["request_id"].implode()))
                .collect()
            )
            new = rows.filter(~pl.col("request_id").is_in(present["request_id"].implode()))
            if new.is_empty():
                return 0
            # Insert-if-absent in one MERGE: a concurrent import of the same rows conflicts instead of duplicating.
            metrics = (
                dt.merge(
                    _to_arrow(new),
                    predicate="t.request_id = s.request_id",
                    source_alias="s",
                    target_alias="t",
                    commit_properties=self._commit_properties("import_legacy", None, new.height),
                )
                .when_not_matched_insert_all()
                .execute()
            )
            return int(metrics["num_target_rows_inserted"])

        added = self._retrying("import_legacy", attempt)
        report(f"committed {added:,} new items ({rows.height - added:,} were already here)")
        logger.info(
            "imported %d of %d legacy items from %s (%d already present)",
            added,
            rows.height,
            source_uri,
            rows.height - added,
        )
        return added

    # Internals

    def _append_new(self, rows: list[_Item], queued_at: datetime | None = None) -> list[str]:
        """Append validated items as PENDING in one commit.

        delta-rs re-commits an append by itself past other appends, but fails it when a claim or mark rewrote files
        meanwhile (ConcurrentDeleteRead in 1.6.6, measured); a failed append made nothing visible, so we retry it.
        """
        if not rows:
            return []
        frame = _new_items(rows, utc_or_now(queued_at))
        data = _to_arrow(frame)
        self._retrying(
            "insert",
            lambda: write_deltalake(
                self._open(),
                data,
                mode="append",
                commit_properties=self._commit_properties("insert", None, frame.height),
            ),
        )
        logger.info("queued %d items", frame.height)
        return frame["request_id"].to_list()

    def _mark(
        self,
        operation: str,
        source: pl.DataFrame,
        claimed_by: str | None,
        now: datetime | None,
        updates: dict[str, str],
        allowed: Sequence[QueueStatus] | None = None,
        *,
        extra_conditions: Sequence[str] = (),
        prepare: _Prepare | None = None,
    ) -> int:
        """Apply `updates` to the source's request_ids in one MERGE, guarded by the claim when one is given."""
        if source.is_empty():
            return 0
        run = None if claimed_by is None else _check_run_id(claimed_by)
        if run is not None:
            allowed = allowed or (QueueStatus.PROCESSING,)
        # Status first, as a literal: delta-rs checks conflicts against it, so producers' appends of PENDING items
        # cannot fail a mark.
        conditions = [] if allowed is None else [_status_in(allowed)]
        conditions.append("t.request_id = s.request_id")
        if run is not None:
            conditions.append("t.claimed_by = s.claimed_by")
        conditions.extend(extra_conditions)
        source = source.with_columns(claimed_by=pl.lit(run, dtype=pl.String))
        return self._merge_update(operation, source, conditions, updates, run, utc_or_now(now), prepare=prepare)

    def _merge_update(
        self,
        operation: str,
        source: pl.DataFrame,
        conditions: Sequence[str],
        updates: dict[str, str],
        run: str | None,
        at: datetime,
        *,
        prepare: _Prepare | None = None,
        warn_unchanged: bool = True,
    ) -> int:
        """One MERGE (retried on conflict) updating the target rows that match `conditions`; returns how many.

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
                    predicate=" AND ".join(conditions),
                    source_alias="s",
                    target_alias="t",
                    # Not streamed: delta-rs then derives a file-pruning predicate from the (small) source.
                    streamed_exec=False,
                    commit_properties=self._commit_properties(operation, run, rows.height),
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

    def _held_scan(self, ids: list[str], claimed_by: str) -> pl.LazyFrame:
        """The rows of `ids` still PROCESSING under run `claimed_by`, lazily."""
        return self._scan(self._open()).filter(
            pl.col("request_id").is_in(ids)
            & (pl.col("status") == QueueStatus.PROCESSING.value)
            & (pl.col("claimed_by") == claimed_by)
        )

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
        condition = _priority_filter(priority) & claimable_filter(at, max_attempts)
        if queued_from is not None:
            condition &= pl.col("created_at") >= _aware("queued_from", queued_from)
        if queued_before is not None:
            condition &= pl.col("created_at") < _aware("queued_before", queued_before)
        return self._scan(dt).filter(condition)

    def _commit_properties(self, operation: str, run: str | None, items: int) -> CommitProperties:
        """Commit metadata that makes the table history say which queue call wrote each version."""
        metadata: dict[str, Any] = {"queue_operation": operation, "queue_items": items}
        if run is not None:
            metadata["queue_run"] = run
        return CommitProperties(custom_metadata=metadata, max_commit_retries=_DELTA_COMMIT_RETRIES)

    def _retrying(self, operation: str, attempt: Callable[[], T]) -> T:
        return retry_on_conflict(operation, attempt, self._commit_attempts)


def retry_on_conflict(operation: str, attempt: Callable[[], T], attempts: int = _COMMIT_ATTEMPTS) -> T:
    """Run `attempt` (which must re-read the table) until it commits, with bounded jittered backoff.

    Every commit the pipeline makes outside the IO manager goes through this loop (queue claims and marks, upkeep);
    raises the last CommitFailedError after `attempts` tries.
    """
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except CommitFailedError as exc:
            if number == attempts:
                logger.error("%s: commit conflict, giving up after %d attempts", operation, number)
                raise
            delay = random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** (number - 1)))
            logger.info(
                "%s: commit conflict on attempt %d/%d, retrying in %.3f s: %s",
                operation,
                number,
                attempts,
                delay,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


_QUEUE_ORDER = ["priority", "created_at", "request_id"]

_RELEASED = {"status": f"'{QueueStatus.PENDING}'", "retry_after": "NULL", "claimed_by": "NULL", "claimed_at": "NULL"}
"""The MERGE updates that give an item back: PENDING, unclaimed; attempts and claims untouched."""

_Prepare = Callable[[DeltaTable, pl.DataFrame], pl.DataFrame]
"""Builds a MERGE source from the caller's rows and the snapshot the MERGE runs on."""


def retry_delay(
    attempts_before: int, backoff: timedelta = _RETRY_BACKOFF, max_backoff: timedelta = _RETRY_MAX_BACKOFF
) -> timedelta:
    """How long an item that had failed `attempts_before` times waits after this failure: backoff * 2**n, capped."""
    if attempts_before < 0:
        raise ValueError(f"attempts_before must not be negative, got {attempts_before}")
    # In whole microseconds: backoff * 2**n overflows timedelta (and a float) long before n reaches an int32's range.
    base, cap = backoff // _MICROSECOND, max_backoff // _MICROSECOND
    if base <= 0:
        return timedelta(0)
    if attempts_before >= cap.bit_length() or base << attempts_before >= cap:
        return max_backoff
    return backoff * 2**attempts_before


def claimable_filter(at: datetime, max_attempts: int) -> pl.Expr:
    """Rows `claim` may take at `at`: PENDING, or FAILED under `max_attempts` and past retry_after."""
    return (pl.col("status") == QueueStatus.PENDING.value) | (
        (pl.col("status") == QueueStatus.FAILED.value)
        & (pl.col("attempts") < max_attempts)
        & (pl.col("retry_after") <= at)
    )


def _claimable_sql(at: datetime, max_attempts: int) -> str:
    """`_claimable` on the MERGE target, with literal values only (delta-rs checks conflicts against them)."""
    return (
        f"t.status = '{QueueStatus.PENDING}' OR (t.status = '{QueueStatus.FAILED}'"
        f" AND t.attempts < {int(max_attempts)} AND t.retry_after <= '{sql_timestamp(at)}')"
    )


def _aware(name: str, moment: datetime) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {moment!r}")
    return moment.astimezone(UTC)


def _check_max_attempts(max_attempts: int) -> int:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 1 <= max_attempts <= _INT32_MAX:
        raise ValueError(f"max_attempts must be a positive int32, got {max_attempts!r}")
    return max_attempts


def _priority_filter(priority: int | None) -> pl.Expr:
    """Rows of `priority`, or every row for None."""
    if priority is None:
        return pl.lit(True)
    return pl.col("priority") == int(Priority(priority))


def _status_in(statuses: Sequence[QueueStatus]) -> str:
    """A target-only SQL condition on status (our own enum values, never user text)."""
    if len(statuses) == 1:
        return f"t.status = '{statuses[0]}'"
    return "t.status IN ({})".format(", ".join(f"'{s}'" for s in statuses))


def sql_timestamp(value: object) -> str:
    """A UTC timestamp literal with microseconds, as DataFusion compares it against a `timestamp` column."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise TypeError(f"expected an aware datetime, got {value!r}")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    return limit


def _check_run_id(claimed_by: str) -> str:
    if not isinstance(claimed_by, str) or not claimed_by.strip():
        raise ValueError(f"claimed_by must be a non-empty run id, got {claimed_by!r}")
    return claimed_by


def _check_request_ids(request_ids: str | Iterable[str]) -> list[str]:
    """Distinct request ids in input order; a single string is one id (never its characters)."""
    values = [request_ids] if isinstance(request_ids, str) else list(request_ids)
    problems = [
        InputProblem(i, "request_id", f"must be a non-empty string, got {v!r}")
        for i, v in enumerate(values)
        if not isinstance(v, str) or not v.strip()
    ]
    if problems:
        raise QueueInputError(problems)
    return list(dict.fromkeys(values))


def utc_or_now(now: datetime | None) -> datetime:
    """`now` as an aware UTC datetime (the current time for None); naive input is refused, not guessed."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    return now.astimezone(UTC)


def _to_arrow(frame: pl.DataFrame) -> pa.Table:
    """The frame in the table's Arrow schema; the cast refuses nulls in NOT NULL columns before Delta sees them."""
    return frame.select(lake.QUEUE_SCHEMA.names()).to_arrow().cast(lake.QUEUE_ARROW_SCHEMA)


class _Item(NamedTuple):
    """One validated producer item."""

    conid: int
    symbol: str
    priority: int
    account: str | None


def _new_items(rows: Sequence[_Item], now: datetime) -> pl.DataFrame:
    """PENDING rows for validated items; created_at rises 1 µs per item so oldest-first keeps the input order."""
    created = [now + timedelta(microseconds=i) for i in range(len(rows))]
    return pl.DataFrame(
        {
            "request_id": [uuid.uuid4().hex for _ in rows],
            "conid": [r.conid for r in rows],
            "symbol": [r.symbol for r in rows],
            "account": [r.account for r in rows],
            "priority": [r.priority for r in rows],
            "status": [QueueStatus.PENDING.value] * len(rows),
            "created_at": created,
            "updated_at": created,
            "error_message": [None] * len(rows),
            "attempts": [0] * len(rows),
            "claims": [0] * len(rows),
            "retry_after": [None] * len(rows),
            "claimed_by": [None] * len(rows),
            "claimed_at": [None] * len(rows),
        },
        schema=lake.QUEUE_SCHEMA,
    )


# Validation: every function below returns a value or raises _FieldError; callers turn those into InputProblems.


class _FieldError(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


def _parse_int(field: str, value: Any) -> int:
    """An integer from an int or a string of digits (CSV); floats and bools are refused rather than truncated."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _FieldError(field, "is missing")
    if isinstance(value, bool):
        raise _FieldError(field, f"must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    raise _FieldError(field, f"must be an integer, got {value!r}")


def _parse_conid(value: Any) -> int:
    conid = _parse_int("conid", value)
    if conid <= 0:
        raise _FieldError("conid", f"must be positive, got {conid}")
    if conid > _INT64_MAX:
        raise _FieldError("conid", f"does not fit in int64, got {conid}")
    return conid


def _parse_symbol(value: Any) -> str:
    if value is None:
        raise _FieldError("symbol", "is missing")
    if not isinstance(value, str):
        raise _FieldError("symbol", f"must be a string, got {value!r}")
    if not value.strip():
        raise _FieldError("symbol", "must not be blank")
    return value.strip()


def _parse_priority(value: Any) -> int:
    """1 (active) or 2 (monitoring); a missing priority means monitoring, as in the design note."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return int(Priority.MONITORING)
    priority = _parse_int("priority", value)
    if priority not in set(Priority):
        raise _FieldError("priority", f"must be 1 (active) or 2 (monitoring), got {priority}")
    return priority


def _parse_account(value: Any) -> str | None:
    """An IB account code (letters and digits, e.g. DU1000001), or None for any account; never stripped or guessed."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _FieldError("account", f"must be a string, got {value!r}")
    if not _ACCOUNT.fullmatch(value):
        raise _FieldError("account", f"must be letters and digits only (e.g. DU1000001), got {value!r}")
    return value


_ITEM_SHAPE = "(conid, symbol[, priority[, account]])"


def _item_fields(item: Any) -> dict[str, Any]:
    """The item's conid/symbol/priority/account values, unparsed; refuses shapes and keys the queue does not know."""
    if isinstance(item, Mapping):
        unknown = [k for k in item if k not in _ITEM_FIELDS]
        if unknown:
            raise _FieldError(str(unknown[0]), f"is not a queue field (expected {', '.join(_ITEM_FIELDS)})")
        return {name: item.get(name) for name in _ITEM_FIELDS}
    if isinstance(item, Sequence) and not isinstance(item, str | bytes):
        if not 2 <= len(item) <= len(_ITEM_FIELDS):
            raise _FieldError("item", f"expected {_ITEM_SHAPE}, got {len(item)} values")
        return dict(zip(_ITEM_FIELDS, item, strict=False))
    raise _FieldError("item", f"expected a dict or a {_ITEM_SHAPE} tuple, got {type(item).__name__}")


_PARSERS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("conid", _parse_conid),
    ("symbol", _parse_symbol),
    ("priority", _parse_priority),
    ("account", _parse_account),
)


def _validate_row(row: int, fields: Mapping[str, Any], line: int | None, problems: list[InputProblem]) -> _Item | None:
    """Parse one item's fields, recording every invalid field (not just the first)."""
    parsed: dict[str, Any] = {}
    for name, parse in _PARSERS:
        try:
            parsed[name] = parse(fields.get(name))
        except _FieldError as exc:
            problems.append(InputProblem(row, exc.field, exc.problem, line))
    if len(parsed) < len(_PARSERS):
        return None
    return _Item(**parsed)


def _validate_items(items: Iterable[ItemInput]) -> tuple[list[_Item], list[InputProblem]]:
    if isinstance(items, Mapping | str | bytes):
        raise TypeError("insert_many takes an iterable of items; use insert() for a single item")
    rows: list[_Item] = []
    problems: list[InputProblem] = []
    for index, item in enumerate(items):
        try:
            fields = _item_fields(item)
        except _FieldError as exc:
            problems.append(InputProblem(index, exc.field, exc.problem))
            continue
        parsed = _validate_row(index, fields, None, problems)
        if parsed is not None:
            rows.append(parsed)
    return rows, problems


def _read_csv_items(path: str | os.PathLike[str], progress: Progress) -> tuple[list[_Item], list[InputProblem]]:
    """Validated rows of a `conid,symbol[,priority][,account]` CSV; rows count from 0 after the header, lines from 1.

    A blank account cell means any account (null); a blank priority cell means monitoring.
    """
    rows: list[_Item] = []
    problems: list[InputProblem] = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return rows, [InputProblem(None, "header", f"file is empty; expected {_CSV_HEADER}", 1)]
        columns = [c.strip().lower() for c in header]
        for name in ("conid", "symbol"):
            if name not in columns:
                problems.append(InputProblem(None, name, "column is missing from the header", 1))
        for position, name in enumerate(columns):
            if name not in _ITEM_FIELDS:
                problems.append(InputProblem(None, name or "header", "is not a queue column", 1))
            elif name in columns[:position]:
                problems.append(InputProblem(None, name, "column is repeated", 1))
        if problems:
            return rows, problems
        index = 0
        start = reader.line_num + 1
        for record in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if len(record) > len(columns):
                problems.append(
                    InputProblem(index, "row", f"has {len(record)} fields, header has {len(columns)}", line)
                )
            else:
                cells: dict[str, Any] = dict(zip(columns, record, strict=False))
                if not (cells.get("account") or "").strip():
                    cells["account"] = None
                parsed = _validate_row(index, cells, line, problems)
                if parsed is not None:
                    rows.append(parsed)
            index += 1
            if index % PROGRESS_EVERY == 0:
                progress(f"read {index:,} rows (line {line:,})" + (f", {len(problems):,} bad" if problems else ""))
    return rows, problems


_CSV_HEADER = "conid,symbol[,priority][,account]"


def _silent(message: str) -> None:
    """The progress report of a caller that did not ask for one."""


_LEGACY_REQUIRED = ("request_id", "conid", "symbol", "priority", "status", "created_at", "updated_at")


def _parse_legacy_time(field: str, value: Any) -> datetime:
    """ISO-8601 text or a datetime; naive means UTC (the design note wrote naive times)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _FieldError(field, "is missing")
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _FieldError(field, f"is not an ISO-8601 timestamp: {value!r}") from None
    else:
        raise _FieldError(field, f"must be an ISO-8601 string, got {value!r}")
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _parse_legacy_status(value: Any) -> QueueStatus:
    text = value.strip().upper() if isinstance(value, str) else None
    if text not in set(QueueStatus):
        raise _FieldError("status", f"must be one of {', '.join(QueueStatus)}, got {value!r}")
    return QueueStatus(text)


def _legacy_rows(source: pl.DataFrame) -> pl.DataFrame:
    """The legacy table's rows in QUEUE_SCHEMA, or QueueInputError naming every bad row and field."""
    missing = [c for c in _LEGACY_REQUIRED if c not in source.columns]
    if missing:
        raise QueueInputError([InputProblem(None, c, "column is missing from the legacy table") for c in missing])
    problems: list[InputProblem] = []
    seen: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    for index, row in enumerate(source.iter_rows(named=True)):
        request_id = row["request_id"]
        if not isinstance(request_id, str) or not request_id.strip():
            problems.append(InputProblem(index, "request_id", f"must be a non-empty string, got {request_id!r}"))
        elif request_id in seen:
            problems.append(InputProblem(index, "request_id", f"duplicates row {seen[request_id]}"))
        else:
            seen[request_id] = index
        # The original design had no account: imported items may be read from any configured account.
        parsed = _validate_row(index, {**row, "account": None}, None, problems)
        values: dict[str, Any] = {}
        for field, parse in (
            ("status", _parse_legacy_status),
            ("created_at", lambda v: _parse_legacy_time("created_at", v)),
        ):
            try:
                values[field] = parse(row[field])
            except _FieldError as exc:
                problems.append(InputProblem(index, exc.field, exc.problem))
        updated_raw = row["updated_at"]
        try:
            # An absent updated_at costs nothing but precision: fall back to created_at rather than drop the item.
            values["updated_at"] = (
                values.get("created_at") if updated_raw is None else _parse_legacy_time("updated_at", updated_raw)
            )
        except _FieldError as exc:
            problems.append(InputProblem(index, exc.field, exc.problem))
        error_message = row.get("error_message")
        if error_message is not None and not isinstance(error_message, str):
            problems.append(InputProblem(index, "error_message", f"must be a string, got {error_message!r}"))
        if problems or parsed is None:
            continue
        status = values["status"]
        out.append(
            {
                "request_id": request_id,
                "conid": parsed.conid,
                "symbol": parsed.symbol,
                "account": parsed.account,
                "priority": parsed.priority,
                "status": QueueStatus.PENDING if status is QueueStatus.PROCESSING else status,
                "created_at": values["created_at"],
                "updated_at": values["updated_at"],
                "error_message": error_message,
                "attempts": 1 if status is QueueStatus.FAILED else 0,
                "claims": 0,
                "retry_after": None,
                "claimed_by": None,
                "claimed_at": None,
            }
        )
    if problems:
        raise QueueInputError(problems)
    return pl.DataFrame(out, schema=lake.QUEUE_SCHEMA)
