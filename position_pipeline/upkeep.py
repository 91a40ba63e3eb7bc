"""Table upkeep: keep the queue small and every table's files few, without racing the pipeline's writers.

Why: a claim reads the whole queue table, and the Delta IO manager reads every add action after each append, so both
slow down as history piles up. Once an hour `table_upkeep`:

1. moves SUCCESS items older than a retention period from `positions/position_queue` to
   `positions/position_queue_archive` (same schema), exactly once: a claim's cost then follows the live queue, not its
   history;
2. compacts small files (the queue whole, position_updates only in days before today, the archive whole), writes a
   checkpoint and drops expired log files, and vacuums files unreferenced for longer than a retention period.

Racing the writers: the job carries the sync job's `pipeline: position_sync` tag, so the instance's tag concurrency
limit (dagster.yaml, limit 1) never runs it beside a sync run; those wait behind it. Producers, the sensor and backfill
runs (tagged `position_backfill`) may still write the queue meanwhile, so every commit here is retried on conflict
(re-read, jittered backoff: queue.py's loop). Archiving is safe under any interleaving; a compaction or vacuum that
keeps losing is reported as skipped rather than failing the run, and the next hour tries again.
"""

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import dagster as dg
import polars as pl
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from pydantic import Field

from . import lake

# queue.py's commit-conflict retry and time helpers are private there; they are reused, not copied (the lead is asked
# to make them public).
from .queue import PositionQueue, QueueStatus, sql_timestamp, utc_or_now
from .resources import LakeResource

logger = logging.getLogger(__name__)

T = TypeVar("T")

ARCHIVE_TABLE = "position_queue_archive"
"""SUCCESS items moved out of the hot queue: same schema as position_queue, one row per item, never updated by runs."""

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

UPKEEP_JOB_NAME = "table_upkeep"
UPKEEP_MAX_RUNTIME_SECONDS = 600
"""Upkeep holds the sync runs' concurrency slot, so it must stay short: run monitoring fails it after this."""


def archive_uri(root: str | os.PathLike[str]) -> str:
    """`{root}/positions/position_queue_archive`."""
    return lake.table_uri(root, ARCHIVE_TABLE)


def retry_on_conflict(
    table_uri: str,
    operation: str,
    attempt: Callable[[], T],
    *,
    attempts: int | None = None,
    storage_options: lake.StorageOptions | None = None,
) -> T:
    """Run `attempt` (which must re-read the table) until it commits: PositionQueue's loop, for any table.

    Raises the last CommitFailedError after `attempts` tries (None: the queue's own number, as claims and marks get).
    A thin wrapper so that upkeep uses exactly the queue's retry policy; building a PositionQueue touches no storage.
    """
    queue = (
        PositionQueue(table_uri, storage_options)
        if attempts is None
        else PositionQueue(table_uri, storage_options, commit_attempts=attempts)
    )
    return queue._retrying(operation, attempt)


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
    try:
        dt = DeltaTable(queue_uri, storage_options=options)
    except TableNotFoundError:
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

    return retry_on_conflict(uri, "archive_insert", attempt, storage_options=options)


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

    return retry_on_conflict(queue_uri, "archive_delete", attempt, storage_options=options)


def _open_archive(uri: str, options: lake.StorageOptions | None) -> DeltaTable:
    """The archive at its newest version, created first if absent; a table with other columns is refused."""
    try:
        dt = DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        try:
            DeltaTable.create(
                uri,
                lake.QUEUE_ARROW_SCHEMA,
                mode="ignore",
                name=ARCHIVE_TABLE,
                description="SUCCESS queue items moved out of position_queue by table upkeep.",
                storage_options=options,
            )
            logger.info("created %s", uri)
        except DeltaError as exc:
            logger.info("%s was created concurrently (%s)", uri, exc)
        dt = DeltaTable(uri, storage_options=options)
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
    try:
        dt = DeltaTable(table_uri, storage_options=lake.resolve_storage_options(table_uri, storage_options))
    except TableNotFoundError:
        return None
    return _state(dt)


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


