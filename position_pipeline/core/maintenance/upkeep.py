"""An upkeep run: which steps each table gets, in which order, and the report of what they did.

A full run archives old SUCCESS items first (so the queue compacts what stays), then compacts, checkpoints and
vacuums the queue, its archive and position_updates. A compaction-only run merges just the small files of what is
still being written (the queue, position_updates' open day), and only where a partition holds
COMPACT_MIN_SMALL_FILES of them.
"""

import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from deltalake.exceptions import CommitFailedError

from position_pipeline.core import lake
from position_pipeline.core.maintenance.steps import (
    HOT_TARGET_SIZE,
    TableState,
    UpkeepStep,
    checkpoint,
    closed_days,
    compact,
    open_days,
    small_files,
    table_state,
    vacuum,
)
from position_pipeline.core.queue.archive import archive_succeeded, archive_uri

COMPACT_MIN_SMALL_FILES = 10
"""Compaction between full upkeeps starts once a partition holds this many files under HOT_TARGET_SIZE."""


class ProgressLog(Protocol):
    """Where a run says what it does: a `logging.Logger`, or Dagster's `context.log` (same methods)."""

    def info(self, msg: str, /) -> object: ...

    def warning(self, msg: str, /) -> object: ...


class UpkeepSettings(Protocol):
    """How much a run does: defs' `UpkeepConfig` (the op's run config) is one."""

    @property
    def success_retention_hours(self) -> int: ...

    @property
    def vacuum_retention_hours(self) -> int: ...

    @property
    def compact_only(self) -> bool: ...


class Markdown(str):
    """Report text meant to be rendered as markdown (defs shows it as a markdown metadata value)."""

    __slots__ = ()


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


def run_upkeep(
    log: ProgressLog,
    config: UpkeepSettings,
    root: str,
    storage_options: lake.StorageOptions | None = None,
) -> dict[str, Any]:
    """Every upkeep step in order (compaction only with `config.compact_only`), logging progress per step; returns
    the run's report: plain values, the `skipped` list and `steps` table as `Markdown`."""
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
            metadata[f"{name} files"] = "no table"
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
    metadata["skipped"] = Markdown("\n".join(f"- {s}" for s in skipped) if skipped else "nothing")
    metadata["steps"] = Markdown(_steps_markdown(done))
    return metadata


def _logged(log: ProgressLog, name: str, step: UpkeepStep) -> UpkeepStep:
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
