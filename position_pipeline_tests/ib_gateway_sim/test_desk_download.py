"""The real ib_async client reading a desk's account downloads from the simulator: the per-currency ledger with
its exchange rates (USD- and EUR-base accounts), values that hold still between refresh ticks, the account update
time in the gateway's zone, a fill between reqPositions and the download, and a position change revaluing its
account. Expected values come from the gateway's live prices, rates and cash, or from what it says it told."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from ib_async import IB, AccountValue, PortfolioItem

from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread, SimulatedGateway
from position_pipeline_tests.support.ib_clients import connect, state_of
from position_pipeline_tests.support.waiting import run_bounded
from position_pipeline_tests.support.waiting import wait_until_async as wait_until

pytestmark = [pytest.mark.tables, pytest.mark.timeout(90)]  # every test talks to a gateway on loopback

LEDGER = (
    "CashBalance", "TotalCashBalance", "StockMarketValue", "OptionMarketValue",
    "FuturesPNL", "UnrealizedPnL", "RealizedPnL", "NetLiquidationByCurrency",
)  # fmt: skip
ACCOUNT_LEVEL = ("NetLiquidation", "TotalCashValue", "GrossPositionValue", "BuyingPower", "AvailableFunds",
                 "EquityWithLoanValue")  # fmt: skip


def by_tag(values: list[AccountValue]) -> Rows:
    return {(v.tag, v.currency): v.value for v in values}


Told = dict[int, tuple[float, float, float, float]]
Rows = dict[tuple[str, str], str]


def told(ib: IB, account: str) -> Told:
    """conid -> (position, marketPrice, marketValue, unrealizedPNL) as the client holds them."""
    return {
        i.contract.conId: (i.position, i.marketPrice, i.marketValue, i.unrealizedPNL) for i in ib.portfolio(account)
    }


def update_times(ib: IB) -> list[str]:
    """Every ACCT_UPDATE_TIME `ib` receives from now on (ib_async's wrapper drops it; the decoder looks the method
    up on each message, so an instance attribute catches it)."""
    times: list[str] = []
    ib.wrapper.updateAccountTime = times.append  # type: ignore[method-assign,assignment]
    return times


def move_prices(sim: GatewayThread, steps: int) -> None:
    def move(gateway: SimulatedGateway) -> None:
        for _ in range(steps):
            gateway.move_prices()

    sim.call(move)


async def download(ib: IB, account: str) -> None:
    await asyncio.wait_for(ib.reqAccountUpdatesAsync(account), 5)


# --- the ledger ---------------------------------------------------------------------------------------------------


def expected_ledger(portfolio: list[PortfolioItem], cash: dict[str, float], currency: str) -> dict[str, float]:
    """The ledger rows of `currency`, recomputed from the portfolio the client received and the account's cash."""
    items = [i for i in portfolio if i.contract.currency == currency]

    def total(sec_type: str, of: str) -> float:
        return sum(getattr(i, of) for i in items if i.contract.secType == sec_type)

    cash_balance = (
        cash.get(currency, 0.0)
        + sum(i.position for i in portfolio if i.contract.secType == "CASH" and i.contract.symbol == currency)
        - sum(i.position * i.averageCost for i in items if i.contract.secType == "CASH")
    )
    stocks, options, futures = total("STK", "marketValue"), total("OPT", "marketValue"), total("FUT", "unrealizedPNL")
    return {
        "CashBalance": cash_balance,
        "TotalCashBalance": cash_balance + futures,
        "StockMarketValue": stocks,
        "OptionMarketValue": options,
        "FuturesPNL": futures,
        "UnrealizedPnL": sum(i.unrealizedPNL for i in items),
        "RealizedPnL": sum(i.realizedPNL for i in items),
        "NetLiquidationByCurrency": cash_balance + futures + stocks + options,
    }


