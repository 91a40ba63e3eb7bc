"""Table upkeep: keep the queue small and every table's files few, without racing the pipeline's writers.

Why: a claim reads the whole queue table, and the Delta IO manager reads every add action after each append, so both
slow down as history piles up. Every sync batch adds a file to each table (a sensor at 5 s: 720 an hour), so waiting
an hour to compact is too long. `table_upkeep` runs in two sizes:

- every 3 minutes, compaction only, and only when a table has a partition with COMPACT_MIN_SMALL_FILES small files
  (the schedule looks first and launches no run otherwise): the small files of what is still being written (the
  queue, position_updates' open day) are merged into files of up to HOT_TARGET_SIZE. Files that reach that size are
  left alone, so each compaction rewrites a bounded amount, and a claim or mark (which rewrites every file holding a
  row it changes) rewrites one such file, never the whole queue;
- at minute 23 of every hour, the full upkeep:
  1. moves SUCCESS items older than a retention period from `positions/position_queue` to
     `positions/position_queue_archive` (same schema), exactly once: a claim's cost then follows the live queue, not
     its history;
  2. compacts small files (as above, and position_updates' closed days and the archive into large files), writes a
     checkpoint and drops expired log files, and vacuums files unreferenced for longer than a retention period.

Racing the writers: the job carries the sync job's `pipeline: position_sync` tag, so the instance's tag concurrency
limit (dagster.yaml, limit 1) never runs it beside a sync run; those wait behind it. Producers, the sensor and backfill
runs (tagged `position_backfill`) may still write the queue meanwhile, so every commit here is retried on conflict
(re-read, jittered backoff: queue.py's loop). Archiving is safe under any interleaving; a compaction or vacuum that
keeps losing is reported as skipped rather than failing the run, and the next run tries again.
"""

import logging
import math
import operator
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import dagster as dg
import polars as pl
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import CommitFailedError
from pydantic import Field

from position_pipeline.core import lake

# queue.py's commit-conflict retry and time helpers are private there; they are reused, not copied (the lead is asked
# to make them public).
from position_pipeline.core.queue import QueueStatus, retry_on_conflict, sql_timestamp, utc_or_now
from position_pipeline.defs.resources import LakeResource

logger = logging.getLogger(__name__)

T = TypeVar("T")


DEFAULT_SUCCESS_RETENTION = timedelta(hours=24)
DEFAULT_VACUUM_RETENTION = timedelta(days=7)
MIN_VACUUM_RETENTION = timedelta(hours=1)
"""A reader holding an older snapshot (a claim, the IO manager, a positions query) needs the files compaction replaced
for as long as it reads; no run lasts an hour, so nothing may be vacuumed sooner."""
MAX_VACUUM_RETENTION = timedelta(days=7)
"""Checkpoints keep the record of a replaced file for the tables' delta.deletedFileRetentionDuration (7 days, the
default): past that, a full vacuum sees the file as never committed and goes by its age alone, so a longer retention
would not be honoured."""

ARCHIVE_BATCH = 100_000
"""Items moved per exactly-once round: bounds the memory and the size of each MERGE after a long pause."""
MAINTENANCE_ATTEMPTS = 5
"""Tries for a compaction or vacuum commit that conflicts with concurrent writers, before it is reported skipped."""

HOT_TARGET_SIZE = 4 * 1024 * 1024
"""Target file size (bytes) for compacting tables still being written: the queue, and position_updates' open day.

Compaction leaves a file of at least the target alone, so each run rewrites at most about this much per partition
however long the day, and the queue's items sit in files of at most this size: a claim or mark rewrites the one
holding its rows. With 4 MiB (of input) a compacted queue file holds about 65,000 rows (2 MB), so the 24 hours of
SUCCESS items the queue keeps at the sensor's full rate (864,000) fit in about 13 files, and a claim rewrites at most
65,000 rows. Closed days and the archive, which nothing writes any more, get delta-rs's default (100 MB)."""
COMPACT_MIN_SMALL_FILES = 10
"""Compaction between full upkeeps starts once a partition holds this many files under HOT_TARGET_SIZE."""

UPKEEP_CRON = "2-59/3 * * * *"
"""Every 3 minutes (minute 2, 5, ... 59: 36 sensor batches apart at most), through minute FULL_UPKEEP_MINUTE."""
FULL_UPKEEP_MINUTE = 23
"""The tick of each hour that runs the full upkeep (archive, compaction, checkpoint, vacuum), away from :00."""

UPKEEP_JOB_NAME = "table_upkeep"
UPKEEP_MAX_RUNTIME_SECONDS = 600
"""Upkeep holds the sync runs' concurrency slot, so it must stay short: run monitoring fails it after this."""


