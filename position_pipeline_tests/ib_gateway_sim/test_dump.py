"""The state as JSON (`--state-out`, `--state`): what each account was told (valued_at, exchange rates, reported
values) beside the live prices and rates, a round trip that keeps both, and dumps from before base currencies."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from position_pipeline.ib_gateway_sim.state import DEFAULT_TIMEZONE, GatewayState
from position_pipeline_tests.support.sim_contracts import AAPL, AAPL_CALL, ES, EURUSD, SAP

MOMENT = datetime(2027, 1, 4, 15, 30, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def big() -> GatewayState:
    return GatewayState.generate(positions=200, accounts=3, seed=1)


def test_json_round_trip(big: GatewayState) -> None:
    data = json.loads(json.dumps(big.to_json()))
    loaded = GatewayState.from_json(data)
    assert loaded.to_json() == big.to_json()
    assert loaded.holdings == big.holdings
    assert loaded.prices == big.prices
    assert loaded.accounts == big.accounts and loaded.cash == big.cash and loaded.seed == big.seed


def test_save_and_load(tmp_path: Path, big: GatewayState) -> None:
    path = tmp_path / "state.json"
    big.save(path)
    assert GatewayState.load(path).to_json() == big.to_json()


def test_to_json_nulls_where_a_contract_has_no_such_field() -> None:
    state = GatewayState(accounts=["DU1"])
    for contract, price in ((AAPL, 151.5), (AAPL_CALL, 6.0), (ES, 6000.0), (EURUSD, 1.05)):
        state.set_position("DU1", contract, 1.0, market_price=price)
    rows = {row["sec_type"]: row for row in state.to_json()["positions"]}
    optional = {kind: tuple(row[k] for k in ("right", "strike", "expiry", "multiplier")) for kind, row in rows.items()}
    assert optional == {
        "STK": (None, None, None, None),
        "OPT": ("C", 230.0, "20270115", "100"),
        "FUT": (None, None, "202703", "50"),
        "CASH": (None, None, None, None),
    }
    assert rows["STK"]["market_value"] == 151.5 and rows["OPT"]["market_value"] == 600.0


def _one_position_json() -> dict[str, Any]:
    state = GatewayState(accounts=["DU1"])
    state.set_position("DU1", AAPL, 10.0, average_cost=150.0, market_price=151.5)
    return state.to_json()


def test_from_json_bad_sec_type_names_the_field() -> None:
    data = _one_position_json()
    data["positions"][0]["sec_type"] = "BOND"
    with pytest.raises(ValueError, match=r"positions\[0\]\.sec_type: 'BOND'"):
        GatewayState.from_json(data)


def test_from_json_unknown_account_names_the_field() -> None:
    data = _one_position_json()
    data["positions"][0]["account"] = "DU999"
    with pytest.raises(ValueError, match=r"positions\[0\]\.account: 'DU999'"):
        GatewayState.from_json(data)


@pytest.mark.parametrize("key", ["conid", "symbol", "sec_type", "account", "quantity", "average_cost", "market_price"])
def test_from_json_missing_key_names_the_field(key: str) -> None:
    data = _one_position_json()
    del data["positions"][0][key]
    with pytest.raises(ValueError, match=rf"positions\[0\]\.{key}: missing"):
        GatewayState.from_json(data)


def test_from_json_non_numeric_quantity_names_the_field() -> None:
    data = _one_position_json()
    data["positions"][0]["quantity"] = "lots"
    with pytest.raises(ValueError, match=r"positions\[0\]\.quantity: 'lots' is not a number"):
        GatewayState.from_json(data)


def test_from_json_missing_accounts_names_the_field() -> None:
    with pytest.raises(ValueError, match="'accounts'"):
        GatewayState.from_json({"positions": []})


def test_from_json_derives_values_from_quantity_cost_and_price() -> None:
    data = _one_position_json()
    data["positions"][0]["market_value"] = 1.0  # ignored: derived on load
    data["positions"][0]["unrealized_pnl"] = 1.0
    row = GatewayState.from_json(data).to_json()["positions"][0]
    assert (row["market_value"], row["unrealized_pnl"]) == (1515.0, 15.0)


# --- what was told, beside what is live -----------------------------------------------------------------------------


def _told_then_moved() -> GatewayState:
    """Valued at MOMENT, then prices and rates moved with no revalue: told and live differ."""
    state = GatewayState(accounts=["DU1", "DU2"], base_currencies={"DU2": "EUR"}, timezone="Asia/Tokyo", seed=3)
    state.set_position("DU1", AAPL, 100.0, average_cost=150.25, market_price=151.5)
    state.set_position("DU1", SAP, 40.0, average_cost=220.0, market_price=230.0)
    state.set_position("DU2", SAP, -10.0, average_cost=231.0)
    state.cash["DU1"]["GBP"] = 5_000.0
    state.revalue(at=MOMENT)
    for _ in range(5):
        state.move_prices()
    return state


def test_the_dump_carries_zone_bases_rates_valued_at_and_the_reported_values() -> None:
    state = _told_then_moved()
    data = json.loads(json.dumps(state.to_json()))
    assert data["timezone"] == "Asia/Tokyo"
    assert data["base_currencies"] == {"DU1": "USD", "DU2": "EUR"}
    assert data["cash"] == {"DU1": {"USD": 1_000_000.0, "GBP": 5_000.0}, "DU2": {"EUR": 1_000_000.0}}
    assert data["fx_rates"] == state.fx_rates and data["fx_rates"]["EUR"] != 1.05  # live, moved
    assert data["valuations"]["DU1"]["valued_at"] == "2027-01-04T15:30:12+00:00"
    assert data["valuations"]["DU1"]["exchange_rates"]["EUR"] == 1.05  # as told at MOMENT
    assert data["valuations"]["DU2"]["exchange_rates"]["USD"] == round(1 / 1.05, 6)
    assert data["valuations"]["DU2"]["exchange_rates"]["EUR"] == 1.0
    sap = next(p for p in data["positions"] if p["account"] == "DU1" and p["symbol"] == "SAP")
    assert (sap["market_price"], sap["market_value"], sap["unrealized_pnl"]) == (230.0, 9200.0, 400.0)
    assert sap["live_price"] == state.prices[SAP.conid] != 230.0
    assert sap["currency"] == "EUR" and sap["exchange"] == "IBIS"


def test_a_round_trip_keeps_what_was_told_and_what_is_live() -> None:
    state = _told_then_moved()
    loaded = GatewayState.from_json(json.loads(json.dumps(state.to_json())))
    assert loaded.to_json() == state.to_json()
    assert loaded.valuations == state.valuations  # valued_at, per-holding values, rates and ACCT_VALUE rows
    assert loaded.prices == state.prices and loaded.fx_rates == state.fx_rates
    assert loaded.timezone == "Asia/Tokyo" and loaded.account_update_time("DU1") == "00:30"  # 15:30 UTC in Tokyo


def test_a_generated_desk_round_trips(big: GatewayState) -> None:
    loaded = GatewayState.from_json(json.loads(json.dumps(big.to_json())))
    assert loaded.valuations == big.valuations and loaded.base_currencies == big.base_currencies


def test_a_dump_from_before_base_currencies_loads_as_usd_in_the_default_zone() -> None:
    old = {
        "seed": 4,
        "accounts": ["DU1"],
        "cash": {"DU1": 250_000.0},
        "positions": [
            {"account": "DU1", "conid": 265598, "symbol": "AAPL", "sec_type": "STK", "currency": "USD",
             "exchange": "NASDAQ", "quantity": 10.0, "average_cost": 150.0, "market_price": 151.5},
        ],
    }  # fmt: skip
    before = datetime.now(UTC)
    state = GatewayState.from_json(old)
    assert state.base_currencies == {"DU1": "USD"} and state.cash == {"DU1": {"USD": 250_000.0}}
    assert state.timezone == DEFAULT_TIMEZONE == "America/New_York"
    assert before <= state.valued_at("DU1") <= datetime.now(UTC)  # valued on load, at the dumped price
    holding = state.holding("DU1", 265598)
    assert holding is not None and state.valuation(holding).market_value == 1515.0
    assert state.prices[265598] == 151.5


def test_a_valuation_without_a_utc_offset_names_the_field() -> None:
    data = _told_then_moved().to_json()
    data["valuations"]["DU2"]["valued_at"] = "2027-01-04T15:30:12"
    with pytest.raises(ValueError, match=r"valuations\.DU2\.valued_at"):
        GatewayState.from_json(data)


def test_an_unknown_time_zone_is_refused() -> None:
    data = _told_then_moved().to_json()
    data["timezone"] = "Mars/Olympus"
    with pytest.raises(ValueError, match="Mars/Olympus"):
        GatewayState.from_json(data)
    zurich = GatewayState.from_json({**data, "timezone": "Europe/Zurich"})
    assert zurich.valued_at("DU1") == MOMENT and zurich.account_update_time("DU1") == "16:30"