@pytest.mark.parametrize(("index", "base", "foreign"), [(0, "USD", {"EUR", "GBP", "JPY"}), (2, "EUR", {"USD"})])
def test_the_download_has_a_ledger_and_an_exchange_rate_per_currency(
    sim: GatewayThread, index: int, base: str, foreign: set[str]
) -> None:
    state = state_of(sim)
    account = state.accounts[index]
    fx, cash = sim.call(lambda gw: (dict(gw.state.fx_rates), dict(gw.state.cash[account])))

    async def main() -> tuple[list[AccountValue], list[PortfolioItem]]:
        ib = await connect(sim)
        try:
            await download(ib, account)
            return ib.accountValues(account), ib.portfolio(account)
        finally:
            ib.disconnect()

    values, portfolio = run_bounded(main())
    rows = by_tag(values)
    assert sim.base_currency(account) == base
    currencies = (
        {i.contract.currency for i in portfolio}
        | {i.contract.symbol for i in portfolio if i.contract.secType == "CASH"}
        | set(cash)
        | {base}
    )
    assert foreign <= currencies  # the desk holds listings and cash outside the base currency
    assert {c for tag, c in rows if tag == "Currency"} == currencies | {"BASE"}
    assert all(rows[("Currency", c)] == c for c in currencies) and rows[("Currency", "BASE")] == "BASE"

    assert rows[("ExchangeRate", "BASE")] == rows[("ExchangeRate", base)] == "1.00"
    rates = {c: float(rows[("ExchangeRate", c)]) for c in currencies}
    for currency in currencies - {base}:
        assert rates[currency] == pytest.approx(fx[currency] / fx[base], rel=5e-6), currency  # 6 significant digits
        assert rates[currency] == sim.exchange_rate(account, currency)

    for currency in currencies:
        for key, value in expected_ledger(portfolio, cash, currency).items():
            assert float(rows[(key, currency)]) == pytest.approx(value, abs=0.01), (currency, key)
    for key in LEDGER:  # BASE: the sent values converted with the sent rates
        converted = sum(float(rows[(key, c)]) * rates[c] for c in currencies)
        assert float(rows[(key, "BASE")]) == pytest.approx(converted, abs=0.01), key

    for key in ACCOUNT_LEVEL:  # account-level keys in the base currency only
        assert [c for tag, c in rows if tag == key] == [base], key
    assert rows[("NetLiquidation", base)] == rows[("NetLiquidationByCurrency", "BASE")]
    assert float(rows[("NetLiquidation", base)]) > 0
    assert rows[("AccountCode", "")] == account


# --- refresh ticks ------------------------------------------------------------------------------------------------


def test_values_hold_while_prices_move_and_change_at_a_refresh_tick(sim: GatewayThread) -> None:
    account = state_of(sim).accounts[0]
    started = sim.valued_at(account)

    async def main() -> tuple[Told, Told, Told, Rows, Rows, Rows]:
        ib = await connect(sim)
        times = update_times(ib)
        try:
            await download(ib, account)
            before, before_rows = told(ib, account), by_tag(ib.accountValues(account))
            move_prices(sim, 5)
            ib.client.reqAccountUpdates(False, account)
            await download(ib, account)  # a fresh download before the tick tells the values of the last one
            held, held_rows = told(ib, account), by_tag(ib.accountValues(account))
            pushed = len(times)
            sim.revalue(account)
            await wait_until(lambda: len(times) > pushed, what="the tick's account update time")
            return before, held, told(ib, account), before_rows, held_rows, by_tag(ib.accountValues(account))
        finally:
            ib.disconnect()

    before, held, after, before_rows, held_rows, after_rows = run_bounded(main())
    prices = sim.call(lambda gw: dict(gw.state.prices))
    assert held == before and held_rows == before_rows  # prices moved, nothing told changed
    assert any(before[conid][1] != prices[conid] for conid in before)
    assert after != before and after_rows != before_rows
    for conid, (_, price, value, unrealized) in after.items():
        v = sim.valuation(account, conid)
        assert (price, value, unrealized) == (prices[conid], v.market_value, v.unrealized_pnl), conid
    assert sim.valued_at(account) > started


def test_the_refresh_clock_revalues_and_pushes_every_account() -> None:
    state = GatewayState.generate(positions=12, accounts=2, seed=4)
    with GatewayThread(lambda: SimulatedGateway(state, price_interval=None, portfolio_refresh=0.3)) as sim:
        account = state_of(sim).accounts[1]

        async def main() -> tuple[Told, Told]:
            ib = await connect(sim)
            times = update_times(ib)
            try:
                await download(ib, account)
                before = told(ib, account)
                move_prices(sim, 1)
                await wait_until(lambda: told(ib, account) != before and times, what="a tick after the move")
                pushed = len(times)
                await wait_until(lambda: len(times) > pushed, what="the tick's account update time")
                return before, told(ib, account)
            finally:
                ib.disconnect()

        before, after = run_bounded(main())
        prices = sim.call(lambda gw: dict(gw.state.prices))
        assert after != before
        assert {conid: price for conid, (_, price, _, _) in after.items()} == {conid: prices[conid] for conid in after}
        assert all(datetime.now(UTC) - sim.valued_at(a) < timedelta(seconds=5) for a in state_of(sim).accounts)


# --- the account update time --------------------------------------------------------------------------------------


