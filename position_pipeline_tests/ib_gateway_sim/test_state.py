"""The gateway's accounts, contracts, positions and prices: seeded generation, the JSON form, changes announced to
listeners, seeded price moves, and the valuation IB reports in portfolio updates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from position_pipeline.ib_gateway_sim.state import SEC_TYPES, Contract, GatewayState, Holding, state_summary

AAPL = Contract(265598, "AAPL", "STK", "USD", "NASDAQ", "AAPL", "NMS")
AAPL_CALL = Contract(
    700_000_001, "AAPL", "OPT", "USD", "SMART", "AAPL  270115C00230000", "AAPL", "20270115", 230.0, "C", "100"
)
ES = Contract(500_000_000, "ES", "FUT", "USD", "CME", "ESH7", "ES", "202703", 0.0, "", "50")
EURUSD = Contract(400_000_000, "EUR", "CASH", "USD", "IDEALPRO", "EUR.USD", "EUR.USD")


@pytest.fixture(scope="module")
def big() -> GatewayState:
    return GatewayState.generate(positions=200, accounts=3, seed=1)


def by_type(state: GatewayState, sec_type: str) -> list[Holding]:
    return [h for h in state.positions() if h.contract.sec_type == sec_type]


# --- generation ---------------------------------------------------------------------------------------------------


def test_generate_is_deterministic_per_seed() -> None:
    first = GatewayState.generate(positions=120, accounts=3, seed=42)
    second = GatewayState.generate(positions=120, accounts=3, seed=42)
    assert first.to_json() == second.to_json()
    assert first.holdings == second.holdings and first.prices == second.prices


def test_generate_differs_across_seeds() -> None:
    a = GatewayState.generate(positions=120, accounts=3, seed=1)
    b = GatewayState.generate(positions=120, accounts=3, seed=2)
    assert a.to_json()["positions"] != b.to_json()["positions"]
    assert a.accounts == b.accounts  # account names do not depend on the seed


def test_generate_spreads_positions_round_robin_over_paper_accounts(big: GatewayState) -> None:
    assert big.accounts == ["DU1000001", "DU1000002", "DU1000003"]
    assert len(big.holdings) == 200  # no (account, conid) was drawn twice, or a holding would have been overwritten
    counts = [sum(1 for _ in big.positions(a)) for a in big.accounts]
    assert counts == [67, 67, 66]
    for (account, conid), holding in big.holdings.items():
        assert (holding.account, holding.contract.conid) == (account, conid)
    assert big.cash == dict.fromkeys(big.accounts, 1_000_000.0)


def test_generate_covers_every_sec_type(big: GatewayState) -> None:
    summary = state_summary(big)
    assert set(summary) == set(SEC_TYPES) == {"STK", "OPT", "FUT", "CASH"}
    assert all(summary[t] > 0 for t in SEC_TYPES), summary
    assert sum(summary.values()) == 200


def test_every_held_contract_has_a_price(big: GatewayState) -> None:
    assert {h.contract.conid for h in big.positions()} == set(big.prices)
    assert all(price > 0 for price in big.prices.values())


def test_one_conid_is_one_contract_across_accounts(big: GatewayState) -> None:
    contracts: dict[int, Contract] = {}
    for holding in big.positions():
        assert contracts.setdefault(holding.contract.conid, holding.contract) == holding.contract


def test_options_have_strike_right_expiry_and_multiplier(big: GatewayState) -> None:
    options = by_type(big, "OPT")
    assert options
    for h in options:
        c = h.contract
        assert c.strike > 0
        assert c.right in ("C", "P")
        assert re.fullmatch(r"20\d{2}(0[1-9]|1[0-2])\d{2}", c.expiry)
        assert c.multiplier == "100" and c.multiplier_value == 100.0
        assert c.local_symbol == f"{c.symbol:<6}{c.expiry[2:]}{c.right}{int(c.strike * 1000):08d}"
        assert h.quantity == int(h.quantity) and h.quantity != 0


def test_stocks_have_no_right_strike_expiry_or_multiplier(big: GatewayState) -> None:
    stocks = by_type(big, "STK")
    assert stocks
    for h in stocks:
        c = h.contract
        assert (c.right, c.strike, c.expiry, c.multiplier) == ("", 0.0, "", "")
        assert c.multiplier_value == 1.0
        assert h.quantity % 10 == 0
    assert {h.contract.conid for h in stocks if h.contract.symbol == "AAPL"} <= {265598}  # IB's real conid


def test_futures_and_forex_fields(big: GatewayState) -> None:
    for h in by_type(big, "FUT"):
        c = h.contract
        assert re.fullmatch(r"20\d{4}", c.expiry)
        assert c.multiplier.isdigit() and c.strike == 0.0 and c.right == ""
    for h in by_type(big, "CASH"):
        c = h.contract
        assert c.local_symbol == f"{c.symbol}.{c.currency}"
        assert c.exchange == "IDEALPRO" and c.multiplier == "" and c.expiry == ""


def test_generate_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        GatewayState.generate(positions=-1)
    with pytest.raises(ValueError):
        GatewayState.generate(positions=1, accounts=0)
    with pytest.raises(ValueError):
        GatewayState(accounts=[])


def test_generate_with_no_positions() -> None:
    state = GatewayState.generate(positions=0, accounts=2)
    assert state.holdings == {} and state.accounts == ["DU1000001", "DU1000002"]


# --- JSON -----------------------------------------------------------------------------------------------------------


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


# --- changes --------------------------------------------------------------------------------------------------------


def test_set_position_adds_and_changes_and_notifies() -> None:
    state = GatewayState(accounts=["DU1", "DU2"])
    heard: list[Holding] = []
    state.subscribe(heard.append)
    added = state.set_position("DU1", AAPL, 100.0, market_price=150.0)
    assert added == Holding("DU1", AAPL, 100.0, 150.0)  # a new position costs the market price
    changed = state.set_position("DU1", AAPL, 120.0)
    assert changed.average_cost == 150.0  # the cost stays when not given
    assert heard == [added, changed]
    assert state.holding("DU1", 265598) == changed
    option = state.set_position("DU2", AAPL_CALL, 2.0, market_price=6.25)
    assert option.average_cost == 625.0  # per unit, multiplier included


def test_set_position_rejects_unknown_accounts_and_unpriced_contracts() -> None:
    state = GatewayState(accounts=["DU1"])
    with pytest.raises(KeyError, match="DU2"):
        state.set_position("DU2", AAPL, 1.0, market_price=1.0)
    with pytest.raises(ValueError, match="no price"):
        state.set_position("DU1", AAPL, 1.0)
    assert state.holdings == {}


def test_close_position_keeps_it_with_quantity_zero_and_realizes_the_pnl() -> None:
    state = GatewayState(accounts=["DU1"])
    state.set_position("DU1", AAPL, 100.0, average_cost=150.25, market_price=151.5)
    heard: list[Holding] = []
    state.subscribe(heard.append)
    closed = state.close_position("DU1", 265598)
    assert heard == [closed]
    assert closed.quantity == 0.0
    assert closed.realized_pnl == 125.0
    assert list(state.positions("DU1")) == [closed]
    value = state.valuation(closed)
    assert (value.market_value, value.unrealized_pnl, value.realized_pnl) == (0.0, 0.0, 125.0)
    reopened = state.set_position("DU1", AAPL, 10.0, average_cost=151.5)
    assert reopened.realized_pnl == 125.0  # realized PnL stays for the day


def test_unsubscribed_listener_hears_nothing_and_remove_forgets() -> None:
    state = GatewayState(accounts=["DU1"])
    heard: list[Holding] = []
    unsubscribe = state.subscribe(heard.append)
    unsubscribe()
    state.set_position("DU1", AAPL, 1.0, market_price=1.0)
    assert heard == []
    state.remove_position("DU1", 265598)
    assert state.holding("DU1", 265598) is None and list(state.positions()) == []


# --- prices and values ----------------------------------------------------------------------------------------------


def test_move_prices_is_deterministic_from_the_seed_and_changes_prices() -> None:
    a = GatewayState.generate(positions=60, accounts=2, seed=9)
    b = GatewayState.generate(positions=60, accounts=2, seed=9)
    reloaded = GatewayState.from_json(a.to_json())
    before = dict(a.prices)
    for state in (a, b, reloaded):
        for _ in range(3):
            state.move_prices()
    assert a.prices == b.prices == reloaded.prices
    changed = [conid for conid in before if a.prices[conid] != before[conid]]
    assert len(changed) > len(before) // 2
    for conid, price in a.prices.items():
        assert abs(price / before[conid] - 1) < 0.02
        assert price == round(price, 4 if price < 10 else 2)


def test_move_prices_differs_with_the_seed() -> None:
    state_a = GatewayState(accounts=["DU1"], seed=1)
    state_b = GatewayState(accounts=["DU1"], seed=2)
    for state in (state_a, state_b):
        state.set_position("DU1", AAPL, 1.0, market_price=200.0)
        state.move_prices()
    assert state_a.prices != state_b.prices


@pytest.mark.parametrize(
    ("contract", "quantity", "price", "average_cost", "market_value", "unrealized"),
    [
        (AAPL, 100.0, 151.5, 150.25, 15150.0, 125.0),
        (AAPL, -50.0, 151.5, 160.0, -7575.0, 425.0),
        (AAPL_CALL, -3.0, 6.0, 512.5, -1800.0, -262.5),
        (ES, 2.0, 6001.25, 299_000.0, 600_125.0, 2125.0),
        (EURUSD, 25_000.0, 1.0512, 1.05, 26_280.0, 30.0),
        (AAPL, 3.0, 0.3333, 0.0, 1.0, 1.0),  # 0.9999 rounds to cents
        (AAPL, 0.0, 151.5, 150.25, 0.0, 0.0),
    ],
)
def test_valuation(
    contract: Contract,
    quantity: float,
    price: float,
    average_cost: float,
    market_value: float,
    unrealized: float,
) -> None:
    state = GatewayState(accounts=["DU1"])
    holding = state.set_position("DU1", contract, quantity, average_cost=average_cost, market_price=price)
    value = state.valuation(holding)
    assert value.market_price == price
    assert value.market_value == market_value
    assert value.unrealized_pnl == unrealized
    assert value.realized_pnl == 0.0


def test_valuation_of_every_generated_holding(big: GatewayState) -> None:
    for h in big.positions():
        value = big.valuation(h)
        expected = round(h.quantity * big.prices[h.contract.conid] * h.contract.multiplier_value, 2)
        assert value.market_value == expected
        assert value.unrealized_pnl == round(expected - h.quantity * h.average_cost, 2)


def test_account_values_agree_with_the_holdings() -> None:
    state = GatewayState(accounts=["DU1"])
    state.set_position("DU1", AAPL, 100.0, average_cost=150.25, market_price=151.5)
    state.set_position("DU1", AAPL_CALL, -3.0, average_cost=512.5, market_price=6.0)
    values = {key: (value, currency) for key, value, currency in state.account_values("DU1")}
    assert values["AccountCode"] == ("DU1", "")
    assert values["NetLiquidation"] == ("1013350.00", "USD")  # 1,000,000 + 15,150 - 1,800
    assert values["GrossPositionValue"] == ("16950.00", "USD")
    assert values["UnrealizedPnL"] == ("-137.50", "USD")
    assert values["TotalCashValue"] == ("1000000.00", "USD")
