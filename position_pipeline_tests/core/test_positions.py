"""The read side on real Delta tables under tmp_path: the latest row per (account, conid) as of any moment, what a
reader gets back (schema, nulls, age), and which partitions and columns it reads. The shared history is
support/position_history.py."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from position_pipeline.core import lake, positions
from position_pipeline.core.positions import latest_positions
from position_pipeline_tests.support.position_history import (
    AAPL,
    AFTER_ALL,
    B1,
    B2,
    B3,
    B4,
    DU1,
    DU2,
    MSFT,
    OUTPUT_COLUMNS,
    SPY_PUT,
    append_batch,
    history_lake,
    position_row,
    write_history,
)

pytestmark = pytest.mark.timeout(60)

NEW_YORK = timezone(timedelta(hours=-5))


@pytest.fixture(scope="module")
def history_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A lake holding the shared history; tests must not change it."""
    return history_lake(tmp_path_factory)


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
    append_batch(uri, [position_row(hour_ago, DU1, AAPL, 100.0)])
    append_batch(uri, [position_row(hour_ago + timedelta(days=1), DU1, AAPL, 200.0)])  # not known yet
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
    append_batch(
        uri, [position_row(B1, DU1, AAPL, 100.0, request_id="a"), position_row(B1, DU1, AAPL, 100.0, request_id="b")]
    )
    frame = latest_positions(root, now=AFTER_ALL)
    assert frame.height == 1 and frame["request_id"].item() == "b"


def test_partitions_after_as_of_are_never_opened(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    uri = write_history(root)
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
    append_batch(uri, [position_row(days[0], DU2, MSFT, 10.0)])  # the only row of DU2 MSFT: its partition has a winner
    for at in days:
        append_batch(uri, [position_row(at, DU1, AAPL, float(at.day))])
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
