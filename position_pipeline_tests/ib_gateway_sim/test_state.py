"""The gateway's accounts, contracts and positions: the seeded desk (base currencies, contracts held in several
accounts, non-USD listings), changes announced to listeners, and seeded price and exchange-rate moves. Valuations
are in test_valuation.py, the JSON form in test_dump.py."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime

import pytest

from position_pipeline.ib_gateway_sim.state import SEC_TYPES, Contract, GatewayState, Holding, state_summary
from position_pipeline_tests.support.sim_contracts import AAPL, AAPL_CALL

MOMENT = datetime(2027, 1, 4, 15, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def big() -> GatewayState:
    return GatewayState.generate(positions=200, accounts=3, seed=1)


def by_type(state: GatewayState, sec_type: str) -> list[Holding]:
    return [h for h in state.positions() if h.contract.sec_type == sec_type]


# --- generation ---------------------------------------------------------------------------------------------------


def test_generate_is_deterministic_per_seed() -> None:
    first = GatewayState.generate(positions=120, accounts=3, seed=42)
    second = GatewayState.generate(positions=120, accounts=3, seed=42)
    for state in (first, second):  # each was valued when generated: give both the same moment
        state.revalue(at=MOMENT)
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
    assert {account: cash[big.base_currency(account)] for account, cash in big.cash.items()} == dict.fromkeys(
        big.accounts, 1_000_000.0
    )  # each account holds a million of its base currency, and maybe some of one other
    assert all(len(cash) <= 2 for cash in big.cash.values())


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


def test_exchange_rates_move_with_the_prices_and_forex_pairs_follow_them() -> None:
    state = GatewayState.generate(positions=60, accounts=2, seed=9)
    before = dict(state.fx_rates)
    state.move_prices()
    assert state.fx_rates["USD"] == 1.0
    assert all(state.fx_rates[c] != before[c] for c in before if c != "USD")
    assert all(abs(state.fx_rates[c] / before[c] - 1) < 0.01 for c in before)
    pairs = [h.contract for h in state.positions() if h.contract.sec_type == "CASH"]
    assert pairs
    for pair in pairs:
        expected = state.fx_rates[pair.symbol] / state.fx_rates[pair.currency]
        assert state.prices[pair.conid] == pytest.approx(expected, rel=1e-4)


# --- the desk: base currencies, shared contracts, listings in several currencies ------------------------------------


@pytest.fixture(scope="module")
def desk() -> GatewayState:
    """What the suite's `sim_state` fixture holds."""
    return GatewayState.generate(positions=60, accounts=3, seed=7)


def test_the_last_of_several_accounts_has_a_eur_base(desk: GatewayState) -> None:
    assert desk.base_currencies == {"DU1000001": "USD", "DU1000002": "USD", "DU1000003": "EUR"}
    assert GatewayState.generate(positions=3, accounts=1).base_currencies == {"DU1000001": "USD"}
    assert GatewayState(accounts=["DU1"]).base_currency("DU1") == "USD"
    assert GatewayState(accounts=["DU1"]).cash == {"DU1": {"USD": 1_000_000.0}}


def test_the_desk_holds_contracts_in_two_and_in_three_accounts(desk: GatewayState) -> None:
    accounts_per_conid = Counter(h.contract.conid for h in desk.positions())
    spread = Counter(accounts_per_conid.values())
    assert spread[2] >= 5 and spread[3] >= 2, spread
    assert len(desk.holdings) == 60  # still one holding per (account, conid)


def test_usd_accounts_hold_eur_gbp_and_jpy_listings(desk: GatewayState) -> None:
    usd_accounts = [a for a in desk.accounts if desk.base_currency(a) == "USD"]
    listed = {h.contract.currency for a in usd_accounts for h in desk.positions(a) if h.contract.sec_type == "STK"}
    assert {"USD", "EUR", "GBP", "JPY"} <= listed
    assert any(h.contract.currency != "EUR" for h in desk.positions("DU1000003"))  # the EUR account holds USD


def test_non_usd_listings_are_priced_in_their_currency(big: GatewayState) -> None:
    """Seed 1 with 200 positions draws every kind of non-USD contract."""
    listings = {h.contract.symbol: h.contract for h in big.positions() if h.contract.currency != "USD"}
    exchanges = {(c.symbol, c.exchange, c.currency) for c in listings.values() if c.sec_type in ("STK", "FUT")}
    assert {("SAP", "IBIS", "EUR"), ("SHEL", "LSE", "GBP"), ("7203", "TSEJ", "JPY")} <= exchanges, exchanges
    assert listings["FESX"].exchange == "EUREX" and listings["FESX"].multiplier == "10"
    for contract in listings.values():
        price = big.prices[contract.conid]
        if contract.currency == "JPY" and contract.sec_type == "STK":
            assert 2_000 < price < 4_000  # yen, not dollars
        if contract.symbol in ("SHEL", "AZN"):
            assert 10 < price < 200  # pounds, not pence
    pairs = {h.contract.local_symbol: h.contract.currency for h in big.positions() if h.contract.sec_type == "CASH"}
    assert all(currency == local[-3:] for local, currency in pairs.items())  # a pair is priced in its quote
    assert big.contract(265598) is None or big.contract(265598) == AAPL


# --- desk scale ---------------------------------------------------------------------------------------------------


def test_a_desk_of_5000_positions_in_50_accounts_is_generated_fast_the_same_every_time() -> None:
    import time

    def timed() -> tuple[GatewayState, float]:
        started = time.perf_counter()
        state = GatewayState.generate(positions=5000, accounts=50, seed=11)
        return state, time.perf_counter() - started

    (desk, first), (again, second) = timed(), timed()
    assert min(first, second) < 1.0, f"generate(5000, 50) took {first:.2f} s and {second:.2f} s"  # best of 2: load
    assert len(desk.holdings) == 5000 and len(desk.accounts) == 50
    per_account = Counter(h.account for h in desk.positions())
    assert set(per_account) == set(desk.accounts) and set(per_account.values()) == {100}
    held_in = Counter(conid for _, conid in desk.holdings)
    assert max(held_in.values()) >= 3 and sum(1 for n in held_in.values() if n >= 2) >= 100
    assert again.holdings == desk.holdings and again.prices == desk.prices
