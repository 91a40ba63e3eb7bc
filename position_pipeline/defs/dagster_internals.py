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

import importlib
from typing import Any

from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus, PartitionBackfill
from dagster._core.storage.db_io_manager import DbTypeHandler, TableSlice
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.tags import BACKFILL_ID_TAG
from dagster._core.utils import make_new_backfill_id

_FOR_TESTS_AND_BENCHMARKS = {
    "MIN_INTERVAL_LOOP_TIME": "dagster._daemon.sensor",
    "InstigatorType": "dagster._core.scheduler.instigation",
    "RegisteredCodeLocationOrigin": "dagster._core.remote_origin",
    "RemoteRepositoryOrigin": "dagster._core.remote_origin",
    "cron_string_iterator": "dagster._utils.schedules",
    "freeze_time": "dagster._core.test_utils",
}
"""Names only tests and benchmarks use, imported on first use: the code location loads none of their modules
(`dagster._core.test_utils` alone takes over a second), and a Dagster upgrade that moves one breaks no deployment."""


def __getattr__(name: str) -> Any:
    """`from position_pipeline.defs.dagster_internals import X` for the test and benchmark names above."""
    module = _FOR_TESTS_AND_BENCHMARKS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "BACKFILL_ID_TAG",
    "BulkActionStatus",
    "BulkActionsFilter",
    "DbTypeHandler",
    "PartitionBackfill",
    "SqliteEventLogStorage",
    "TableSlice",
    "make_new_backfill_id",
    *_FOR_TESTS_AND_BENCHMARKS,
]
