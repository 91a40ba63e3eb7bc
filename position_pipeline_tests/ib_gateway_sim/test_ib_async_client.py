"""The real ib_async client against the simulated gateway on a free port: values, pushes, server versions and
scale. The faults, surfacing the way the real gateway's do, are in test_ib_async_faults.py."""

from __future__ import annotations

import asyncio

import pytest
from ib_async import IB, StartupFetch, Stock

from position_pipeline.ib_gateway_sim import Contract, GatewayState, GatewayThread, SimulatedGateway
from position_pipeline_tests.support.ib_clients import collect_errors, connect, state_of
from position_pipeline_tests.support.waiting import run_bounded
from position_pipeline_tests.support.waiting import wait_until_async as wait_until

pytestmark = [pytest.mark.tables, pytest.mark.timeout(90)]  # every test talks to a gateway on loopback


# --- reading ----------------------------------------------------------------------------------------------------


def test_connects_read_only_and_sends_no_order_requests(sim: GatewayThread) -> None:
    async def main() -> tuple[int, list[str]]:
        ib = await connect(sim, client_id=3)
        try:
            return ib.client.serverVersion(), ib.managedAccounts()
        finally:
            ib.disconnect()

    version, accounts = run_bounded(main())
    assert version == 178
    assert accounts == state_of(sim).accounts
    names = [r.name for r in sim.requests() if r.client_id == 3]
    assert names[0] == "START_API"
    assert "REQ_POSITIONS" in names
    assert "REQ_OPEN_ORDERS" not in names and "REQ_COMPLETED_ORDERS" not in names  # read-only connect
    assert not any(r.is_order or r.is_market_data for r in sim.requests())


def test_positions_of_every_account(sim: GatewayThread) -> None:
    async def main() -> set[tuple[str, int, float, float]]:
        ib = await connect(sim)
        try:
            positions = await asyncio.wait_for(ib.reqPositionsAsync(), 5)
            return {(p.account, p.contract.conId, p.position, p.avgCost) for p in positions}
        finally:
            ib.disconnect()

    got = run_bounded(main())
    state = state_of(sim)
    expected = {(h.account, h.contract.conid, h.quantity, h.average_cost) for h in state.positions()}
    assert got == expected
    assert {account for account, *_ in got} == set(state.accounts)


def test_portfolio_values_equal_the_gateway_state_for_each_account(sim: GatewayThread) -> None:
    state = state_of(sim)

    async def main() -> dict[str, dict[int, tuple[float, ...]]]:
        ib = await connect(sim)
        try:
            result = {}
            for account in ib.managedAccounts():
                await asyncio.wait_for(ib.reqAccountUpdatesAsync(account), 5)
                ib.client.reqAccountUpdates(False, account)
                result[account] = {
                    item.contract.conId: (
                        item.position,
                        item.marketPrice,
                        item.marketValue,
                        item.averageCost,
                        item.unrealizedPNL,
                        item.realizedPNL,
                    )
                    for item in ib.portfolio(account)
                }
            return result
        finally:
            ib.disconnect()

    got = run_bounded(main())
    for account in state.accounts:
        expected = {}
        for holding in state.positions(account):
            v = state.valuation(holding)
            expected[holding.contract.conid] = (
                holding.quantity,
                v.market_price,
                v.market_value,
                holding.average_cost,
                v.unrealized_pnl,
                v.realized_pnl,
            )
        assert got[account] == expected, account


def test_option_future_and_stock_fields_round_trip(sim: GatewayThread) -> None:
    async def main() -> dict[tuple[str, int], object]:
        ib = await connect(sim)
        try:
            positions = await asyncio.wait_for(ib.reqPositionsAsync(), 5)
            return {(p.account, p.contract.conId): p.contract for p in positions}
        finally:
            ib.disconnect()

    contracts = run_bounded(main())
    seen = set()
    for holding in state_of(sim).positions():
        c, got = holding.contract, contracts[(holding.account, holding.contract.conid)]
        seen.add(c.sec_type)
        assert (got.secType, got.symbol, got.currency, got.localSymbol) == (  # type: ignore[attr-defined]
            c.sec_type,
            c.symbol,
            c.currency,
            c.local_symbol,
        )
        assert got.strike == c.strike  # type: ignore[attr-defined]
        assert got.right == c.right  # type: ignore[attr-defined]
        assert got.lastTradeDateOrContractMonth == c.expiry  # type: ignore[attr-defined]
        assert got.multiplier == c.multiplier  # type: ignore[attr-defined]
        if c.sec_type == "OPT":
            assert c.right in ("C", "P") and c.strike > 0 and len(c.expiry) == 8 and c.multiplier == "100"
        if c.sec_type == "STK":
            assert (got.right, got.strike, got.lastTradeDateOrContractMonth) == ("", 0.0, "")  # type: ignore[attr-defined]
    assert seen == {"STK", "OPT", "FUT", "CASH"}


