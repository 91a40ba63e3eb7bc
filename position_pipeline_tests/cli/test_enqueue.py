"""`position-pipeline enqueue` against real Delta tables under tmp_path: one contract from options, every row of a
CSV file, and the usage errors of the command line (exit 2, nothing written). After every command the queue itself is
read back with PositionQueue."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from deltalake import DeltaTable

from position_pipeline.core.queue import PositionQueue
from position_pipeline_tests.cli.command_runs import Result, assert_nothing_written, run_command, steps, write_csv

# enqueue: one contract


@pytest.mark.system
def test_enqueue_one_contract_as_a_real_command(lake_root: Path, queue: PositionQueue, uri: str) -> None:
    code, out, err = run_command("enqueue", "--conid", "265598", "--symbol", "AAPL", lake_root=lake_root)

    assert (code, err) == (0, "")
    rows = queue.read().to_dicts()
    assert len(rows) == 1
    row = rows[0]
    assert row["request_id"] in out and uri in out
    assert (row["conid"], row["symbol"], row["priority"], row["status"]) == (265598, "AAPL", 2, "PENDING")
    assert row["account"] is None


@pytest.mark.parametrize(
    ("priority", "expected"),
    [pytest.param("1", 1, id="number"), pytest.param("active", 1, id="name"), pytest.param("Monitoring", 2, id="Name")],
)
def test_enqueue_one_contract_with_account_and_priority(
    call: Callable[..., Result], queue: PositionQueue, uri: str, priority: str, expected: int
) -> None:
    code, out, err = call(
        "enqueue", "--conid", "265598", "--symbol", "AAPL", "--priority", priority, "--account", "DU1000001", "--json"
    )

    assert (code, err) == (0, "")
    printed = json.loads(out)
    assert printed["table"] == uri
    [row] = queue.read().to_dicts()
    assert row["request_id"] == printed["request_id"]
    assert (row["conid"], row["symbol"], row["priority"], row["account"]) == (265598, "AAPL", expected, "DU1000001")


def test_enqueue_appends_to_an_existing_queue(call: Callable[..., Result], queue: PositionQueue) -> None:
    first = queue.insert(8314, "IBM")

    assert call("enqueue", "--conid", "265598", "--symbol", "AAPL")[0] == 0

    assert queue.read()["request_id"].to_list()[0] == first
    assert queue.read()["symbol"].to_list() == ["IBM", "AAPL"]


@pytest.mark.parametrize(
    ("options", "field", "problem"),
    [
        pytest.param(["--conid", "0", "--symbol", "AAPL"], "--conid", "must be positive", id="conid-zero"),
        pytest.param(["--conid", "-5", "--symbol", "AAPL"], "--conid", "must be positive", id="conid-negative"),
        pytest.param(["--conid", "abc", "--symbol", "AAPL"], "--conid", "must be an integer", id="conid-text"),
        pytest.param(["--conid", "265598", "--symbol", ""], "--symbol", "blank", id="symbol-empty"),
        pytest.param(["--conid", "265598", "--symbol", "   "], "--symbol", "blank", id="symbol-spaces"),
        pytest.param(["--conid", "1", "--symbol", "A", "--priority", "3"], "--priority", "got 3", id="priority-3"),
        pytest.param(["--conid", "1", "--symbol", "A", "--priority", "urgent"], "--priority", "urgent", id="priority"),
        pytest.param(["--conid", "1", "--symbol", "A", "--account", "DU-1"], "--account", "'DU-1'", id="account"),
        pytest.param(["--conid", "1", "--symbol", "A", "--account", ""], "--account", "letters", id="account-empty"),
    ],
)
def test_enqueue_refuses_a_bad_option_and_writes_nothing(
    call: Callable[..., Result], lake_root: Path, options: list[str], field: str, problem: str
) -> None:
    code, out, err = call("enqueue", *options)

    assert (code, out) == (1, "")
    assert "nothing written" in err
    assert f"  {field}: " in err and problem in err
    assert "Traceback" not in err
    assert_nothing_written(lake_root)


def test_enqueue_reports_every_bad_option_at_once(call: Callable[..., Result], lake_root: Path) -> None:
    code, _, err = call("enqueue", "--conid", "abc", "--symbol", "A", "--priority", "urgent")

    assert code == 1
    assert "--conid: must be an integer" in err and "--priority: must be" in err
    assert_nothing_written(lake_root)


# enqueue: a CSV file


@pytest.mark.system
def test_enqueue_from_file_as_a_real_command(tmp_path: Path, lake_root: Path, queue: PositionQueue, uri: str) -> None:
    items = write_csv(
        tmp_path / "items.csv",
        "conid,symbol,priority,account\n265598,AAPL,1,DU1000001\n272093,MSFT,,\n\n8314,IBM,2,DU1000002\n",
    )

    code, out, err = run_command("enqueue", "--from-file", str(items), lake_root=lake_root)

    assert code == 0 and steps("enqueue", err) == ["3 rows valid; writing them in one commit", "committed 3 items"]
    assert "Enqueued 3 items" in out and uri in out
    table = queue.read()
    assert table.select("conid", "symbol", "priority", "account", "status").rows() == [
        (265598, "AAPL", 1, "DU1000001", "PENDING"),
        (272093, "MSFT", 2, None, "PENDING"),
        (8314, "IBM", 2, "DU1000002", "PENDING"),
    ]


def test_enqueue_from_file_without_optional_columns_prints_json(
    call: Callable[..., Result], tmp_path: Path, queue: PositionQueue, uri: str
) -> None:
    items = write_csv(tmp_path / "items.csv", "symbol,conid\nAAPL,265598\nMSFT,272093\n")

    code, out, err = call("enqueue", "--from-file", str(items), "--json")

    assert (code, err) == (0, "")
    printed = json.loads(out)
    table = queue.read()
    assert printed == {"enqueued": 2, "request_ids": table["request_id"].to_list(), "table": uri}
    assert table.select("conid", "symbol", "priority").rows() == [(265598, "AAPL", 2), (272093, "MSFT", 2)]


@pytest.mark.system
def test_enqueue_from_file_with_a_bad_row_writes_nothing(
    tmp_path: Path, lake_root: Path, queue: PositionQueue, uri: str
) -> None:
    queue.insert(8314, "IBM")
    before = DeltaTable(uri).version()
    items = write_csv(tmp_path / "items.csv", "conid,symbol,priority\n265598,AAPL,1\n272093,MSFT,7\n")

    code, out, err = run_command("enqueue", "--from-file", str(items), lake_root=lake_root)

    assert (code, out) == (1, "")
    assert "nothing written" in err and str(items) in err
    assert "row 1 (line 3): priority:" in err
    assert "Traceback" not in err
    assert DeltaTable(uri).version() == before
    assert queue.read()["symbol"].to_list() == ["IBM"]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param("conid,symbol\n-5,AAPL\n", "row 0 (line 2): conid:", id="conid"),
        pytest.param("conid,symbol\n1,A\n2,B\nabc,C\n", "row 2 (line 4): conid:", id="conid-text"),
        pytest.param("conid,symbol\n265598, \n", "row 0 (line 2): symbol:", id="symbol"),
        pytest.param("conid,symbol,priority\n265598,AAPL,0\n", "row 0 (line 2): priority:", id="priority"),
        pytest.param("conid,symbol,account\n1,A,DU1\n2,B,DU 2\n", "row 1 (line 3): account:", id="account"),
        pytest.param("conid,ticker\n265598,AAPL\n", "line 1: symbol:", id="header"),
        pytest.param("", "header", id="empty-file"),
    ],
)
def test_enqueue_from_file_names_the_line_and_field(
    call: Callable[..., Result], tmp_path: Path, lake_root: Path, text: str, where: str
) -> None:
    items = write_csv(tmp_path / "items.csv", text)

    code, out, err = call("enqueue", "--from-file", str(items))

    assert (code, out) == (1, "")
    assert where in err and "nothing written" in err
    assert_nothing_written(lake_root)


def test_enqueue_from_a_missing_or_binary_file(call: Callable[..., Result], tmp_path: Path, lake_root: Path) -> None:
    code, out, err = call("enqueue", "--from-file", str(tmp_path / "absent.csv"))
    assert (code, out) == (1, "")
    assert "cannot read" in err and "absent.csv" in err

    binary = tmp_path / "items.csv"
    binary.write_bytes(b"conid,symbol\n\xff\xfe1,A\n")
    code, out, err = call("enqueue", "--from-file", str(binary))
    assert (code, out) == (1, "")
    assert "not UTF-8" in err
    assert_nothing_written(lake_root)


# Usage errors: exit 2, nothing written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["enqueue"], "--conid and --symbol required", id="nothing"),
        pytest.param(["enqueue", "--conid", "1"], "--symbol required", id="no-symbol"),
        pytest.param(["enqueue", "--symbol", "A"], "--conid required", id="no-conid"),
        pytest.param(["enqueue", "--from-file", "x.csv", "--conid", "1"], "cannot be combined with --conid", id="both"),
        pytest.param(["enqueue", "--from-file", "x.csv", "--priority", "1"], "--priority", id="file-priority"),
        pytest.param(["enqueue", "--conid", "1", "--symbol", "A", "--lake", ""], "--lake", id="empty-lake"),
        pytest.param(["enqueue", "--conid", "1", "--symbol", "A", "--bogus"], "unrecognized", id="unknown-flag"),
        pytest.param(["queue"], "required", id="queue-alone"),
        pytest.param(["queue", "import"], "PATH", id="import-no-path"),
        pytest.param(["queue", "drop"], "invalid choice", id="queue-unknown"),
    ],
)
def test_usage_errors_exit_2(call: Callable[..., Result], lake_root: Path, args: list[str], message: str) -> None:
    code, out, err = call(*args)

    assert (code, out) == (2, "")
    assert "usage:" in err and message in err
    assert_nothing_written(lake_root)
