"""Input checks: every bad item, CSV row or account is refused with its row, line and field, and nothing is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from position_pipeline.core.queue import PositionQueue, QueueInputError, QueueStatus
from position_pipeline_tests.core.queue_support import version

BAD_ITEMS = [
    pytest.param({"symbol": "X"}, "conid", "missing", id="conid-missing"),
    pytest.param({"conid": None, "symbol": "X"}, "conid", "missing", id="conid-none"),
    pytest.param({"conid": "abc", "symbol": "X"}, "conid", "integer", id="conid-text"),
    pytest.param({"conid": 1.5, "symbol": "X"}, "conid", "integer", id="conid-float"),
    pytest.param({"conid": True, "symbol": "X"}, "conid", "integer", id="conid-bool"),
    pytest.param({"conid": 0, "symbol": "X"}, "conid", "positive", id="conid-zero"),
    pytest.param((-3, "X"), "conid", "positive", id="conid-negative"),
    pytest.param({"conid": 2**63, "symbol": "X"}, "conid", "int64", id="conid-too-big"),
    pytest.param({"conid": 7, "symbol": ""}, "symbol", "blank", id="symbol-empty"),
    pytest.param((7, "   "), "symbol", "blank", id="symbol-blank"),
    pytest.param({"conid": 7}, "symbol", "missing", id="symbol-missing"),
    pytest.param((7, 123), "symbol", "string", id="symbol-not-text"),
    pytest.param((7, "X", 3), "priority", "1 (active) or 2", id="priority-unknown"),
    pytest.param((7, "X", 0), "priority", "1 (active) or 2", id="priority-zero"),
    pytest.param({"conid": 7, "symbol": "X", "priority": "high"}, "priority", "integer", id="priority-text"),
    pytest.param({"conid": 7, "symbol": "X", "prio": 1}, "prio", "not a queue field", id="unknown-key"),
    pytest.param((7,), "item", "1 values", id="tuple-too-short"),
    pytest.param((7, "X", 2, "DU1", "extra"), "item", "5 values", id="tuple-too-long"),
    pytest.param({"conid": 7, "symbol": "X", "account": ""}, "account", "letters and digits", id="account-empty"),
    pytest.param((7, "X", 2, "DU 1"), "account", "letters and digits", id="account-inner-space"),
    pytest.param((7, "X", 2, " DU1"), "account", "letters and digits", id="account-leading-space"),
    pytest.param((7, "X", 2, "DU-1"), "account", "letters and digits", id="account-punctuation"),
    pytest.param({"conid": 7, "symbol": "X", "account": 1000001}, "account", "string", id="account-not-text"),
    pytest.param(42, "item", "expected a dict", id="not-an-item"),
]


@pytest.mark.parametrize(("bad", "field", "problem"), BAD_ITEMS)
def test_insert_many_refuses_bad_items_and_writes_nothing(
    queue: PositionQueue, uri: str, bad: Any, field: str, problem: str
) -> None:
    queue.insert(1, "KEEP")
    before = version(uri)

    with pytest.raises(QueueInputError) as raised:
        queue.insert_many([(10, "OK"), {"conid": 11, "symbol": "OK"}, bad, (12, "OK")])

    error = raised.value
    assert isinstance(error, ValueError)
    assert (error.row, error.field) == (2, field)
    assert f"row 2: {field}:" in str(error)
    assert problem in str(error)
    assert version(uri) == before
    assert queue.read()["symbol"].to_list() == ["KEEP"]


def test_every_bad_field_is_reported(queue: PositionQueue) -> None:
    with pytest.raises(QueueInputError) as raised:
        queue.insert_many([(1, "A"), (0, " ", 9)])
    assert [(p.row, p.field) for p in raised.value.problems] == [(1, "conid"), (1, "symbol"), (1, "priority")]


def test_insert_refuses_bad_single_item(queue: PositionQueue, uri: str) -> None:
    with pytest.raises(QueueInputError, match=r"row 0: conid: must be positive"):
        queue.insert(-1, "X")
    with pytest.raises(QueueInputError, match=r"row 0: priority"):
        queue.insert(5, "X", priority=7)
    assert queue.counts()[QueueStatus.PENDING] == 0


@pytest.mark.parametrize(
    ("text", "row", "line", "field"),
    [
        pytest.param("conid,symbol\n1,A\n2,B\nabc,C\n4,D\n", 2, 4, "conid", id="bad-conid"),
        pytest.param("conid,symbol\n1,A\n\n2,\n", 1, 4, "symbol", id="blank-symbol-after-blank-line"),
        pytest.param("conid,symbol,priority\n1,A,1\n2,B,5\n", 1, 3, "priority", id="unknown-priority"),
        # A quoted newline still counts as a line; inside a symbol it is refused, at its end it is stripped.
        pytest.param('conid,symbol\n1,"multi\n"\n-2,B\n', 1, 4, "conid", id="quoted-newline"),
        pytest.param('conid,symbol\n1,"multi\nline"\n-2,B\n', 0, 2, "symbol", id="newline-in-a-symbol"),
        pytest.param("conid,symbol\n1,A,extra\n", 0, 2, "row", id="too-many-fields"),
        pytest.param("conid,symbol\n1\n", 0, 2, "symbol", id="too-few-fields"),
        pytest.param("conid,ticker\n1,A\n", None, 1, "symbol", id="missing-column"),
        pytest.param("conid,symbol,venue\n1,A,X\n", None, 1, "venue", id="unknown-column"),
        pytest.param("conid,symbol,conid\n1,A,2\n", None, 1, "conid", id="repeated-column"),
        pytest.param("", None, 1, "header", id="empty-file"),
    ],
)
def test_enqueue_csv_refuses_a_bad_row_and_writes_nothing(
    queue: PositionQueue, uri: str, tmp_path: Path, text: str, row: int | None, line: int, field: str
) -> None:
    queue.insert(1, "KEEP")
    before = version(uri)
    path = tmp_path / "bad.csv"
    path.write_text(text)

    with pytest.raises(QueueInputError) as raised:
        queue.enqueue_csv(path)

    error = raised.value
    assert (error.row, error.line, error.field) == (row, line, field)
    where = f"line {line}" if row is None else f"row {row} (line {line})"
    assert f"{where}: {field}:" in str(error)
    assert version(uri) == before


def test_insert_refuses_a_bad_account(queue: PositionQueue, uri: str) -> None:
    queue.insert(1, "KEEP")
    before = version(uri)
    for bad in ["", " ", "DU 1000001", "DU1000001 ", "DU_1"]:
        with pytest.raises(QueueInputError, match=r"row 0: account: must be letters and digits") as raised:
            queue.insert(2, "X", account=bad)
        assert raised.value.field == "account"
    assert version(uri) == before


@pytest.mark.parametrize(
    ("text", "row", "line"),
    [
        pytest.param("conid,symbol,account\n1,A,DU1\n2,B,DU 2\n", 1, 3, id="space"),
        pytest.param("conid,symbol,priority,account\n1,A,1,DU1\n\n2,B,2,DU-2\n", 1, 4, id="punctuation"),
        pytest.param("conid,symbol,account\n1,A, DU1\n", 0, 2, id="padded"),
    ],
)
def test_enqueue_csv_refuses_a_bad_account_row(
    queue: PositionQueue, uri: str, tmp_path: Path, text: str, row: int, line: int
) -> None:
    queue.insert(1, "KEEP")
    before = version(uri)
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(QueueInputError) as raised:
        queue.enqueue_csv(path)
    assert (raised.value.row, raised.value.line, raised.value.field) == (row, line, "account")
    assert f"row {row} (line {line}): account:" in str(raised.value)
    assert version(uri) == before