def test_a_position_change_between_two_reads_is_seen_and_pushed(sim: GatewayThread) -> None:
    state = state_of(sim)
    account = state.accounts[0]
    changed = next(h for h in state.positions(account) if h.contract.sec_type == "STK")
    closed = next(h for h in state.positions(account) if h.contract.sec_type == "OPT")
    new = Contract(990001, "ZZZZ", "STK", "USD", "NYSE", "ZZZZ", "ZZZZ")

    async def main() -> tuple[dict[int, float], dict[int, float], list[int]]:
        ib = await connect(sim)
        pushed: list[int] = []
        ib.positionEvent += lambda p: pushed.append(p.contract.conId)
        try:
            before = {p.contract.conId: p.position for p in await ib.reqPositionsAsync() if p.account == account}
            pushed.clear()

            def change(gw: SimulatedGateway) -> None:
                gw.set_position(account, changed.contract, changed.quantity + 100)
                gw.close_position(account, closed.contract.conid)
                gw.set_position(account, new, 25, market_price=12.5)

            sim.call(change)
            await wait_until(lambda: len(pushed) >= 3)
            after = {p.contract.conId: p.position for p in await ib.reqPositionsAsync() if p.account == account}
            return before, after, pushed
        finally:
            ib.disconnect()

    before, after, pushed = run_bounded(main())
    assert after[changed.contract.conid] == before[changed.contract.conid] + 100
    assert after[closed.contract.conid] == 0  # closed today: still reported, with zero
    assert new.conid not in before and after[new.conid] == 25
    assert pushed[:3] == [changed.contract.conid, closed.contract.conid, new.conid]


def test_moving_prices_reach_the_account_updates_subscriber(sim: GatewayThread) -> None:
    account = state_of(sim).accounts[1]

    async def main() -> tuple[dict[int, float], dict[int, float]]:
        ib = await connect(sim)
        try:
            await asyncio.wait_for(ib.reqAccountUpdatesAsync(account), 5)
            before = {i.contract.conId: i.marketPrice for i in ib.portfolio(account)}

            def tick(gw: SimulatedGateway) -> None:
                gw.move_prices()
                gw.refresh_portfolios()

            sim.call(tick)
            await wait_until(lambda: {i.contract.conId: i.marketPrice for i in ib.portfolio(account)} != before)
            return before, {i.contract.conId: i.marketPrice for i in ib.portfolio(account)}
        finally:
            ib.disconnect()

    before, after = run_bounded(main())
    state = state_of(sim)
    assert after == {h.contract.conid: state.prices[h.contract.conid] for h in state.positions(account)}
    assert after != before


@pytest.mark.parametrize("max_version", [157, 165, 166, 178])
def test_every_server_version_in_range_reads_positions_and_errors(sim: GatewayThread, max_version: int) -> None:
    async def main() -> tuple[int, int, list[tuple[int, int, str]]]:
        ib = IB()
        ib.client.MaxClientVersion = max_version
        errors = collect_errors(ib)
        await ib.connectAsync(sim.host, sim.port, clientId=11, readonly=True, timeout=5)
        try:
            positions = await asyncio.wait_for(ib.reqPositionsAsync(), 5)
            ib.client.reqMktData(4242, Stock("AAPL", "SMART", "USD"), "", False, False, [])
            await wait_until(lambda: any(e[1] == 354 for e in errors))
            return ib.client.serverVersion(), len(positions), errors
        finally:
            ib.disconnect()

    version, count, errors = run_bounded(main())
    assert version == max_version
    assert count == len(state_of(sim).holdings)
    assert (4242, 354, "Requested market data is not subscribed.") in errors
    assert any(r.is_market_data and r.client_id == 11 for r in sim.requests())


# --- scale --------------------------------------------------------------------------------------------------------


def test_200_concurrent_clients() -> None:
    state = GatewayState.generate(positions=30, accounts=2, seed=3)
    with GatewayThread(lambda: SimulatedGateway(state, port=0, price_interval=None)) as sim:

        async def one(client_id: int) -> int:
            ib = await connect(sim, client_id=client_id, timeout=30)
            try:
                return len(await asyncio.wait_for(ib.reqPositionsAsync(), 30))
            finally:
                ib.disconnect()

        async def main() -> list[int]:
            return await asyncio.gather(*(one(i) for i in range(100, 300)))

        counts = run_bounded(main(), timeout=80)
        assert counts == [30] * 200
        assert len({r.client_id for r in sim.requests()}) == 200


@pytest.mark.system  # over 2 s: too slow for the fast tier
def test_an_account_with_10000_positions() -> None:
    state = GatewayState.generate(positions=10_000, accounts=1, seed=5)
    with GatewayThread(lambda: SimulatedGateway(state, port=0, price_interval=None)) as sim:

        async def main() -> tuple[int, int]:
            ib = await connect(sim, timeout=30, fetchFields=StartupFetch(0))
            try:
                positions = await asyncio.wait_for(ib.reqPositionsAsync(), 30)
                await asyncio.wait_for(ib.reqAccountUpdatesAsync(state.accounts[0]), 30)
                return len(positions), len(ib.portfolio(state.accounts[0]))
            finally:
                ib.disconnect()

        assert run_bounded(main(), timeout=60) == (10_000, 10_000)
