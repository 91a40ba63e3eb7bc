"""The real ib_async client against the simulator's realistic cost and per-account faults (issue 14): download
latency per account, account-value volume, unset PnL values, futures without an exchange in position messages, a
download that never ends, 2100 mid-download, an outside client holding the account-updates slot, reqPositions
refused beyond 50 accounts (reqPositionsMulti instead), and a server sending garbage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from ib_async import IB

from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread, SimulatedGateway
from position_pipeline.ib_gateway_sim.messages import UNSET_DOUBLE
from position_pipeline_tests.support.ib_clients import collect_errors, connect, state_of
from position_pipeline_tests.support.waiting import run_bounded
from position_pipeline_tests.support.waiting import wait_until_async as wait_until

pytestmark = [pytest.mark.tables, pytest.mark.timeout(90)]  # every test talks to a gateway on loopback


def accounts_of(sim: GatewayThread) -> list[str]:
    return list(state_of(sim).accounts)


async def timed(awaitable: asyncio.Future[object] | object, timeout: float) -> float:
    """Seconds `awaitable` took (bounded by `timeout`)."""
    started = time.monotonic()
    await asyncio.wait_for(awaitable, timeout)  # type: ignore[arg-type]
    return time.monotonic() - started


# --- cost --------------------------------------------------------------------------------------------------------


def test_a_slow_account_download_takes_its_latency_and_a_fast_one_does_not_wait(sim: GatewayThread) -> None:
    slow, fast, _ = accounts_of(sim)
    sim.set_faults(download_seconds_by_account={slow: 0.5})

    async def main() -> tuple[float, float, int]:
        ib = await connect(sim)
        try:
            slow_s = await timed(ib.reqAccountUpdatesAsync(slow), 5)
            fast_s = await timed(ib.reqAccountUpdatesAsync(fast), 5)
            return slow_s, fast_s, len(ib.portfolio(slow))
        finally:
            ib.disconnect()

    slow_s, fast_s, items = run_bounded(main())
    assert slow_s >= 0.5, slow_s
    assert fast_s < 0.4, fast_s
    assert items == len(list(state_of(sim).positions(slow)))


def test_download_latencies_do_not_hold_up_other_clients_requests(sim: GatewayThread) -> None:
    first, second, _ = accounts_of(sim)
    sim.set_faults(download_seconds=1.0)

    async def main() -> tuple[float, float, float, list[int]]:
        a = await connect(sim, client_id=1)
        b = await connect(sim, client_id=2)
        try:
            started = time.monotonic()
            download = asyncio.ensure_future(a.reqAccountUpdatesAsync(first))
            errors = collect_errors(b)
            b.client.reqAccountUpdates(True, second)  # IB: one account at a time across clients, in flight too
            await wait_until(lambda: errors, 2, "2101 for the other account")
            positions_s = await timed(b.reqPositionsAsync(), 2)
            time_s = await timed(b.reqCurrentTimeAsync(), 2)
            await asyncio.wait_for(download, 5)
            return positions_s, time_s, time.monotonic() - started, [code for _, code, _ in errors]
        finally:
            a.disconnect()
            b.disconnect()

    positions_s, time_s, download_s, codes = run_bounded(main())
    assert positions_s < 0.5 and time_s < 0.5, (positions_s, time_s)
    assert download_s >= 1.0
    assert codes == [2101]


def test_account_value_volume_adds_that_many_account_values(sim: GatewayThread) -> None:
    account = accounts_of(sim)[0]
    sim.set_faults(account_value_volume=300)
    ledger = len(state_of(sim).account_values(account))

    async def main() -> int:
        ib = await connect(sim)
        try:
            await asyncio.wait_for(ib.reqAccountUpdatesAsync(account), 5)
            return len([v for v in ib.accountValues(account) if not v.modelCode])
        finally:
            ib.disconnect()

    assert run_bounded(main()) == ledger + 300


def test_unset_pnl_fields_arrive_as_ibs_unset_double(sim: GatewayThread) -> None:
    holding = next(state_of(sim).positions())
    sim.set_faults(pnl_unset={"dailyPnL"})

    async def main() -> tuple[float, float, float]:
        ib = await connect(sim)
        try:
            pnl = ib.reqPnLSingle(holding.account, "", holding.contract.conid)
            await wait_until(lambda: pnl.value == pnl.value, 5, "the first PnL single")  # NaN until then
            return pnl.dailyPnL, pnl.unrealizedPnL, pnl.value
        finally:
            ib.disconnect()

    daily, unrealized, value = run_bounded(main())
    assert daily == UNSET_DOUBLE == 1.7976931348623157e308
    assert unrealized != UNSET_DOUBLE and value != UNSET_DOUBLE and value != 0.0


def test_a_futures_position_has_no_exchange_while_its_portfolio_item_keeps_it(sim: GatewayThread) -> None:
    future = next(h for h in state_of(sim).positions() if h.contract.sec_type == "FUT")
    assert future.contract.exchange

    async def main() -> tuple[str, str, str]:
        ib = await connect(sim)
        try:
            positions = await asyncio.wait_for(ib.reqPositionsAsync(), 5)
            stock = next(p for p in positions if p.contract.secType == "STK")
            position = next(p for p in positions if p.contract.conId == future.contract.conid)
            await asyncio.wait_for(ib.reqAccountUpdatesAsync(future.account), 5)
            item = next(i for i in ib.portfolio(future.account) if i.contract.conId == future.contract.conid)
            return position.contract.exchange, item.contract.primaryExchange, stock.contract.exchange
        finally:
            ib.disconnect()

    position_exchange, portfolio_exchange, stock_exchange = run_bounded(main())
    assert position_exchange == ""
    assert portfolio_exchange == future.contract.exchange
    assert stock_exchange  # only futures lose theirs


# --- per-account faults ---------------------------------------------------------------------------------------


def test_an_account_whose_download_never_ends_sends_everything_but_the_end(sim: GatewayThread) -> None:
    stuck, healthy, _ = accounts_of(sim)
    sim.set_faults(suppress_download_end_for={stuck})

    async def main() -> tuple[int, bool]:
        ib = await connect(sim)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ib.reqAccountUpdatesAsync(stuck), 1.0)
            items = len(ib.portfolio(stuck))
            await asyncio.wait_for(ib.reqAccountUpdatesAsync(healthy), 5)  # the other account still ends
            return items, bool(ib.portfolio(healthy))
        finally:
            ib.disconnect()

    items, healthy_ok = run_bounded(main())
    assert items == len(list(state_of(sim).positions(stuck)))
    assert healthy_ok


def test_2100_mid_download_stops_the_subscription_then_the_retry_succeeds(sim: GatewayThread) -> None:
    account = accounts_of(sim)[0]
    held = len(list(state_of(sim).positions(account)))
    sim.set_faults(unsubscribe_mid_download={account: 1})

    async def main() -> tuple[list[tuple[int, int, str]], int, int]:
        ib = await connect(sim)
        try:
            errors = collect_errors(ib)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ib.reqAccountUpdatesAsync(account), 1.0)
            cut = len(ib.portfolio(account))
            await asyncio.wait_for(ib.reqAccountUpdatesAsync(account), 5)  # counted down: this one ends
            return errors, cut, len(ib.portfolio(account))
        finally:
            ib.disconnect()

    errors, cut, after = run_bounded(main())
    assert errors == [
        (-1, 2100, "New account data requested from TWS. API client has been unsubscribed from account data.")
    ]
    assert cut == held // 2 and after == held
    assert sim.call(lambda gw: gw.faults.unsubscribe_mid_download) == {}


def test_an_outside_client_holding_the_slot_gets_every_subscribe_refused_until_cleared(sim: GatewayThread) -> None:
    account = accounts_of(sim)[0]
    sim.set_faults(account_updates_held_by=77)

    async def main() -> tuple[list[tuple[int, int, str]], int]:
        ib = await connect(sim)
        try:
            errors = collect_errors(ib)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ib.reqAccountUpdatesAsync(account), 1.0)
            sim.set_faults(account_updates_held_by=None)
            await asyncio.wait_for(ib.reqAccountUpdatesAsync(account), 5)
            return errors, len(ib.portfolio(account))
        finally:
            ib.disconnect()

    errors, items = run_bounded(main())
    assert [(req_id, code) for req_id, code, _ in errors] == [(-1, 2101)]
    assert errors[0][2].endswith("subscribed to a different account.{77}")
    assert items == len(list(state_of(sim).positions(account)))


@pytest.fixture
def desk_sim() -> Iterator[GatewayThread]:
    """A login with 51 accounts: beyond IB's 50 for reqPositions."""
    state = GatewayState.generate(positions=102, accounts=51, seed=3)
    with GatewayThread(lambda: SimulatedGateway(state, port=0, price_interval=None)) as gateway:
        yield gateway


