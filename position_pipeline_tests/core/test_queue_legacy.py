"""The import of the original design's queue table: every item once, bad rows refused with nothing written."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from deltalake import write_deltalake

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueInputError
from position_pipeline_tests.core.queue_support import version


def _legacy_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=lake.LEGACY_QUEUE_SCHEMA)


LEGACY_ROWS = [
    {
        "request_id": "0b9e1f4e-1111-4a1e-9c1a-000000000001",
        "conid": 501,
        "symbol": "SPY",
        "priority": 2,
        "status": "PENDING",
        "created_at": "2025-03-01T09:30:00",
        "updated_at": "2025-03-01T09:30:00",
        "error_message": None,
    },
    {
        "request_id": "0b9e1f4e-1111-4a1e-9c1a-000000000002",
        "conid": 502,
        "symbol": "QQQ",
        "priority": 1,
        "status": "PROCESSING",
        "created_at": "2025-03-01 09:31:00.123456",
        "updated_at": "2025-03-01 09:31:05",
        "error_message": None,
    },
    {
        "request_id": "0b9e1f4e-1111-4a1e-9c1a-000000000003",
        "conid": 503,
        "symbol": "IWM",
        "priority": 2,
        "status": "SUCCESS",
        "created_at": "2025-03-01T09:32:00+02:00",
        "updated_at": "2025-03-01T09:33:00+02:00",
        "error_message": None,
    },
    {
        "request_id": "0b9e1f4e-1111-4a1e-9c1a-000000000004",
        "conid": 504,
        "symbol": "DIA",
        "priority": 2,
        "status": "FAILED",
        "created_at": "2025-03-01T09:34:00",
        "updated_at": "2025-03-01T09:35:00",
        "error_message": "Position 504 not found in IB",
    },
]


def test_import_legacy_adopts_every_item_once(queue: PositionQueue, uri: str, tmp_path: Path) -> None:
    legacy = str(tmp_path / "legacy_queue")
    write_deltalake(legacy, _legacy_frame(LEGACY_ROWS[:3]).to_arrow())
    queue.insert(900, "OURS")

    assert queue.import_legacy(legacy, source_tz="UTC") == 3
    after_first = version(uri)
    assert queue.import_legacy(legacy, source_tz="UTC") == 0
    assert version(uri) == after_first, "a re-import must not commit"

    write_deltalake(legacy, _legacy_frame(LEGACY_ROWS[3:]).to_arrow(), mode="append")
    assert queue.import_legacy(legacy, source_tz="UTC") == 1

    table = queue.read()
    assert table.height == 5
    rows = {r["request_id"]: r for r in table.iter_rows(named=True)}
    first, processing, success, failed = (rows[r["request_id"]] for r in LEGACY_ROWS)
    assert first["created_at"] == datetime(2025, 3, 1, 9, 30, tzinfo=UTC)  # naive read as UTC
    assert (first["status"], first["conid"], first["symbol"], first["priority"]) == ("PENDING", 501, "SPY", 2)
    assert processing["status"] == "PENDING" and processing["claimed_by"] is None  # no surviving owner: re-queued
    assert processing["created_at"] == datetime(2025, 3, 1, 9, 31, 0, 123456, tzinfo=UTC)
    assert success["created_at"] == datetime(2025, 3, 1, 7, 32, tzinfo=UTC)  # offsets converted to UTC
    assert (failed["status"], failed["attempts"], failed["error_message"]) == (
        "FAILED",
        1,
        "Position 504 not found in IB",
    )
    imported = table.filter(pl.col("symbol") != "OURS")
    assert imported["account"].null_count() == 4 and imported["retry_after"].null_count() == 3
    assert imported["claims"].to_list() == [0] * 4
    # Imported items are ordinary queue items: oldest first, ahead of ours.
    assert queue.claim(limit=1, claimed_by="run-1")["conid"].to_list() == [501]
    # An imported FAILED item is retried under the normal policy: retry_delay(0) after it failed.
    assert failed["retry_after"] == datetime(2025, 3, 1, 9, 35, 30, tzinfo=UTC)
    assert queue.claimable_count(priority=None) == 3  # QQQ (was PROCESSING), DIA (FAILED, due) and OURS


@pytest.mark.parametrize(
    ("change", "row", "field"),
    [
        pytest.param({"created_at": "yesterday"}, 1, "created_at", id="bad-timestamp"),
        pytest.param({"status": "DONE"}, 1, "status", id="unknown-status"),
        pytest.param({"conid": -5}, 1, "conid", id="bad-conid"),
        pytest.param({"symbol": " "}, 1, "symbol", id="blank-symbol"),
        pytest.param({"priority": 4}, 1, "priority", id="bad-priority"),
        pytest.param({"request_id": LEGACY_ROWS[0]["request_id"]}, 1, "request_id", id="duplicate-id"),
    ],
)
def test_import_legacy_refuses_bad_rows_and_writes_nothing(
    queue: PositionQueue, uri: str, tmp_path: Path, change: dict[str, Any], row: int, field: str
) -> None:
    legacy = str(tmp_path / "legacy_queue")
    rows = [dict(r) for r in LEGACY_ROWS]
    rows[row].update(change)
    write_deltalake(legacy, _legacy_frame(rows).to_arrow())
    queue.insert(900, "OURS")
    before = version(uri)

    with pytest.raises(QueueInputError) as raised:
        queue.import_legacy(legacy, source_tz="UTC")

    assert (raised.value.row, raised.value.field) == (row, field)
    assert f"row {row}: {field}:" in str(raised.value)
    assert version(uri) == before
    assert queue.read().height == 1
