"""Real Delta tables under tmp_path for the tests of the queue's upkeep and health: queue
items finished at a chosen moment, position_updates batches, and the readers that compare tables before and after."""

import hashlib
import os
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue
from position_pipeline_tests.support.position_rows import position_update_row

NOW = datetime(2030, 3, 10, 12, 0, tzinfo=UTC)
"""A fixed moment for tests whose writes take `now`."""
DAY = timedelta(days=1)


def succeed_items(queue: PositionQueue, count: int, at: datetime, first_conid: int = 1) -> list[str]:
    """`count` items claimed and marked SUCCESS at `at`, in one insert, one claim and one mark."""
    ids = queue.insert_many([(first_conid + i, f"S{first_conid + i}") for i in range(count)])
    claimed = queue.claim(None, limit=count, claimed_by="run-old", now=at)
    assert claimed.height == count
    assert queue.mark_success(ids, claimed_by="run-old", now=at) == count
    return ids


def table_rows(uri: str) -> pl.DataFrame:
    """A table's rows sorted by request_id (empty when there is no table)."""
    if not os.path.exists(os.path.join(uri, "_delta_log")):
        return pl.DataFrame(schema=lake.QUEUE_SCHEMA)
    return pl.scan_delta(DeltaTable(uri)).collect().sort("request_id")


def table_ids(uri: str) -> list[str]:
    """A table's request_ids, sorted (none when there is no table)."""
    return table_rows(uri)["request_id"].to_list()


def content_checksum(frame: pl.DataFrame) -> str:
    """Content checksum independent of row and file order."""
    return hashlib.sha256(frame.sort(frame.columns).write_csv().encode()).hexdigest()


def referenced_files(uri: str) -> set[str]:
    """The data files the table's newest version references, relative to the table."""
    return {str(p) for p in DeltaTable(uri).get_add_actions().column("path").to_pylist()}


def update_batch(day: date, batch: int, size: int = 3) -> pa.Table:
    """One small position_updates batch on `day`."""
    at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(minutes=batch)
    rows = [
        position_update_row(
            request_id=f"req-{day}-{batch}-{i}",
            conid=1000 + i,
            symbol=f"S{i}",
            local_symbol=f"S{i}",
            position=float(batch + i),
            average_cost=10.0,
            market_price=11.0,
            market_value=11.0 * (batch + i),
            unrealized_pnl=1.0 * (batch + i),
            snapshot_at=at,
            run_id=f"run-{batch}",
            snapshot_date=day,
        )
        for i in range(size)
    ]
    return pa.Table.from_pylist(rows, schema=lake.POSITION_UPDATES_ARROW_SCHEMA)


def append_rows(root: str, *rows: tuple[str, datetime, str]) -> None:
    """Append (request_id, snapshot_at, run_id) rows to position_updates in one commit, as a sync run does."""
    uri = lake.ensure_position_updates_table(root)
    frame = pl.DataFrame(
        [
            {
                "request_id": request_id,
                "conid": 265598,
                "account": "DU1000001",
                "symbol": "AAPL",
                "sec_type": "STK",
                "currency": "USD",
                "local_symbol": "AAPL",
                "position": 10.0,
                "average_cost": 150.0,
                "market_price": 190.0,
                "market_value": 1900.0,
                "unrealized_pnl": 400.0,
                "realized_pnl": 0.0,
                "queued_at": at - timedelta(seconds=4),
                "snapshot_at": at,
                "run_id": run_id,
                "snapshot_date": at.date(),
            }
            for request_id, at, run_id in rows
        ],
        schema=lake.POSITION_UPDATES_SCHEMA,
    )
    write_deltalake(uri, frame.to_arrow().cast(lake.POSITION_UPDATES_ARROW_SCHEMA), mode="append")
