"""`sync`: a claimed batch and one IB snapshot turned into rows, one per item and holding account, or a reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from position_pipeline.core import lake
from position_pipeline.core.account_download import AccountDownload
from position_pipeline.core.ib_reader import HeldPosition, IBSnapshot
from position_pipeline.core.sync import (
    accounts_read,
    given_back,
    missing_rates,
    position_moves,
    position_update_rows,
    read_summary,
    snapshot_results,
)

NOW = datetime(2030, 1, 2, 15, 0, 30, tzinfo=UTC)
AS_OF = datetime(2030, 1, 2, 14, 58, tzinfo=UTC)


def held(account: str, conid: int, quantity: float, value: float | None, **extra: object) -> HeldPosition:
    """A stock position with its portfolio values as of AS_OF in a USD account (overridable)."""
    fields: dict[str, object] = {
        "account": account, "conid": conid, "symbol": f"S{conid}", "sec_type": "STK", "expiry": "", "strike": 0.0,
        "right": "", "multiplier": "", "currency": "USD", "local_symbol": f"S{conid}", "trading_class": f"S{conid}",
        "exchange": "SMART", "position": quantity, "average_cost": 10.0,
        "market_price": None if value is None else value / quantity if quantity else 0.0, "market_value": value,
        "unrealized_pnl": None if value is None else 1.5, "realized_pnl": None if value is None else 0.5,
        "account_update_time": "09:58", "values_as_of": AS_OF, "base_currency": "USD", "fx_rate": 1.0,
        "connect_position": quantity,
    }  # fmt: skip
    fields.update(extra)
    return HeldPosition(**fields)  # type: ignore[arg-type]


def snapshot(*positions: HeldPosition, accounts: tuple[str, ...] = ("DU1", "DU2", "DU3")) -> IBSnapshot:
    return IBSnapshot(NOW, 7, 178, list(accounts), list(accounts), list(positions))


def batch(*items: tuple[str, int, str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "request_id": [i[0] for i in items],
            "conid": [i[1] for i in items],
            "symbol": ["S"] * len(items),
            "account": [i[2] for i in items],
            "created_at": [NOW] * len(items),
            "claimed_at": [NOW] * len(items),
            "claims": [1] * len(items),
        },
        schema_overrides={"claims": pl.Int32, "created_at": lake.UTC_TIMESTAMP, "claimed_at": lake.UTC_TIMESTAMP},
    )


def test_an_item_without_an_account_gets_a_row_for_every_holding_account() -> None:
    snap = snapshot(held("DU3", 11, 3.0, 30.0), held("DU1", 11, 1.0, 10.0), held("DU2", 11, 2.0, 20.0))
    results = snapshot_results(batch(("r1", 11, None)), snap)
    assert results.select("request_id", "account", "position", "error").rows() == [
        ("r1", "DU1", 1.0, None),
        ("r1", "DU2", 2.0, None),
        ("r1", "DU3", 3.0, None),
    ]
    rows = position_update_rows(results, "run-1")
    assert rows.height == 3 and rows.select("request_id", "account").unique().height == 3
    summary = read_summary(results, snap)
    assert (summary["items"], summary["found"], summary["not_found"], summary["rows"]) == (1, 1, 0, 3)
    assert summary["accounts"] == "DU1, DU2, DU3"


def test_items_keep_their_order_and_a_pinned_item_covers_only_its_account() -> None:
    """Items are judged once per (contract, pinned account) and joined back: order, duplicates and nulls survive."""
    snap = snapshot(held("DU1", 11, 5.0, 60.0), held("DU2", 11, 7.0, 84.0), held("DU1", 22, 1.0, 4.0))
    items = [("r1", 22, None), ("r2", 11, "DU2"), ("r3", 11, None), ("r4", 33, None), ("r5", 22, None),
             ("r6", 11, "DU1"), ("r7", 22, "DU2"), ("r8", 22, "DU9")]  # fmt: skip
    results = snapshot_results(batch(*items), snap)
    assert results.select("request_id", "account", "position").rows() == [
        ("r1", "DU1", 1.0),
        ("r2", "DU2", 7.0),
        ("r3", "DU1", 5.0),
        ("r3", "DU2", 7.0),
        ("r4", None, None),
        ("r5", "DU1", 1.0),
        ("r6", "DU1", 5.0),
        ("r7", None, None),
        ("r8", None, None),
    ]
    errors = dict(zip(results["request_id"], results["error"], strict=True))
    assert errors["r4"].startswith("not held: conid 33 is not a position in DU1, DU2, DU3")
    assert errors["r7"].startswith("not held: conid 22 is not a position in DU2")
    assert errors["r8"] == "account DU9 is not one of the accounts read (DU1, DU2, DU3)"
    assert set(results["client_id"].to_list()) == {7} and set(results["snapshot_at"].to_list()) == {NOW}


def test_one_holding_account_without_values_fails_the_whole_item_and_no_row_is_written() -> None:
    """All or nothing per item: a SUCCESS item has a row for every account holding its contract."""
    snap = snapshot(held("DU1", 11, 1.0, 10.0), held("DU2", 11, 2.0, None), held("DU1", 22, 1.0, 4.0))
    results = snapshot_results(batch(("r1", 11, None), ("r2", 11, "DU1"), ("r3", 22, None)), snap)
    assert results.select("request_id", "account", "error").rows() == [
        ("r1", None, "IB sent no portfolio values for conid 11 in DU2 (reqAccountUpdates)"),
        ("r2", "DU1", None),
        ("r3", "DU1", None),
    ]
    assert position_update_rows(results, "run-1")["request_id"].to_list() == ["r2", "r3"]


def test_an_account_without_a_usable_update_time_gives_no_row() -> None:
    snap = snapshot(held("DU1", 11, 1.0, 10.0, values_as_of=None, account_update_time="25:99"))
    [error] = snapshot_results(batch(("r1", 11, None)), snap)["error"].to_list()
    assert error == (
        "IB sent no usable account update time for DU1 (got '25:99'): the values of conid 11 have no known time"
    )


def test_base_values_are_the_contract_values_times_the_accounts_exchange_rate() -> None:
    snap = snapshot(
        held("DU1", 11, 10.0, 2000.0, currency="EUR", fx_rate=1.0842),  # USD account, EUR listing
        held("DU3", 11, 4.0, 800.0, currency="EUR", base_currency="EUR", fx_rate=1.0),  # EUR account
    )
    row = position_update_rows(snapshot_results(batch(("r1", 11, None)), snap), "run-1")
    values = row.select("account", "currency", "base_currency", "fx_rate", "market_value_base").rows()
    assert values == [("DU1", "EUR", "USD", 1.0842, pytest.approx(2168.4)), ("DU3", "EUR", "EUR", 1.0, 800.0)]
    first = row.row(0, named=True)
    assert first["unrealized_pnl_base"] == pytest.approx(1.5 * 1.0842)
    assert first["realized_pnl_base"] == pytest.approx(0.5 * 1.0842)


def test_a_currency_without_a_rate_has_null_base_values_and_a_reason_never_a_guessed_one() -> None:
    snap = snapshot(held("DU1", 11, 10.0, 50000.0, currency="JPY", fx_rate=None), held("DU1", 22, 1.0, 4.0))
    results = snapshot_results(batch(("r1", 11, None), ("r2", 22, None)), snap)
    rows = position_update_rows(results, "run-1")
    assert rows.select("request_id", "fx_rate", "market_value_base").rows() == [("r1", None, None), ("r2", 1.0, 4.0)]
    assert rows.filter(pl.col("request_id") == "r1")["market_value"].to_list() == [50000.0]
    assert missing_rates(results) == [
        "account DU1 (base USD) sent no ExchangeRate for JPY: 1 rows without base-currency values"
    ]


def test_the_row_has_the_downloads_quantity_and_the_move_is_reported() -> None:
    moved = held("DU2", 11, 150.0, 1500.0, connect_position=100.0)
    snap = snapshot(held("DU1", 11, 1.0, 10.0), moved)
    results = snapshot_results(batch(("r1", 11, None)), snap)
    assert results.select("account", "position").rows() == [("DU1", 1.0), ("DU2", 150.0)]
    assert position_moves(snap) == [
        "DU2 conid 11 (S11): reqPositions said 100, the account download 150; the row has 150"
    ]
    assert read_summary(results, snap)["position_moved"] == 1


def test_values_age_is_read_time_minus_values_time() -> None:
    old = AS_OF - timedelta(minutes=2)
    snap = snapshot(held("DU1", 11, 1.0, 10.0), held("DU2", 11, 1.0, 10.0, values_as_of=old))
    summary = read_summary(snapshot_results(batch(("r1", 11, None)), snap), snap)
    assert summary["values_age_seconds_max"] == 270.0
    assert summary["values_age_seconds_median"] == 210.0


def test_a_position_closed_today_keeps_a_row_with_quantity_zero() -> None:
    snap = snapshot(held("DU1", 11, 0.0, None, market_price=None, connect_position=0.0))
    row = position_update_rows(snapshot_results(batch(("r1", 11, None)), snap), "run-1").row(0, named=True)
    assert (row["position"], row["market_value"], row["market_value_base"]) == (0.0, 0.0, 0.0)


def test_items_that_need_an_account_not_read_are_given_back_the_others_judged() -> None:
    snap = snapshot(held("DU1", 11, 1.0, 10.0), held("DU1", 22, 1.0, 4.0), held("DU1", 33, 1.0, 4.0))
    snap.unavailable = {"DU2": "reqAccountUpdates(DU2) did not complete within 30 s"}
    snap.unread = {("DU2", 11), ("DU2", 44)}  # reqPositions lists them there; their values were never read
    items = batch(("r1", 11, None), ("r2", 11, "DU1"), ("r3", 22, None), ("r4", 44, None), ("r5", 33, "DU2"),
                  ("r6", 55, None))  # fmt: skip
    back = given_back(items, snap)
    reason = "account DU2 was not read: reqAccountUpdates(DU2) did not complete within 30 s"
    assert back == {"r1": reason, "r4": reason, "r5": reason}
    judged = snapshot_results(items.filter(~pl.col("request_id").is_in(list(back))), snap)
    assert judged.select("request_id", "account").rows() == [("r2", "DU1"), ("r3", "DU1"), ("r6", None)]
    assert judged["error"].to_list()[2].startswith("not held: conid 55")


def test_nothing_is_given_back_when_every_account_was_read() -> None:
    snap = snapshot(held("DU1", 11, 1.0, 10.0))
    assert given_back(batch(("r1", 11, None), ("r2", 11, "DU2")), snap) == {}


def test_accounts_read_lists_each_account_with_its_outcome_and_seconds() -> None:
    snap = snapshot(held("DU1", 11, 1.0, 10.0))
    snap.downloads["DU1"] = AccountDownload("DU1", NOW, update_time="09:58", values_as_of=AS_OF,
                                            base_currency="USD", rates={"USD": 1.0})  # fmt: skip
    snap.unavailable = {"DU2": "no accountDownloadEnd"}
    snap.seconds = {"DU1": 0.52, "DU2": 30.01}
    table = accounts_read(snap)
    assert table.select("account", "outcome", "seconds", "values_age_seconds").rows() == [
        ("DU1", "read", 0.52, 150.0),
        ("DU2", "no accountDownloadEnd", 30.01, None),
    ]