def test_beyond_50_accounts_reqpositions_is_refused_and_reqpositionsmulti_works(desk_sim: GatewayThread) -> None:
    account = accounts_of(desk_sim)[5]

    async def main() -> tuple[list[tuple[int, int, str]], list[tuple[int, str, int, float]], list[int]]:
        ib = IB()
        errors = collect_errors(ib)
        await ib.connectAsync(desk_sim.host, desk_sim.port, clientId=1, readonly=True, timeout=1.0)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ib.reqPositionsAsync(), 1.0)
            rows: list[tuple[int, str, int, float]] = []
            ends: list[int] = []
            ib.wrapper.positionMulti = lambda req_id, acct, model, c, pos, cost: rows.append(  # type: ignore[method-assign]
                (req_id, acct, c.conId, pos)
            )
            ib.wrapper.positionMultiEnd = ends.append  # type: ignore[method-assign]
            ib.client.reqPositionsMulti(9001, account, "")
            await wait_until(lambda: ends, 5, "positionMultiEnd")
            return errors, rows, ends
        finally:
            ib.disconnect()

    errors, rows, ends = run_bounded(main())
    refusals = [(req_id, code) for req_id, code, text in errors if "reqPositions" in text]
    assert refusals and set(refusals) == {(-1, 321)}  # at connect and again on request: no positionEnd either time
    held = {h.contract.conid: h.quantity for h in state_of(desk_sim).positions(account)}
    assert held and {conid: pos for _, _, conid, pos in rows} == held
    assert {(req_id, acct) for req_id, acct, _, _ in rows} == {(9001, account)} and ends == [9001]


def test_garbage_after_the_handshake_misleads_the_client_but_never_the_simulator(sim: GatewayThread) -> None:
    sim.set_faults(garbage_after_handshake=True)

    async def main() -> tuple[list[str], int, int]:
        ib = await connect(sim, client_id=3, timeout=2.0)  # its account updates for "-1" time out
        try:
            accounts = ib.managedAccounts()
            positions = await asyncio.wait_for(ib.reqPositionsAsync(), 5)
        finally:
            ib.disconnect()
        sim.set_faults(garbage_after_handshake=False)
        healthy = await connect(sim, client_id=4)
        try:
            return accounts, len(positions), len(await asyncio.wait_for(healthy.reqPositionsAsync(), 5))
        finally:
            healthy.disconnect()

    accounts, garbled, healthy = run_bounded(main())
    assert accounts == ["-1"]
    assert garbled == healthy == len(state_of(sim).holdings)
