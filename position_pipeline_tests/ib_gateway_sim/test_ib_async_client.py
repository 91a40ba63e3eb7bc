"""The real ib_async client against the simulated gateway on a free port: values, pushes, and every fault surfacing
the way the real gateway's does (timeouts, disconnect events, error events with IB's codes)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from ib_async import IB, LimitOrder, StartupFetch, Stock

from position_pipeline.ib_gateway_sim import Contract, GatewayState, GatewayThread, SimulatedGateway
from position_pipeline_tests.support.waiting import run_bounded
from position_pipeline_tests.support.waiting import wait_until_async as wait_until

pytestmark = [pytest.mark.tables, pytest.mark.timeout(90)]  # every test talks to a gateway on loopback


async def connect(sim: GatewayThread, client_id: int = 1, timeout: float = 5.0, **kwargs: object) -> IB:
    ib = IB()
    await ib.connectAsync(sim.host, sim.port, clientId=client_id, readonly=True, timeout=timeout, **kwargs)
    return ib


def collect_errors(ib: IB) -> list[tuple[int, int, str]]:
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, text, contract: errors.append((req_id, code, text))
    return errors


def state_of(sim: GatewayThread) -> GatewayState:
    return sim.call(lambda gw: gw.state)


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


# --- faults ------------------------------------------------------------------------------------------------------


def test_gateway_down_refuses_connections_then_a_reconnect_succeeds(sim: GatewayThread) -> None:
    async def main() -> int:
        ib = await connect(sim)
        disconnected = asyncio.Event()
        ib.disconnectedEvent += disconnected.set
        sim.call(lambda gw: gw.go_down(1.5))
        await asyncio.wait_for(disconnected.wait(), 5)
        with pytest.raises(ConnectionRefusedError):
            await connect(sim, client_id=2)
        await wait_until(lambda: sim.call(lambda gw: gw.faults.down_until is None), 5, "the gateway listening again")
        again = await connect(sim)
        try:
            return len(await again.reqPositionsAsync())
        finally:
            again.disconnect()

    assert run_bounded(main()) == len(state_of(sim).holdings)


def test_connection_dropped_after_n_messages_fails_pending_requests(sim: GatewayThread) -> None:
    async def main() -> tuple[type[BaseException], bool]:
        ib = await connect(sim, client_id=4)
        disconnected = asyncio.Event()
        ib.disconnectedEvent += disconnected.set
        sent = sim.call(lambda gw: gw.hub.sessions[4].messages_sent)
        sim.set_faults(drop_after_messages=sent + 3)
        with pytest.raises(ConnectionError) as raised:
            await asyncio.wait_for(ib.reqPositionsAsync(), 5)
        await asyncio.wait_for(disconnected.wait(), 5)
        return raised.type, ib.isConnected()

    error_type, connected = run_bounded(main())
    assert error_type is ConnectionError and not connected


def test_connection_dropped_in_the_middle_of_a_position_stream(sim: GatewayThread) -> None:
    async def main() -> tuple[str, int]:
        ib = await connect(sim)
        received: list[int] = []
        ib.positionEvent += lambda p: received.append(p.contract.conId)
        sim.set_faults(drop_mid_positions=True)
        with pytest.raises(ConnectionError) as raised:
            await asyncio.wait_for(ib.reqPositionsAsync(), 5)
        return str(raised.value), len(received)

    message, received = run_bounded(main())
    assert message == "Socket disconnect"
    assert received == len(state_of(sim).holdings) // 2


def test_slow_replies_time_out(sim: GatewayThread) -> None:
    async def main() -> None:
        ib = await connect(sim)
        try:
            sim.set_faults(reply_delay=1.5)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ib.reqCurrentTimeAsync(), 0.5)
            sim.set_faults(reply_delay=0.0)
        finally:
            ib.disconnect()

    run_bounded(main())


def test_position_end_never_sent_times_out_after_the_positions_arrive(sim: GatewayThread) -> None:
    async def main() -> int:
        ib = await connect(sim)
        try:
            sim.set_faults(suppress_position_end=True)
            received: list[int] = []
            ib.positionEvent += lambda p: received.append(p.contract.conId)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ib.reqPositionsAsync(), 1.0)
            return len(received)
        finally:
            ib.disconnect()

    assert run_bounded(main()) == len(state_of(sim).holdings)


def test_account_download_end_never_sent_times_out_after_the_portfolio_arrives(sim: GatewayThread) -> None:
    account = state_of(sim).accounts[0]

    async def main() -> int:
        ib = await connect(sim)
        try:
            sim.set_faults(suppress_account_download_end=True)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ib.reqAccountUpdatesAsync(account), 1.0)
            return len(ib.portfolio(account))
        finally:
            ib.disconnect()

    assert run_bounded(main()) == len(list(state_of(sim).positions(account)))


def test_connectivity_lost_then_restored_data_maintained(sim: GatewayThread) -> None:
    async def main() -> tuple[list[int], bool]:
        ib = await connect(sim)
        errors = collect_errors(ib)
        try:
            sim.call(lambda gw: gw.connectivity_lost())
            await wait_until(lambda: any(e[1] == 1100 for e in errors))
            pending = asyncio.ensure_future(ib.reqCurrentTimeAsync())
            await asyncio.sleep(0.5)  # time enough for a reply that should not come
            held = not pending.done()
            sim.call(lambda gw: gw.connectivity_restored())
            await asyncio.wait_for(pending, 5)
            sim.call(lambda gw: gw.send_error(2110))
            await wait_until(lambda: any(e[1] == 2110 for e in errors))
            return [code for _, code, _ in errors], held
        finally:
            ib.disconnect()

    codes, held = run_bounded(main())
    assert held, "a request made after 1100 must not be answered before connectivity returns"
    assert codes == [1100, 1102, 2110]


def test_connectivity_restored_with_data_lost_drops_held_replies(sim: GatewayThread) -> None:
    async def main() -> tuple[list[int], bool]:
        ib = await connect(sim)
        errors = collect_errors(ib)
        try:
            sim.call(lambda gw: gw.connectivity_lost())
            pending = asyncio.ensure_future(ib.reqCurrentTimeAsync())
            await wait_until(lambda: any(e[1] == 1100 for e in errors))
            sim.call(lambda gw: gw.connectivity_restored(data_lost=True))
            await wait_until(lambda: any(e[1] == 1101 for e in errors))
            await asyncio.sleep(0.3)  # time enough for a held reply that should have been dropped
            answered = pending.done()
            pending.cancel()
            return [code for _, code, _ in errors], answered
        finally:
            ib.disconnect()

    codes, answered = run_bounded(main())
    assert codes == [1100, 1101] and not answered


def test_client_id_in_use_is_refused_with_326_and_the_first_client_keeps_working(sim: GatewayThread) -> None:
    async def main() -> tuple[list[int], int]:
        first = await connect(sim, client_id=9)
        second = IB()
        errors = collect_errors(second)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await second.connectAsync(sim.host, sim.port, clientId=9, readonly=True, timeout=1.5)
            return [code for _, code, _ in errors], len(await first.reqPositionsAsync())
        finally:
            first.disconnect()

    codes, positions = run_bounded(main())
    assert codes == [326]
    assert positions == len(state_of(sim).holdings)


def test_pacing_violation_is_error_100_and_ib_async_throttling_avoids_it(sim: GatewayThread) -> None:
    async def burst(throttled: bool, client_id: int) -> list[int]:
        ib = await connect(sim, client_id=client_id)
        errors = collect_errors(ib)
        try:
            if not throttled:
                ib.client.MaxRequests = 0  # switch off ib_async's own 45 messages/s throttle
            for _ in range(70):
                ib.client.reqCurrentTime()
            await asyncio.sleep(2.5)  # the gateway's pacing window and then some: an error 100 would be in by then
            return [code for _, code, _ in errors]
        finally:
            ib.disconnect()

    unthrottled = run_bounded(burst(throttled=False, client_id=13))
    assert 100 in unthrottled
    # The gateway counts messages when its thread reads them. On a loaded machine that thread can stall and then read
    # 45 throttled messages of one second together with the next second's, so a clean burst may need another try;
    # without ib_async's throttle every try exceeds the limit (70 messages at once).
    throttled = []
    for client_id in (12, 14, 15):
        throttled.append(run_bounded(burst(throttled=True, client_id=client_id)))
        if 100 not in throttled[-1]:
            break
    assert 100 not in throttled[-1], f"error 100 in every throttled burst: {throttled}"


def test_account_updates_serve_one_account_across_clients(sim: GatewayThread) -> None:
    accounts = state_of(sim).accounts

    async def main() -> list[int]:
        a = await connect(sim, client_id=21)
        b = await connect(sim, client_id=22)
        errors = collect_errors(b)
        try:
            await asyncio.wait_for(a.reqAccountUpdatesAsync(accounts[0]), 5)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(b.reqAccountUpdatesAsync(accounts[1]), 1.0)
            a.client.reqAccountUpdates(False, accounts[0])
            await wait_until(lambda: sim.call(lambda gw: not gw.hub.account_subscribers), 5, "a unsubscribed")
            await asyncio.wait_for(b.reqAccountUpdatesAsync(accounts[1]), 5)
            return [code for _, code, _ in errors]
        finally:
            a.disconnect()
            b.disconnect()

    assert run_bounded(main()) == [2101]


def test_order_placement_is_refused_as_read_only_and_recorded(sim: GatewayThread) -> None:
    async def main() -> tuple[int, list[tuple[int, int, str]]]:
        ib = await connect(sim, client_id=31)
        errors = collect_errors(ib)
        try:
            trade = ib.placeOrder(Stock("AAPL", "SMART", "USD"), LimitOrder("BUY", 1, 1.0))
            await wait_until(lambda: bool(errors))
            return trade.order.orderId, errors
        finally:
            ib.disconnect()

    order_id, errors = run_bounded(main())
    assert errors[0][:2] == (order_id, 321)
    assert "Read-Only" in errors[0][2]
    orders = [r for r in sim.requests() if r.is_order]
    assert [(r.client_id, r.name) for r in orders] == [(31, "PLACE_ORDER")]


def test_garbage_from_one_client_never_affects_another(sim: GatewayThread) -> None:
    async def main() -> int:
        ib = await connect(sim)
        try:
            for garbage in (b"GET / HTTP/1.1\r\n\r\n", b"API\0\x00\x00\x00\x05vXYZ\0", b"API\0\xff\xff\xff\xff"):
                with socket.create_connection((sim.host, sim.port), timeout=2) as raw:
                    raw.sendall(garbage)
                    raw.settimeout(2)
                    assert raw.recv(100) == b""  # the gateway closed this connection
            return len(await asyncio.wait_for(ib.reqPositionsAsync(), 5))
        finally:
            ib.disconnect()

    assert run_bounded(main()) == len(state_of(sim).holdings)


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
