"""The read side on real Delta tables under tmp_path: the latest row per (account, conid) as of any moment, what a
reader gets back (schema, nulls, age), which partitions and columns it reads, and the `positions` command's formats.

Every batch is one append, the way the sync job commits, with snapshot_date the UTC day of snapshot_at."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from position_pipeline.cli import positions
from position_pipeline.cli.positions import latest_positions
from position_pipeline.core import lake

pytestmark = pytest.mark.timeout(60)

DU1, DU2 = "DU1000001", "DU1000002"
AAPL, MSFT, SPY_PUT = 265598, 272093, 700001
NEW_YORK = timezone(timedelta(hours=-5))

# The history every read-only test shares: four batches over three UTC days (2030-01-04 has none).
B1 = datetime(2030, 1, 2, 14, 30, tzinfo=UTC)
B2 = datetime(2030, 1, 3, 0, 30, tzinfo=UTC)  # still 2030-01-02 in New York
B3 = datetime(2030, 1, 3, 20, 0, tzinfo=UTC)
B4 = datetime(2030, 1, 5, 15, 0, tzinfo=UTC)
AFTER_ALL = datetime(2030, 1, 6, 12, 0, tzinfo=UTC)

OUTPUT_COLUMNS = [
    "account", "conid", "symbol", "sec_type", "right", "strike", "expiry", "multiplier", "currency", "local_symbol",
    "position", "average_cost", "market_price", "market_value", "unrealized_pnl", "realized_pnl",
    "account_update_time", "snapshot_at", "request_id", "run_id", "age_seconds",
]  # fmt: skip


def _row(at: datetime, account: str, conid: int, position: float, **values: Any) -> dict[str, Any]:
    """One position_updates row; a stock unless `values` say otherwise."""
    symbol = {AAPL: "AAPL", MSFT: "MSFT"}.get(conid, "SPY")
    price = values.pop("market_price", 190.0)
    known = 0.0 if price is None else price  # a closed position may come without a price
    row: dict[str, Any] = {
        "request_id": f"req-{account}-{conid}-{at:%d%H%M}",
        "conid": conid,
        "account": account,
        "symbol": symbol,
        "sec_type": "STK",
        "right": None,
        "strike": None,
        "expiry": None,
        "multiplier": None,
        "currency": "USD",
        "local_symbol": symbol,
        "position": position,
        "average_cost": 150.0,
        "market_price": price,
        "market_value": position * known,
        "unrealized_pnl": position * (known - 150.0),
        "realized_pnl": 0.0,
        "account_update_time": f"{at:%H:%M}",
        "queued_at": at - timedelta(seconds=4),
        "snapshot_at": at,
        "run_id": f"run-{at:%d%H%M}",
        "snapshot_date": at.astimezone(UTC).date(),
    }
    row.update(values)
    return row


def _spy_put(at: datetime, position: float) -> dict[str, Any]:
    return _row(
        at,
        DU1,
        SPY_PUT,
        position,
        sec_type="OPT",
        right="P",
        strike=450.0,
        expiry="20300118",
        multiplier=100.0,
        local_symbol="SPY   300118P00450000",
        market_price=3.25,
    )


def _append(uri: str, rows: list[dict[str, Any]]) -> None:
    """One batch: one commit."""
    write_deltalake(uri, pa.Table.from_pylist(rows, schema=lake.POSITION_UPDATES_ARROW_SCHEMA), mode="append")


def _write_history(root: str) -> str:
    uri = lake.ensure_position_updates_table(root)
    _append(
        uri,
        [
            _row(B1, DU1, AAPL, 100.0),
            _spy_put(B1, 5.0),
            _row(B1, DU2, AAPL, 50.0),
            _row(B1, DU2, MSFT, 10.0),  # never refreshed again: still the latest known
        ],
    )
    _append(uri, [_row(B2, DU1, AAPL, 150.0), _row(B2, DU2, AAPL, 0.0, market_price=None, realized_pnl=None)])
    _append(uri, [_row(B3, DU1, AAPL, 120.0), _spy_put(B3, 7.0)])
    _append(uri, [_row(B4, DU1, AAPL, 80.0)])
    return uri


@pytest.fixture(scope="module")
def history_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A lake holding the shared history; tests must not change it."""
    root = str(tmp_path_factory.mktemp("history") / "lake")
    _write_history(root)
    return root


