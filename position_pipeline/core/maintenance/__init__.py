"""Table upkeep: keep the queue small and every table's files few, without racing the pipeline's writers.

Why: a claim reads the whole queue table, and the Delta IO manager reads every add action after each append, so both
slow down as history piles up. Every sync batch adds a file to each table (a sensor at 5 s: 720 an hour), so waiting
an hour to compact is too long. Upkeep therefore runs in two sizes (`defs/schedules.py` says when):

- compaction only, and only when a table has a partition with COMPACT_MIN_SMALL_FILES small files: the small files
  of what is still being written (the queue, position_updates' open day) are merged into files of up to
  HOT_TARGET_SIZE. Files that reach that size are left alone, so each compaction rewrites a bounded amount, and a
  claim or mark (which rewrites every file holding a row it changes) rewrites one such file, never the whole queue;
- the full upkeep:
  1. moves SUCCESS items older than a retention period from `positions/position_queue` to
     `positions/position_queue_archive` (same schema), exactly once (`core/queue/archive.py`): a claim's cost then
     follows the live queue, not its history;
  2. compacts small files (as above, and position_updates' closed days and the archive into large files), writes a
     checkpoint and drops expired log files, and vacuums files unreferenced for longer than a retention period.

Racing the writers: the Dagster job never runs beside a sync run (`defs/jobs.py`), but producers, the sensor and
backfill runs may still write the queue meanwhile, so every commit here is retried on conflict (re-read, jittered
backoff: `retry_on_conflict`). Archiving is safe under any interleaving; a compaction or vacuum that keeps losing is
reported as skipped rather than failing the run, and the next run tries again.

`steps` holds what is done to one table, `upkeep` the run over all of them.
"""

from position_pipeline.core.maintenance.steps import (
    DEFAULT_VACUUM_RETENTION,
    HOT_TARGET_SIZE,
    MAINTENANCE_ATTEMPTS,
    MAX_VACUUM_RETENTION,
    MIN_VACUUM_RETENTION,
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
from position_pipeline.core.maintenance.upkeep import (
    COMPACT_MIN_SMALL_FILES,
    Markdown,
    ProgressLog,
    UpkeepSettings,
    compactions,
    crowded_tables,
    run_upkeep,
)

__all__ = [
    "COMPACT_MIN_SMALL_FILES",
    "DEFAULT_VACUUM_RETENTION",
    "HOT_TARGET_SIZE",
    "MAINTENANCE_ATTEMPTS",
    "MAX_VACUUM_RETENTION",
    "MIN_VACUUM_RETENTION",
    "Markdown",
    "ProgressLog",
    "TableState",
    "UpkeepSettings",
    "UpkeepStep",
    "checkpoint",
    "closed_days",
    "compact",
    "compactions",
    "crowded_tables",
    "open_days",
    "run_upkeep",
    "small_files",
    "table_state",
    "vacuum",
]