def archive_uri(root: str | os.PathLike[str]) -> str:
    """`{root}/positions/position_queue_archive`."""
    return lake.table_uri(root, lake.ARCHIVE_TABLE)


# Archiving


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
        .filter((pl.col("status") == QueueStatus.SUCCESS.value) & (pl.col("updated_at") < cutoff))
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
                commit_properties=_commit_properties("archive_insert", rows.height),
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
    # Literal conditions first: delta-rs checks concurrent commits against them (see queue.py's claim).
    predicate = (
        f"t.status = '{QueueStatus.SUCCESS}' AND t.updated_at < '{sql_timestamp(cutoff)}' "
        "AND t.request_id = s.request_id AND t.updated_at = s.updated_at"
    )

    def attempt() -> int:
        dt = DeltaTable(queue_uri, storage_options=options)
        metrics = (
            dt.merge(
                source,
                predicate=predicate,
                source_alias="s",
                target_alias="t",
                streamed_exec=False,
                commit_properties=_commit_properties("archive_delete", archived.rows.height),
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


def _commit_properties(operation: str, items: int) -> CommitProperties:
    """Commit metadata that makes each table's history say which upkeep step wrote a version."""
    return CommitProperties(custom_metadata={"upkeep_operation": operation, "upkeep_items": items})


# Files: compaction, checkpoint, vacuum


@dataclass(frozen=True, slots=True)
class TableState:
    """A table's size at one version: data files, their bytes and rows (from the log, no data read)."""

    version: int
    files: int
    bytes: int
    rows: int


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


def table_state(table_uri: str, storage_options: lake.StorageOptions | None = None) -> TableState | None:
    """The table's newest version, file count, bytes and rows; None when there is no table."""
    dt = lake.open_existing(table_uri, storage_options)
    return None if dt is None else _state(dt)


def _state(dt: DeltaTable) -> TableState:
    actions = pl.DataFrame(dt.get_add_actions(flatten=True)).select("size_bytes", "num_records")
    return TableState(
        version=dt.version(),
        files=actions.height,
        bytes=int(actions["size_bytes"].sum()),
        rows=int(actions["num_records"].sum()),
    )


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
    partition_filters: Sequence[tuple[str, str, Any]] | None = None,
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
    partition_filters: Sequence[tuple[str, str, Any]] | None = None,
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


_DELTA_TARGET_SIZE = 100 * 1024 * 1024
"""delta-rs's compaction target when neither the call nor the table (delta.targetFileSize) sets one."""


def _compact_once(
    dt: DeltaTable, filters: list[tuple[str, str, Any]] | None, target_size: int | None
) -> dict[str, Any]:
    """One compaction of the version `dt` holds (tests interpose a concurrent writer here)."""
    return dt.optimize.compact(
        partition_filters=filters,
        target_size=target_size,
        commit_properties=_commit_properties("compact", 0),
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
            commit_properties=_commit_properties("vacuum", 0),
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


# Dagster


class UpkeepConfig(dg.Config):
    """How long SUCCESS items stay in the hot queue, how long replaced files stay readable, and how much to do."""

    success_retention_hours: int = Field(
        default=int(DEFAULT_SUCCESS_RETENTION / timedelta(hours=1)),
        ge=1,
        le=24 * 366,
        description="SUCCESS items last updated longer ago than this move to position_queue_archive.",
    )
    vacuum_retention_hours: int = Field(
        default=int(DEFAULT_VACUUM_RETENTION / timedelta(hours=1)),
        ge=int(MIN_VACUUM_RETENTION / timedelta(hours=1)),
        le=int(MAX_VACUUM_RETENTION / timedelta(hours=1)),
        description="Files replaced by compaction or MERGEs are deleted this long after; readers of older "
        "snapshots (and time travel) need them until then. 1 to 168 (Delta's own record of them lasts 7 days).",
    )
    compact_only: bool = Field(
        default=False,
        description="Only compact the small files of the queue and position_updates' open day, where a partition "
        f"holds at least {COMPACT_MIN_SMALL_FILES} (the schedule's runs between full upkeeps). False: the full upkeep.",
    )


@dg.op(
    description="Full upkeep: archive old SUCCESS queue items, then compact, checkpoint and vacuum the queue, its "
    "archive and position_updates. With compact_only: merge the small files of the queue and position_updates' open "
    "day only.",
)
def upkeep_tables(context: dg.OpExecutionContext, config: UpkeepConfig, lake: LakeResource) -> None:
    context.add_output_metadata(run_upkeep(context.log, config, lake.root_uri, lake.storage_options()))


def compactions(table: str, *, full: bool, today: date | None = None) -> list[dict[str, Any]]:
    """The `compact` calls upkeep makes on `table`, in order (keyword arguments).

    What is still written to (the queue, position_updates' open day) goes to files of HOT_TARGET_SIZE; between full
    upkeeps only where a partition holds COMPACT_MIN_SMALL_FILES small files. A full upkeep also merges what nothing
    writes any more (position_updates' closed days, the archive) into large files.
    """
    hot: dict[str, Any] = {"target_size": HOT_TARGET_SIZE, "min_small_files": None if full else COMPACT_MIN_SMALL_FILES}
    if table == lake.QUEUE_TABLE:
        return [hot]
    if table == lake.POSITION_UPDATES_TABLE:
        closed = [{"partition_filters": closed_days(today)}] if full else []
        return [*closed, {**hot, "partition_filters": open_days(today)}]
    return [{}] if full else []


def run_upkeep(
    log: logging.Logger | dg.DagsterLogManager,
    config: UpkeepConfig,
    root: str,
    storage_options: lake.StorageOptions | None = None,
) -> dict[str, Any]:
    """Every upkeep step in order (compaction only with `config.compact_only`), logging progress per step; returns
    the run's output metadata."""
    options = lake.resolve_storage_options(root, storage_options)
    full = not config.compact_only
    metadata: dict[str, Any] = {"upkeep": "full" if full else "compaction only"}
    skipped: list[str] = []
    tables = {
        lake.QUEUE_TABLE: lake.table_uri(root, lake.QUEUE_TABLE),
        lake.ARCHIVE_TABLE: archive_uri(root),
        lake.POSITION_UPDATES_TABLE: lake.table_uri(root, lake.POSITION_UPDATES_TABLE),
    }
    today = datetime.now(UTC).date()
    plans = {name: compactions(name, full=full, today=today) for name in tables}
    tables = {name: uri for name, uri in tables.items() if plans[name]}
    first = {name: table_state(uri, options) for name, uri in tables.items()}

    if full:
        started = time.perf_counter()
        retention = timedelta(hours=config.success_retention_hours)
        log.info(f"archiving SUCCESS items older than {retention} from the queue")
        try:
            archived = archive_succeeded(root, retention, storage_options=options)
        except CommitFailedError as exc:
            archived = 0
            skipped.append(f"archive: lost to concurrent queue writers ({exc}); the next run moves them")
        seconds = time.perf_counter() - started
        log.info(f"archived {archived} items in {seconds:.2f} s")
        metadata["rows archived"] = archived
        metadata["archive seconds"] = round(seconds, 3)

    done: list[UpkeepStep] = []
    vacuum_retention = timedelta(hours=config.vacuum_retention_hours)
    for name, uri in tables.items():
        if table_state(uri, options) is None:
            log.info(f"{name}: no table, nothing to do")
            metadata[f"{name} files"] = dg.MetadataValue.text("no table")
            continue
        steps = [_logged(log, name, compact(uri, storage_options=options, **plan)) for plan in plans[name]]
        if full:
            steps.append(_logged(log, name, checkpoint(uri, storage_options=options)))
            steps.append(_logged(log, name, vacuum(uri, vacuum_retention, storage_options=options)))
        last = table_state(uri, options)
        start = first[name] or TableState(version=-1, files=0, bytes=0, rows=0)  # created by this run (the archive)
        if last is not None:
            metadata.update(
                {
                    f"{name} files before": start.files,
                    f"{name} files after": last.files,
                    f"{name} bytes before": start.bytes,
                    f"{name} bytes after": last.bytes,
                    f"{name} rows before": start.rows,
                    f"{name} rows after": last.rows,
                    f"{name} version before": start.version,
                    f"{name} version after": last.version,
                }
            )
        step_seconds: dict[str, float] = {}
        for step in steps:
            step_seconds[step.step] = step_seconds.get(step.step, 0.0) + step.seconds
        metadata[f"{name} files compacted"] = sum(s.details.get("files_removed", 0) for s in steps)
        if full:
            metadata[f"{name} files vacuumed"] = sum(s.details.get("files_deleted", 0) for s in steps)
        metadata.update({f"{name} {step} seconds": round(value, 3) for step, value in step_seconds.items()})
        skipped.extend(f"{name} {step.step}: {step.skipped}" for step in steps if step.skipped)
        done.extend(steps)
    for warning in skipped:
        log.warning(warning)
    metadata["skipped"] = dg.MetadataValue.md("\n".join(f"- {s}" for s in skipped) if skipped else "nothing")
    metadata["steps"] = dg.MetadataValue.md(_steps_markdown(done))
    return metadata


def _logged(log: logging.Logger | dg.DagsterLogManager, name: str, step: UpkeepStep) -> UpkeepStep:
    """Say what a step did, as soon as it is done."""
    if step.skipped:
        log.info(f"{name}: {step.step} skipped after {step.seconds:.2f} s: {step.skipped}")
        return step
    files = "" if step.before is None or step.after is None else f", files {step.before.files} -> {step.after.files}"
    details = "".join(f", {k} {v}" for k, v in step.details.items())
    log.info(f"{name}: {step.step} in {step.seconds:.2f} s{files}{details}")
    return step


def _steps_markdown(steps: Sequence[UpkeepStep]) -> str:
    lines = ["| table | step | seconds | files | bytes | version | result |", "|---|---|---|---|---|---|---|"]
    for s in steps:
        b, a = s.before, s.after
        files = "" if b is None or a is None else f"{b.files} -> {a.files}"
        size = "" if b is None or a is None else f"{b.bytes:,} -> {a.bytes:,}"
        version = "" if b is None or a is None else f"{b.version} -> {a.version}"
        result = f"skipped: {s.skipped}" if s.skipped else ", ".join(f"{k} {v}" for k, v in s.details.items())
        name = s.table.rstrip("/").rsplit("/", 1)[-1]
        lines.append(f"| {name} | {s.step} | {s.seconds:.2f} | {files} | {size} | {version} | {result} |")
    return "\n".join(lines)


@dg.job(
    name=UPKEEP_JOB_NAME,
    executor_def=dg.in_process_executor,
    description="Bound the queue (old SUCCESS items to the archive) and compact, checkpoint and vacuum the lake's "
    "tables; every few minutes only the compaction of small files. Tagged like the sync job, so the instance never "
    "runs the two at once: sync runs wait behind it.",
    tags={"pipeline": "position_sync", "dagster/max_runtime": str(UPKEEP_MAX_RUNTIME_SECONDS)},
)
def table_upkeep() -> None:
    upkeep_tables()


@dg.schedule(
    name="table_upkeep_schedule",
    job=table_upkeep,
    cron_schedule=UPKEEP_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"The full table_upkeep at minute {FULL_UPKEEP_MINUTE} of every hour (UTC); every 3 minutes in "
    f"between, a compaction-only run when the queue or position_updates has a partition with at least "
    f"{COMPACT_MIN_SMALL_FILES} small files (otherwise no run).",
)
def table_upkeep_schedule(context: dg.ScheduleEvaluationContext, lake: LakeResource) -> dg.RunRequest | dg.SkipReason:
    """Full at :23; in between, only when compaction has something to merge, so an idle lake launches no runs."""
    at = context.scheduled_execution_time or datetime.now(UTC)
    if at.astimezone(UTC).minute == FULL_UPKEEP_MINUTE:
        return dg.RunRequest(run_config=_upkeep_run_config(compact_only=False), tags={"upkeep": "full"})
    crowded = crowded_tables(lake.root_uri, lake.storage_options())
    if not crowded:
        return dg.SkipReason(
            f"no partition of the queue or position_updates holds {COMPACT_MIN_SMALL_FILES} files under "
            f"{HOT_TARGET_SIZE // 2**20} MiB: nothing to compact"
        )
    return dg.RunRequest(
        run_config=_upkeep_run_config(compact_only=True),
        tags={"upkeep": "compaction", **{f"small_files/{name}": str(n) for name, n in crowded.items()}},
    )


def crowded_tables(root: str, storage_options: lake.StorageOptions | None = None) -> dict[str, int]:
    """The tables a compaction-only run would compact: queue and position_updates, where a partition holds at least
    COMPACT_MIN_SMALL_FILES files under HOT_TARGET_SIZE, with that count."""
    found = {}
    for name in (lake.QUEUE_TABLE, lake.POSITION_UPDATES_TABLE):
        [plan] = [p for p in compactions(name, full=False) if p.get("min_small_files")]
        found[name] = small_files(
            lake.table_uri(root, name),
            plan["target_size"],
            partition_filters=plan.get("partition_filters"),
            storage_options=storage_options,
        )
    return {name: n for name, n in found.items() if n >= COMPACT_MIN_SMALL_FILES}


def _upkeep_run_config(*, compact_only: bool) -> dict[str, Any]:
    return {"ops": {"upkeep_tables": {"config": {"compact_only": compact_only}}}}
