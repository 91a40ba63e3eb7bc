"""Every private Dagster API this project uses (`dagster._...`), imported here and nowhere else.

Dagster 1.13 exports none of these from `dagster`; each is the name its own daemons, storages and tests use. A
Dagster upgrade that moves one breaks this module's imports only, and this list says what to check. Invariant: no
other module of the code location, its tests or its benchmarks imports from `dagster._`.

- io_managers.py: DbTypeHandler, TableSlice (the Delta IO manager's type handler).
- backfill.py: PartitionBackfill, make_new_backfill_id (a backfill stored as the UI stores it).
- run_retention.py: BulkActionsFilter, BulkActionStatus, BACKFILL_ID_TAG (the backfills the daemon still works on),
  SqliteEventLogStorage (one event-log file per run on the default storage).
- tests and benchmarks: MIN_INTERVAL_LOOP_TIME (the sensor daemon's loop), InstigatorType (sensor ticks),
  RegisteredCodeLocationOrigin and RemoteRepositoryOrigin (a queued run's origin), cron_string_iterator,
  freeze_time.
"""

from __future__ import annotations

from typing import Any

from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus, PartitionBackfill
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.scheduler.instigation import InstigatorType
from dagster._core.storage.db_io_manager import DbTypeHandler, TableSlice
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.tags import BACKFILL_ID_TAG
from dagster._core.utils import make_new_backfill_id
from dagster._daemon.sensor import MIN_INTERVAL_LOOP_TIME
from dagster._utils.schedules import cron_string_iterator


def freeze_time(new_now: Any) -> Any:
    """Dagster's test clock, as a context manager (tests only). Imported on use: `dagster._core.test_utils` takes
    over a second to import, which the code location must not pay at load."""
    from dagster._core.test_utils import freeze_time as dagster_freeze_time

    return dagster_freeze_time(new_now)


__all__ = [
    "BACKFILL_ID_TAG",
    "MIN_INTERVAL_LOOP_TIME",
    "BulkActionStatus",
    "BulkActionsFilter",
    "DbTypeHandler",
    "InstigatorType",
    "PartitionBackfill",
    "RegisteredCodeLocationOrigin",
    "RemoteRepositoryOrigin",
    "SqliteEventLogStorage",
    "TableSlice",
    "cron_string_iterator",
    "freeze_time",
    "make_new_backfill_id",
]