def _positions(frame: pl.DataFrame) -> dict[tuple[str, int], float]:
    return {(r["account"], r["conid"]): r["position"] for r in frame.iter_rows(named=True)}


# latest_positions


def test_latest_row_per_account_and_contract_across_batches_and_days(history_root: str) -> None:
    frame = latest_positions(history_root, now=AFTER_ALL)
    assert frame.columns == OUTPUT_COLUMNS
    assert frame.schema == positions.output_schema()
    assert frame.select("account", "conid").rows() == [(DU1, AAPL), (DU1, SPY_PUT), (DU2, AAPL), (DU2, MSFT)]
    assert _positions(frame) == {(DU1, AAPL): 80.0, (DU1, SPY_PUT): 7.0, (DU2, AAPL): 0.0, (DU2, MSFT): 10.0}
    by_key = {(r["account"], r["conid"]): r for r in frame.iter_rows(named=True)}
    assert by_key[DU1, AAPL]["snapshot_at"] == B4 and by_key[DU1, AAPL]["run_id"] == "run-051500"
    assert by_key[DU1, SPY_PUT]["snapshot_at"] == B3
    # Closed: the latest known state is a row with quantity 0 (and no price), not a missing row.
    assert by_key[DU2, AAPL]["snapshot_at"] == B2 and by_key[DU2, AAPL]["market_price"] is None
    # Refreshed only in the first batch, three days before the newest partition: still found.
    assert by_key[DU2, MSFT]["snapshot_at"] == B1
    assert by_key[DU2, MSFT]["request_id"] == f"req-{DU2}-{MSFT}-021430"


def test_as_of_picks_the_value_known_then(history_root: str) -> None:
    def aapl(as_of: datetime) -> float:
        return _positions(latest_positions(history_root, as_of=as_of))[DU1, AAPL]

    between = B2 + (B3 - B2) / 2
    assert aapl(between) == 150.0, "between the batches that changed it: the earlier value"
    assert aapl(B3 + timedelta(hours=1)) == 120.0, "after both: the later value"
    assert aapl(B3) == 120.0, "a row taken exactly at as_of is known at as_of"
    assert aapl(B3 - timedelta(microseconds=1)) == 150.0
    assert aapl(datetime(2030, 1, 4, 12, tzinfo=UTC)) == 120.0, "a day without batches: the day before's"
    assert _positions(latest_positions(history_root, as_of=between)) == {
        (DU1, AAPL): 150.0,
        (DU1, SPY_PUT): 5.0,
        (DU2, AAPL): 0.0,
        (DU2, MSFT): 10.0,
    }
    assert latest_positions(history_root, as_of=B1 - timedelta(seconds=1)).is_empty(), "before any row"


def test_as_of_in_another_timezone_reads_its_utc_day(history_root: str) -> None:
    # 20:00 on 2 January in New York is 01:00 on 3 January UTC: B2 (00:30 UTC, in partition 2030-01-03) is known.
    evening = datetime(2030, 1, 2, 20, 0, tzinfo=NEW_YORK)
    frame = latest_positions(history_root, as_of=evening)
    assert _positions(frame)[DU1, AAPL] == 150.0
    assert frame.filter(pl.col("conid") == AAPL, pl.col("account") == DU1)["age_seconds"].item() == 30 * 60
    earlier = datetime(2030, 1, 2, 19, 0, tzinfo=NEW_YORK)  # midnight UTC: before B2
    assert _positions(latest_positions(history_root, as_of=earlier))[DU1, AAPL] == 100.0


