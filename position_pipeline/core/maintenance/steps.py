"""One maintenance step on one Delta table: its state, its small files, compaction, checkpoint and vacuum.

Each step re-reads the table per attempt and retries a commit that lost to a concurrent writer
(`retry_on_conflict`); one that keeps losing, or an absent table, is reported as skipped (`UpkeepStep.skipped`)
rather than raised, so the next upkeep run tries again.
"""

import logging
import math
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError

from position_pipeline.core import lake
from position_pipeline.core.queue import retry_on_conflict
from position_pipeline.core.queue.commits import upkeep_commit_properties
from position_pipeline.core.table_stats import TableState, table_state

logger = logging.getLogger(__name__)

DEFAULT_VACUUM_RETENTION = timedelta(days=7)
MIN_VACUUM_RETENTION = timedelta(hours=1)
"""A reader holding an older snapshot (a claim, the IO manager, a positions query) needs the files compaction replaced
for as long as it reads; no run lasts an hour, so nothing may be vacuumed sooner."""
MAX_VACUUM_RETENTION = timedelta(days=7)
"""Checkpoints keep the record of a replaced file for the tables' delta.deletedFileRetentionDuration (7 days, the
default): past that, a full vacuum sees the file as never committed and goes by its age alone, so a longer retention
would not be honoured."""

MAINTENANCE_ATTEMPTS = 5
"""Tries for a compaction or vacuum commit that conflicts with concurrent writers, before it is reported skipped."""

HOT_TARGET_SIZE = 4 * 1024 * 1024
"""Target file size (bytes) for compacting tables still being written: the queue, and position_updates' open day.

Compaction leaves a file of at least the target alone, so each run rewrites at most about this much per partition
however long the day, and the queue's items sit in files of at most this size: a claim or mark rewrites the one
holding its rows. With 4 MiB (of input) a compacted queue file holds about 65,000 rows (2 MB), so the 24 hours of
SUCCESS items the queue keeps at the sensor's full rate (864,000) fit in about 13 files, and a claim rewrites at most
65,000 rows. Closed days and the archive, which nothing writes any more, get delta-rs's default (100 MB)."""

_DELTA_TARGET_SIZE = 100 * 1024 * 1024
"""delta-rs's compaction target when neither the call nor the table (delta.targetFileSize) sets one."""

PartitionFilters = Sequence[tuple[str, str, Any]]
"""delta-rs partition filters: (column, operator, value)."""


@dataclass(frozen=True, slots=True)
class UpkeepStep:
    """What one step did to one table; `skipped` says why it did nothing (absent table, writers kept winning)."""

    table: str
    step: str
    seconds: float
    before: TableState | None = None
    after: TableState | None = None
    details: dict[str, int] = field(default_factory=dict)
    skipped: str | None = None


def closed_days(today: date | None = None) -> list[tuple[str, str, Any]]:
    """position_updates' partition filter for the days before `today` (UTC): the day being appended is left alone."""
    day = today if today is not None else datetime.now(UTC).date()
    return [(lake.POSITION_UPDATES_PARTITION, "<", day)]


def open_days(today: date | None = None) -> list[tuple[str, str, Any]]:
    """position_updates' partition filter for `today` (UTC) and later: the days still being appended to."""
    day = today if today is not None else datetime.now(UTC).date()
    return [(lake.POSITION_UPDATES_PARTITION, ">=", day)]


def small_files(
    table_uri: str,
    target_size: int = HOT_TARGET_SIZE,
    *,
    partition_filters: PartitionFilters | None = None,
    storage_options: lake.StorageOptions | None = None,
) -> int:
    """The most files under `target_size` that one partition (of those matching `partition_filters`) holds; 0 for no
    table. Reads the log only."""
    dt = lake.open_existing(table_uri, storage_options)
    if dt is None:
        return 0
    return _most_small_files(dt, target_size, list(partition_filters) if partition_filters else None)


def _most_small_files(dt: DeltaTable, target_size: int, filters: list[tuple[str, str, Any]] | None) -> int:
    actions = pl.DataFrame(dt.get_add_actions(flatten=True))
    if actions.is_empty():
        return 0
    small = actions.filter(pl.col("size_bytes") < target_size)
    for column, op, value in filters or []:
        small = small.filter(_COMPARISONS[op](pl.col(f"partition.{column}"), pl.lit(value)))
    partitions = [c for c in small.columns if c.startswith("partition.")]
    if small.is_empty() or not partitions:
        return small.height
    return int(small.group_by(partitions).len()["len"].max())  # type: ignore[arg-type]


