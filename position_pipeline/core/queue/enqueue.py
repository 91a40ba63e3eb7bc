"""Producers' writes: new items appended as PENDING, from Python items or a CSV file, each call one commit.

The whole input is validated first (inputs.py): one bad item raises QueueInputError and nothing is written.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import polars as pl
from deltalake import write_deltalake

from position_pipeline.core import lake
from position_pipeline.core.queue.arguments import aware, utc_or_now
from position_pipeline.core.queue.commits import queue_commit_properties
from position_pipeline.core.queue.inputs import (
    Item,
    ItemInput,
    Progress,
    QueueInputError,
    read_csv_items,
    silent,
    validate_items,
)
from position_pipeline.core.queue.table import QueueTable, to_arrow
from position_pipeline.core.terms import Priority, QueueStatus

logger = logging.getLogger(__name__)


class QueueEnqueue(QueueTable):
    """The queue's producers."""

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
        rows, problems = validate_items(items)
        if problems:
            raise QueueInputError(problems)
        return self._append_new(rows, aware("queued_at", queued_at) if queued_at is not None else None)

    def enqueue_csv(self, path: str | os.PathLike[str], progress: Progress | None = None) -> list[str]:
        """Queue the rows of a CSV file with a header `conid,symbol[,priority][,account]`, in one commit.

        Columns may come in any order; an empty priority means monitoring, an empty account any account. Parsed with
        the csv module rather than polars so that every error names the file's line number. A large file takes
        seconds (about 11 s for 1,000,000 rows): `progress` hears every PROGRESS_EVERY rows read and each phase.
        """
        report = progress or silent
        rows, problems = read_csv_items(path, report)
        if problems:
            raise QueueInputError(problems)
        report(f"{len(rows):,} rows valid; writing them in one commit")
        ids = self._append_new(rows)
        report(f"committed {len(ids):,} items")
        logger.info("enqueued %d items from %s", len(ids), os.fspath(path))
        return ids

    def _append_new(self, rows: list[Item], queued_at: datetime | None = None) -> list[str]:
        """Append validated items as PENDING in one commit.

        delta-rs re-commits an append by itself past other appends, but fails it when a claim or mark rewrote files
        meanwhile (ConcurrentDeleteRead in 1.6.6, measured); a failed append made nothing visible, so we retry it.
        """
        if not rows:
            return []
        frame = _new_items(rows, utc_or_now(queued_at))
        data = to_arrow(frame)
        self._retrying(
            "insert",
            lambda: write_deltalake(
                self._open(),
                data,
                mode="append",
                commit_properties=queue_commit_properties("insert", None, frame.height),
            ),
        )
        logger.info("queued %d items", frame.height)
        return frame["request_id"].to_list()


def _new_items(rows: Sequence[Item], now: datetime) -> pl.DataFrame:
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