def test_account_filter(history_root: str) -> None:
    frame = latest_positions(history_root, now=AFTER_ALL, account=DU2)
    assert _positions(frame) == {(DU2, AAPL): 0.0, (DU2, MSFT): 10.0}
    assert _positions(latest_positions(history_root, as_of=B1, account=DU1)) == {
        (DU1, AAPL): 100.0,
        (DU1, SPY_PUT): 5.0,
    }
    unknown = latest_positions(history_root, now=AFTER_ALL, account="DU9999999")
    assert unknown.is_empty() and unknown.schema == positions.output_schema()


def test_a_stock_has_null_right_strike_expiry_and_an_option_has_them(history_root: str) -> None:
    frame = latest_positions(history_root, now=AFTER_ALL, account=DU1)
    stock = frame.filter(pl.col("conid") == AAPL).row(0, named=True)
    option = frame.filter(pl.col("conid") == SPY_PUT).row(0, named=True)
    assert (stock["sec_type"], stock["right"], stock["strike"], stock["expiry"], stock["multiplier"]) == (
        "STK",
        None,
        None,
        None,
        None,
    )
    assert (option["sec_type"], option["right"], option["strike"], option["expiry"], option["multiplier"]) == (
        "OPT",
        "P",
        450.0,
        "20300118",
        100.0,
    )
    assert option["local_symbol"] == "SPY   300118P00450000" and option["market_value"] == 7.0 * 3.25


def test_age_seconds_is_as_of_minus_snapshot_at(history_root: str) -> None:
    now = B4 + timedelta(seconds=90, microseconds=500_000)
    frame = latest_positions(history_root, now=now)
    got = {(r["account"], r["conid"]): r["age_seconds"] for r in frame.iter_rows(named=True)}
    assert got == {
        (DU1, AAPL): 90.5,
        (DU1, SPY_PUT): (now - B3).total_seconds(),
        (DU2, AAPL): (now - B2).total_seconds(),
        (DU2, MSFT): (now - B1).total_seconds(),
    }
    assert got[DU2, MSFT] == 3 * 86_400 + 30 * 60 + 90.5
    # With as_of given, the age is counted from as_of, whatever now is.
    at_b3 = latest_positions(history_root, as_of=B3, now=now)
    assert at_b3.filter(pl.col("conid") == SPY_PUT)["age_seconds"].item() == 0.0