_COMPARISONS: dict[str, Callable[[pl.Expr, pl.Expr], pl.Expr]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
"""The partition filter operators upkeep uses, on the add actions' typed partition values."""


def compact(
    table_uri: str,
    *,
    partition_filters: PartitionFilters | None = None,
    target_size: int | None = None,
    min_small_files: int | None = None,
    attempts: int = MAINTENANCE_ATTEMPTS,
    storage_options: lake.StorageOptions | None = None,
) -> UpkeepStep:
    """Rewrite the table's small files (only in partitions matching `partition_filters`) into few large ones.

    Files of at least `target_size` (default: delta-rs's, 100 MB) are left as they are. With `min_small_files`, the
    table is left alone (no commit) unless one of its partitions holds that many files under `target_size`.
    The rows are the same before and after (Delta marks the commit dataChange=false). A concurrent MERGE that
    rewrote a file being compacted fails the commit; it is retried `attempts` times, then reported skipped.
    """
    options = lake.resolve_storage_options(table_uri, storage_options)
    filters = list(partition_filters) if partition_filters else None

    def attempt() -> dict[str, Any]:
        dt = DeltaTable(table_uri, storage_options=options)
        if min_small_files is not None:
            found = _most_small_files(dt, target_size or _DELTA_TARGET_SIZE, filters)
            if found < min_small_files:
                return {"numFilesRemoved": 0, "numFilesAdded": 0, "partitionsOptimized": 0}
        return _compact_once(dt, filters, target_size)

    return _maintain(
        table_uri,
        "compact",
        attempt,
        attempts,
        options,
        lambda m: {
            "files_removed": int(m["numFilesRemoved"]),
            "files_added": int(m["numFilesAdded"]),
            "partitions_optimized": int(m["partitionsOptimized"]),
        },
    )


def _compact_once(
    dt: DeltaTable, filters: list[tuple[str, str, Any]] | None, target_size: int | None
) -> dict[str, Any]:
    """One compaction of the version `dt` holds (tests interpose a concurrent writer here)."""
    return dt.optimize.compact(
        partition_filters=filters,
        target_size=target_size,
        commit_properties=upkeep_commit_properties("compact", 0),
    )


def checkpoint(table_uri: str, *, storage_options: lake.StorageOptions | None = None) -> UpkeepStep:
    """Write a checkpoint at the newest version and delete log files past the log retention (30 days by default).

    Readers then replay one Parquet checkpoint plus the commits after it instead of every commit. A checkpoint is a
    file of its own: it never conflicts with writers.
    """
    options = lake.resolve_storage_options(table_uri, storage_options)

    def attempt() -> dict[str, Any]:
        dt = DeltaTable(table_uri, storage_options=options)
        dt.create_checkpoint()
        dt.cleanup_metadata()
        return {"checkpoint_version": dt.version()}

    return _maintain(table_uri, "checkpoint", attempt, 1, options, lambda m: m)


def vacuum(
    table_uri: str,
    retention: timedelta = DEFAULT_VACUUM_RETENTION,
    *,
    attempts: int = MAINTENANCE_ATTEMPTS,
    storage_options: lake.StorageOptions | None = None,
) -> UpkeepStep:
    """Delete files no version younger than `retention` references (1 hour to 7 days, rounded up to whole hours).

    Full mode: besides the files compaction and MERGEs replaced (tombstones), it deletes files never committed
    (written by a MERGE or compaction that lost a commit conflict) once they are older than `retention`, which no
    writer still working can be. Files replaced less than `retention` ago stay, whatever their age.
    """
    if not MIN_VACUUM_RETENTION <= retention <= MAX_VACUUM_RETENTION:
        raise ValueError(
            f"vacuum retention must be from {MIN_VACUUM_RETENTION} to {MAX_VACUUM_RETENTION}, got {retention}"
        )
    hours = math.ceil(retention / timedelta(hours=1))
    options = lake.resolve_storage_options(table_uri, storage_options)

    def attempt() -> dict[str, Any]:
        dt = DeltaTable(table_uri, storage_options=options)
        removed = dt.vacuum(
            retention_hours=hours,
            dry_run=False,
            enforce_retention_duration=False,
            full=True,
            commit_properties=upkeep_commit_properties("vacuum", 0),
        )
        return {"files_deleted": len(removed), "retention_hours": hours}

    return _maintain(table_uri, "vacuum", attempt, attempts, options, lambda m: m)


def _maintain(
    table_uri: str,
    step: str,
    attempt: Callable[[], dict[str, Any]],
    attempts: int,
    options: lake.StorageOptions | None,
    details: Callable[[dict[str, Any]], dict[str, int]],
) -> UpkeepStep:
    """Run one upkeep step with retries; an absent table or a step that keeps losing conflicts is a skip."""
    started = time.perf_counter()
    before = table_state(table_uri, options)
    if before is None:
        return UpkeepStep(table_uri, step, time.perf_counter() - started, skipped="no table")
    try:
        metrics = retry_on_conflict(step, attempt, attempts)
    except CommitFailedError as exc:
        reason = f"lost to concurrent writers {attempts} times: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        logger.warning("%s of %s skipped: %s", step, table_uri, reason)
        return UpkeepStep(table_uri, step, time.perf_counter() - started, before, before, skipped=reason)
    after = table_state(table_uri, options)
    return UpkeepStep(table_uri, step, time.perf_counter() - started, before, after, details(metrics))