def test_the_account_update_time_is_the_valuation_minute_in_the_gateway_zone() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    state = GatewayState.generate(positions=12, accounts=2, seed=3)
    with GatewayThread(lambda: SimulatedGateway(state, price_interval=None, timezone="Asia/Tokyo")) as sim:
        account = state_of(sim).accounts[0]
        started = sim.valued_at(account)
        tick = datetime.combine(datetime.now(tokyo).date() - timedelta(days=1), time(23, 59, 30), tzinfo=tokyo)

        async def main() -> tuple[list[str], list[str]]:
            ib, later = await connect(sim), IB()
            times, later_times = update_times(ib), update_times(later)
            try:
                await download(ib, account)
                assert sim.revalue(account, tick) == tick.astimezone(UTC)
                await wait_until(lambda: len(times) > 1, what="the tick's account update time")
                await later.connectAsync(sim.host, sim.port, clientId=2, readonly=True, timeout=5)
                await download(later, account)  # a download after the tick carries the tick's time
                return times, later_times
            finally:
                ib.disconnect()
                later.disconnect()

        times, later_times = run_bounded(main())
        first = started.astimezone(tokyo).strftime("%H:%M")
        assert times[0] == first != started.astimezone(UTC).strftime("%H:%M")  # Tokyo is UTC+9: the zone is applied
        assert times[1:] == ["23:59"] and later_times == ["23:59"]
        assert sim.valued_at(account) == tick
        assert sim.call(lambda gw: gw.state.timezone) == "Asia/Tokyo"


# --- a fill between reqPositions and the download ------------------------------------------------------------------


def test_a_fill_before_the_download_gives_the_download_another_quantity(sim: GatewayThread) -> None:
    state = state_of(sim)
    account = state.accounts[1]
    holding = next(h for h in state.positions(account) if h.contract.sec_type == "STK")
    conid, original, filled = holding.contract.conid, holding.quantity, holding.quantity + 70

    async def main() -> tuple[float, float, list[tuple[str, int, float]], object, float]:
        ib = await connect(sim)
        pushed: list[tuple[str, int, float]] = []
        ib.positionEvent += lambda p: pushed.append((p.account, p.contract.conId, p.position))
        try:
            positions = {(p.account, p.contract.conId): p.position for p in await ib.reqPositionsAsync()}
            pushed.clear()  # the reqPositions stream itself raises positionEvent too
            sim.set_faults(fills_before_download={account: [(conid, filled)]})
            await download(ib, account)
            downloaded = told(ib, account)[conid][0]
            left = sim.call(lambda gw: dict(gw.faults.fills_before_download))
            sim.call(lambda gw: gw.set_position(account, holding.contract, original))
            ib.client.reqAccountUpdates(False, account)
            await download(ib, account)  # the fault cleared itself: this download is not filled again
            return positions[(account, conid)], downloaded, pushed, left, told(ib, account)[conid][0]
        finally:
            ib.disconnect()

    listed, downloaded, pushed, left, again = run_bounded(main())
    assert (listed, downloaded) == (original, filled)
    assert pushed[0] == (account, conid, filled)  # announced to the positions subscriber, as a fill is
    assert left == {}
    assert again == original
    assert sim.valuation(account, conid).market_value == round(original * state.prices[conid], 2)


# --- a position change revalues its account -------------------------------------------------------------------------


def test_a_position_change_revalues_the_whole_account_at_that_moment(sim: GatewayThread) -> None:
    state = state_of(sim)
    account, other = state.accounts[0], state.accounts[1]
    holding = next(h for h in state.positions(account) if h.contract.sec_type == "STK")
    earlier = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    sim.revalue(None, earlier)

    async def main() -> tuple[Told, Told, list[str], datetime, datetime]:
        ib = await connect(sim)
        times = update_times(ib)
        try:
            await download(ib, account)
            move_prices(sim, 3)
            await asyncio.wait_for(ib.reqCurrentTimeAsync(), 5)
            before = told(ib, account)
            pushed, t0 = len(times), datetime.now(UTC)
            sim.call(lambda gw: gw.set_position(account, holding.contract, holding.quantity + 10))
            t1 = datetime.now(UTC)
            await wait_until(lambda: len(times) > pushed, what="the change's account update time")
            return before, told(ib, account), times, t0, t1
        finally:
            ib.disconnect()

    before, after, times, t0, t1 = run_bounded(main())
    valued_at = sim.valued_at(account)
    assert t0 <= valued_at <= t1
    assert sim.valued_at(other) == earlier  # only the changed account is revalued
    new_york = ZoneInfo("America/New_York")  # the default zone
    assert times[0] == earlier.astimezone(new_york).strftime("%H:%M")
    assert times[-1] == valued_at.astimezone(new_york).strftime("%H:%M")
    prices = sim.call(lambda gw: dict(gw.state.prices))
    assert any(before[c][1] != prices[c] for c in before)  # the moves were not told before the change...
    assert {c: v[1] for c, v in after.items()} == {c: prices[c] for c in after}  # ...and all of them are after it
    assert after[holding.contract.conid][0] == holding.quantity + 10