def test_default_as_of_is_the_current_time(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    uri = lake.ensure_position_updates_table(root)
    hour_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    _append(uri, [_row(hour_ago, DU1, AAPL, 100.0)])
    _append(uri, [_row(hour_ago + timedelta(days=1), DU1, AAPL, 200.0)])  # not known yet
    before = datetime.now(UTC)
    frame = latest_positions(root)
    after = datetime.now(UTC)
    assert _positions(frame) == {(DU1, AAPL): 100.0}
    assert (before - hour_ago).total_seconds() <= frame["age_seconds"].item() <= (after - hour_ago).total_seconds()


def test_naive_times_are_refused(history_root: str) -> None:
    with pytest.raises(ValueError, match=r"as_of must be timezone-aware"):
        latest_positions(history_root, as_of=datetime(2030, 1, 3, 12, 0))
    with pytest.raises(ValueError, match=r"now must be timezone-aware"):
        latest_positions(history_root, now=datetime(2030, 1, 3, 12, 0))
    with pytest.raises(ValueError, match=r"now must be timezone-aware"):
        latest_positions(history_root, as_of=B3, now=datetime(2030, 1, 3, 12, 0))
    with pytest.raises(TypeError, match="as_of must be a datetime"):
        latest_positions(history_root, as_of=date(2030, 1, 3))  # type: ignore[arg-type]


def test_missing_or_empty_table_gives_an_empty_frame_with_the_columns(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    missing = latest_positions(root, now=AFTER_ALL)
    assert missing.is_empty() and missing.schema == positions.output_schema()
    assert not (tmp_path / "lake").exists(), "reading creates nothing"

    (tmp_path / "lake" / "positions" / "position_updates").mkdir(parents=True)  # a folder, not a table
    assert latest_positions(root, now=AFTER_ALL).schema == positions.output_schema()

    shutil.rmtree(tmp_path / "lake")
    lake.ensure_position_updates_table(root)
    empty = latest_positions(root, now=AFTER_ALL)
    assert empty.is_empty() and empty.schema == positions.output_schema()
    assert latest_positions(root, now=AFTER_ALL, account=DU1).schema == positions.output_schema()


def test_two_rows_of_one_contract_in_one_batch_give_one_position(tmp_path: Path) -> None:
    """The same contract enqueued twice into one batch: one IB read, two rows with the same snapshot_at."""
    root = str(tmp_path / "lake")
    uri = lake.ensure_position_updates_table(root)
    _append(uri, [_row(B1, DU1, AAPL, 100.0, request_id="a"), _row(B1, DU1, AAPL, 100.0, request_id="b")])
    frame = latest_positions(root, now=AFTER_ALL)
    assert frame.height == 1 and frame["request_id"].item() == "b"


def test_partitions_after_as_of_are_never_opened(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    uri = _write_history(root)
    as_of = datetime(2030, 1, 3, 23, tzinfo=UTC)
    expected = latest_positions(root, as_of=as_of)
    shutil.rmtree(Path(uri) / "snapshot_date=2030-01-05")  # the table now names files that are gone
    assert latest_positions(root, as_of=as_of).equals(expected)
    with pytest.raises(Exception, match=r"(?i)not found|no such file"):
        latest_positions(root, now=AFTER_ALL)


def test_the_key_scan_reads_three_columns_and_full_rows_come_only_from_winning_partitions(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Counted from polars' own scan log: files skipped by the predicate, columns projected per file."""
    root = str(tmp_path / "lake")
    uri = lake.ensure_position_updates_table(root)
    days = [datetime(2030, 1, d, 15, tzinfo=UTC) for d in range(1, 9)]
    _append(uri, [_row(days[0], DU2, MSFT, 10.0)])  # the only row of DU2 MSFT: its partition has a winner
    for at in days:
        _append(uri, [_row(at, DU1, AAPL, float(at.day))])
    as_of = datetime(2030, 1, 6, 16, tzinfo=UTC)  # partitions 1-6 of 8; winners on day 1 and day 6

    capfd.readouterr()
    with pl.Config(verbose=True):
        frame = latest_positions(root, as_of=as_of)
    log = capfd.readouterr().err
    assert _positions(frame) == {(DU1, AAPL): 6.0, (DU2, MSFT): 10.0}

    skipped = re.findall(r"skipping (\d+) / (\d+) files", log)
    projected = re.findall(r"project: (\d+) / (\d+)", log)
    if not skipped or not projected:
        pytest.skip("this polars version logs its scans differently")
    total = len(days) + 1
    assert [(int(a), int(b)) for a, b in skipped] == [(2, total), (total - 3, total)], log
    key_scan = [int(n) for n, _ in projected if int(n) < 5]
    full_rows = [int(n) for n, _ in projected if int(n) >= 5]
    assert len(key_scan) == total - 2 and set(key_scan) == {3}, "account, conid, snapshot_at of partitions 1-6"
    assert len(full_rows) == 3 and set(full_rows) == {len(positions.VALUE_COLUMNS)}, "day 1 (two files) and day 6"


# The command


def _command() -> argparse.ArgumentParser:
    """`positions` as cli.py registers it: a subcommand whose flags come from add_arguments."""
    parser = argparse.ArgumentParser(prog="position-pipeline")
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("positions")
    positions.add_arguments(sub)
    sub.set_defaults(handler=positions.run)
    return parser


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    args = _command().parse_args(["positions", *argv])
    code = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_command_csv_parses_back(history_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "--lake", history_root, "--as-of", "2030-01-06T12:00:00Z", "--format", "csv")
    assert (code, err) == (0, "")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == OUTPUT_COLUMNS
    assert [(r["account"], int(r["conid"]), float(r["position"])) for r in rows] == [
        (DU1, AAPL, 80.0),
        (DU1, SPY_PUT, 7.0),
        (DU2, AAPL, 0.0),
        (DU2, MSFT, 10.0),
    ]
    assert rows[0]["snapshot_at"] == "2030-01-05T15:00:00.000000Z"
    assert datetime.fromisoformat(rows[0]["snapshot_at"]) == B4
    assert float(rows[0]["age_seconds"]) == (AFTER_ALL - B4).total_seconds()
    assert (rows[0]["right"], rows[0]["strike"], rows[0]["expiry"]) == ("", "", ""), "null is an empty field"
    parsed = pl.read_csv(io.StringIO(out), schema_overrides={"snapshot_at": pl.String})
    assert parsed.height == 4 and parsed["strike"].to_list() == [None, 450.0, None, None]


def test_command_json_loads(history_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--lake", history_root, "--as-of", "2030-01-03T10:00:00-05:00", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert isinstance(rows, list) and [set(r) for r in rows] == [set(OUTPUT_COLUMNS)] * 4
    aapl = rows[0]
    assert (aapl["account"], aapl["conid"], aapl["position"]) == (DU1, AAPL, 150.0)
    assert aapl["snapshot_at"] == "2030-01-03T00:30:00.000000Z" and aapl["right"] is None
    assert aapl["age_seconds"] == 14.5 * 3600  # as of 15:00 UTC
    assert rows[2]["market_price"] is None  # DU2 AAPL closed


def test_command_table_is_aligned_and_shows_the_age(history_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--lake", history_root, "--as-of", "2030-01-05T15:02:05Z")
    assert code == 0
    title, header, *rows = out.splitlines()
    assert title.startswith(f"4 positions as of 2030-01-05T15:02:05Z in {history_root}")
    assert header.split()[:3] == ["ACCOUNT", "CONID", "SYMBOL"] and header.endswith("AGE")
    assert len(rows) == 4
    age_end = len(header)
    assert [row[:age_end].rsplit(maxsplit=1)[-1] for row in rows] == ["2m05s", "1d19h", "2d14h", "3d00h"]
    assert all(len(row) == len(header) for row in rows), "the age column is right-aligned under its header"
    symbol_at = header.index("SYMBOL")
    assert [row[symbol_at : symbol_at + 4] for row in rows] == ["AAPL", "SPY ", "AAPL", "MSFT"]
    assert "450.00" in rows[1] and "P" in rows[1].split()


def test_command_account_and_lake_from_the_environment(
    history_root: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(lake.LAKE_URI_VARIABLE, history_root)
    code, out, _ = _run(capsys, "--account", DU2, "--as-of", "2030-01-06T00:00:00+00:00", "--format", "json")
    assert code == 0
    assert [(r["account"], r["conid"]) for r in json.loads(out)] == [(DU2, AAPL), (DU2, MSFT)]


def test_command_on_a_missing_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "nowhere")
    assert _run(capsys, "--lake", root, "--format", "json")[:2] == (0, "[]\n")
    code, out, _ = _run(capsys, "--lake", root, "--format", "csv")
    assert (code, out) == (0, ",".join(OUTPUT_COLUMNS) + "\n")
    code, out, _ = _run(capsys, "--lake", root)
    assert code == 0 and "0 positions" in out and "(no table yet)" in out
    assert not Path(root).exists()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("2030-01-03T12:00:00", "has no timezone"),
        ("2030-01-03", "has no timezone"),
        ("yesterday", "not an ISO-8601 timestamp"),
        ("", "not an ISO-8601 timestamp"),
    ],
)
def test_command_refuses_an_as_of_without_timezone_or_unparsable(
    value: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _command().parse_args(["positions", "--as-of", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --as-of" in err and problem in err


def test_command_reports_an_unreadable_lake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "lake")
    uri = _write_history(root)
    shutil.rmtree(Path(uri) / "snapshot_date=2030-01-05")
    code, out, err = _run(capsys, "--lake", root, "--as-of", "2030-01-06T00:00:00Z")
    assert (code, out) == (1, "")
    assert err.startswith("position-pipeline positions: error: ") and err.count("\n") == 1


def test_importing_the_module_leaves_polars_and_deltalake_unloaded() -> None:
    """cli.py builds its parser (also for --help) by importing the modules that add arguments."""
    code = "import sys, position_pipeline.cli.positions; print(sorted({'polars', 'deltalake'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "[]"
