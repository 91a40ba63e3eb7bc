"""Producers on a real table: items and CSV files appended as PENDING in one commit each, oldest first, with an
optional account."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from position_pipeline.core.queue import PositionQueue, QueuedPosition, QueueInputError, QueueStatus
from position_pipeline.core.queue import inputs as queue_inputs
from position_pipeline_tests.core.queue_support import version


def test_insert_and_get_batch_oldest_first(queue: PositionQueue, uri: str) -> None:
    first = queue.insert(101, "AAPL")
    batch_ids = queue.insert_many(
        [
            {"conid": 102, "symbol": "MSFT"},
            (103, "GOOG", 2),
            (104, "TSLA", 1),
            {"conid": "105", "symbol": " NVDA ", "priority": 2},
        ]
    )
    last = queue.insert(106, "AMZN", priority=2)
    assert len(set([first, *batch_ids, last])) == 6
    assert all(uuid.UUID(hex=i).hex == i and uuid.UUID(hex=i).version == 4 for i in batch_ids)
    before = version(uri)

    monitoring = queue.get_batch()
    assert [p.conid for p in monitoring] == [101, 102, 103, 105, 106]
    assert [p.symbol for p in monitoring][3] == "NVDA"
    assert [p.request_id for p in monitoring] == [first, batch_ids[0], batch_ids[1], batch_ids[3], last]
    assert [p.conid for p in queue.get_batch(priority=1)] == [104]
    assert [p.conid for p in queue.get_batch(limit=2)] == [101, 102]
    assert [p.conid for p in queue.get_batch(priority=None)] == [104, 101, 102, 103, 105, 106]
    assert queue.get_batch(status="SUCCESS") == []

    item = monitoring[0]
    assert isinstance(item, QueuedPosition)
    assert item.status is QueueStatus.PENDING
    assert item.created_at.utcoffset() == timedelta(0) and item.created_at.tzinfo is not None
    assert item.attempts == 0 and item.claimed_by is None and item.error_message is None
    assert version(uri) == before, "get_batch must not write"


def test_insert_many_is_one_commit(queue: PositionQueue, uri: str) -> None:
    queue.insert(1, "A")
    before = version(uri)
    queue.insert_many([(i, f"S{i}") for i in range(2, 52)])
    assert version(uri) == before + 1
    assert queue.insert_many([]) == []
    assert version(uri) == before + 1


def test_enqueue_csv(queue: PositionQueue, tmp_path: Path) -> None:
    path = tmp_path / "positions.csv"
    path.write_text("conid,symbol,priority\n201,IBM,1\n202,ORCL,\n\n203,SAP,2\n")
    ids = queue.enqueue_csv(path)
    assert len(ids) == 3
    rows = queue.read()
    assert rows.select("conid", "symbol", "priority").rows() == [(201, "IBM", 1), (202, "ORCL", 2), (203, "SAP", 2)]

    two_columns = tmp_path / "two.csv"
    two_columns.write_text("symbol,conid\nBP,301\n")
    queue.enqueue_csv(two_columns)
    assert queue.get_batch(limit=10)[-1].conid == 301


def test_enqueue_csv_reports_progress(queue: PositionQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_inputs, "PROGRESS_EVERY", 2)
    path = tmp_path / "positions.csv"
    path.write_text("conid,symbol\n1,A\n2,B\n\n3,C\nx,D\n5,E\n")
    heard: list[str] = []

    with pytest.raises(QueueInputError):
        queue.enqueue_csv(path, progress=heard.append)
    assert heard == ["read 2 rows (line 3)", "read 4 rows (line 6), 1 bad"]  # no commit step: nothing written

    path.write_text("conid,symbol\n1,A\n2,B\n3,C\n")
    heard.clear()
    queue.enqueue_csv(path, progress=heard.append)
    assert heard == ["read 2 rows (line 3)", "3 rows valid; writing them in one commit", "committed 3 items"]


def test_items_carry_an_optional_account(queue: PositionQueue) -> None:
    first = queue.insert(101, "AAPL", account="DU1000001")
    others = queue.insert_many(
        [
            {"conid": 102, "symbol": "MSFT", "account": "U2000002"},
            {"conid": 103, "symbol": "GOOG", "account": None},
            (104, "TSLA", 1, "DU1000001"),
            (105, "NVDA", None, "DU3"),
            (106, "AMZN"),
        ]
    )
    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert [rows[i]["account"] for i in [first, *others]] == ["DU1000001", "U2000002", None, "DU1000001", "DU3", None]
    assert rows[others[3]]["priority"] == 2  # a None priority in a 4-tuple still means monitoring
    assert queue.get_batch(limit=1)[0].account == "DU1000001"
    claimed = queue.claim(priority=None, limit=10, claimed_by="run-1")
    assert claimed.filter(pl.col("conid") == 104)["account"].item() == "DU1000001"


def test_enqueue_csv_with_an_account_column(queue: PositionQueue, tmp_path: Path) -> None:
    path = tmp_path / "positions.csv"
    path.write_text("conid,symbol,priority,account\n201,IBM,1,DU1000001\n202,ORCL,,\n203,SAP,2,  \n")
    queue.enqueue_csv(path)
    assert queue.read().select("conid", "priority", "account").rows() == [
        (201, 1, "DU1000001"),
        (202, 2, None),
        (203, 2, None),
    ]

    reordered = tmp_path / "reordered.csv"
    reordered.write_text("account,symbol,conid\nU77,BP,301\n,SHEL,302\n")
    queue.enqueue_csv(reordered)
    assert queue.read().filter(pl.col("conid") >= 301).select("conid", "account").rows() == [(301, "U77"), (302, None)]