def compact(
    table_uri: str,
    *,
    partition_filters: Sequence[tuple[str, str, Any]] | None = None,
    target_size: int | None = None,
    attempts: int = MAINTENANCE_ATTEMPTS,
    storage_options: lake.StorageOptions | None = None,
) -> UpkeepStep:
    """Rewrite the table's small files (only in partitions matching `partition_filters`) into few large ones.

    The rows are the same before and after (Delta marks the commit dataChange=false). A concurrent MERGE that
    rewrote a file being compacted fails the commit; it is retried `attempts` times, then reported skipped.
    """
    options = lake.resolve_storage_options(table_uri, storage_options)
    filters = list(partition_filters) if partition_filters else None

    def attempt() -> dict[str, Any]:
        return _compact_once(DeltaTable(table_uri, storage_options=options), filters, target_size)

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
        metrics = retry_on_conflict(table_uri, step, attempt, attempts=attempts, storage_options=options)
    except CommitFailedError as exc:
        reason = f"lost to concurrent writers {attempts} times: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        logger.warning("%s of %s skipped: %s", step, table_uri, reason)
        return UpkeepStep(table_uri, step, time.perf_counter() - started, before, before, skipped=reason)
    after = table_state(table_uri, options)
    return UpkeepStep(table_uri, step, time.perf_counter() - started, before, after, details(metrics))


# Dagster


class UpkeepConfig(dg.Config):
    """How long SUCCESS items stay in the hot queue, and how long replaced files stay readable."""

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


@dg.op(
    description="Archive old SUCCESS queue items, then compact, checkpoint and vacuum the queue, its archive and "
    "position_updates (closed days only).",
)
def upkeep_tables(context: dg.OpExecutionContext, config: UpkeepConfig, lake: LakeResource) -> None:
    context.add_output_metadata(run_upkeep(context.log, config, lake.root_uri, lake.storage_options()))


def run_upkeep(
    log: logging.Logger | dg.DagsterLogManager,
    config: UpkeepConfig,
    root: str,
    storage_options: lake.StorageOptions | None = None,
) -> dict[str, Any]:
    """Every upkeep step in order, logging progress per step; returns the run's output metadata."""
    options = lake.resolve_storage_options(root, storage_options)
    metadata: dict[str, Any] = {}
    skipped: list[str] = []
    tables = {
        lake.QUEUE_TABLE: (lake.table_uri(root, lake.QUEUE_TABLE), None),
        ARCHIVE_TABLE: (archive_uri(root), None),
        lake.POSITION_UPDATES_TABLE: (lake.table_uri(root, lake.POSITION_UPDATES_TABLE), closed_days()),
    }
    first = {name: table_state(uri, options) for name, (uri, _) in tables.items()}

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
    for name, (uri, filters) in tables.items():
        if table_state(uri, options) is None:
            log.info(f"{name}: no table, nothing to do")
            metadata[f"{name} files"] = dg.MetadataValue.text("no table")
            continue
        compacted = _logged(log, name, compact(uri, partition_filters=filters, storage_options=options))
        checkpointed = _logged(log, name, checkpoint(uri, storage_options=options))
        vacuumed = _logged(log, name, vacuum(uri, vacuum_retention, storage_options=options))
        steps = [compacted, checkpointed, vacuumed]
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
        metadata.update(
            {
                f"{name} files compacted": compacted.details.get("files_removed", 0),
                f"{name} files vacuumed": vacuumed.details.get("files_deleted", 0),
                **{f"{name} {step.step} seconds": round(step.seconds, 3) for step in steps},
            }
        )
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
    description="Hourly: bound the queue (old SUCCESS items to the archive) and compact, checkpoint and vacuum the "
    "lake's tables. Tagged like the sync job, so the instance never runs the two at once: sync runs wait behind it.",
    tags={"pipeline": "position_sync", "dagster/max_runtime": str(UPKEEP_MAX_RUNTIME_SECONDS)},
)
def table_upkeep() -> None:
    upkeep_tables()


table_upkeep_schedule = dg.ScheduleDefinition(
    name="table_upkeep_schedule",
    job=table_upkeep,
    cron_schedule="23 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="table_upkeep at minute 23 of every hour (UTC), away from the top of the hour.",
)
