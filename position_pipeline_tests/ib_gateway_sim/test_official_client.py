"""IB's official Python client (`ibapi` 9.81, client versions 100..157) against the simulated gateway: an independent
decoder, with its own threads, reads the same values as the gateway's state. It negotiates server version 157, so
this also covers the layouts below 166 (ERR_MSG without advancedOrderRejectJson)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ibapi.client import EClient
from ibapi.contract import Contract as IbContract
from ibapi.order import Order
from ibapi.wrapper import EWrapper

from position_pipeline.ib_gateway_sim import GatewayThread
from position_pipeline_tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

CLIENT_ID = 21
WAIT = 10.0


class Recorder(EWrapper, EClient):
    """Records every callback the tests need; each one also sets a named event so that waits stay bounded.

    ibapi runs two threads: EReader moves frames from the socket to a queue, `run()` decodes them and calls back.
    `stop()` asks `run()` to disconnect from its own thread, so that the socket is never torn down under it."""

    def __init__(self) -> None:
        EWrapper.__init__(self)
        EClient.__init__(self, wrapper=self)
        self._events: dict[str, threading.Event] = {}
        self._events_lock = threading.Lock()
        self._stop = threading.Event()
        self.accounts: list[str] = []
        self.next_order_id: int | None = None
        self.errors: list[tuple[int, int, str]] = []
        self.positions: list[tuple[str, IbContract, float, float]] = []
        self.portfolio: list[tuple[IbContract, float, float, float, float, float, float, str]] = []
        self.account_values: list[tuple[str, str, str, str]] = []
        self.account_times: list[str] = []
        self.current_times: list[int] = []
        self.multi: list[tuple[int, str, str, str, str, str]] = []
        self.pnl: list[tuple[int, int, float, float, float, float]] = []

    # --- bounded waiting ---------------------------------------------------------------------------------------

    def event(self, name: str) -> threading.Event:
        with self._events_lock:
            return self._events.setdefault(name, threading.Event())

    def wait(self, name: str, timeout: float = WAIT) -> None:
        assert self.event(name).wait(timeout), f"ibapi: no {name} within {timeout} s"

    def connect_and_run(self, host: str, port: int, client_id: int) -> None:
        self.connect(host, port, client_id)
        self.run()

    def stop(self) -> None:
        self._stop.set()

    def _disconnect_if_asked(self) -> None:
        if self._stop.is_set() and self.isConnected():
            self.disconnect()

    def msgLoopTmo(self) -> None:
        self._disconnect_if_asked()

    def msgLoopRec(self) -> None:
        self._disconnect_if_asked()

    # --- callbacks ---------------------------------------------------------------------------------------------

    def managedAccounts(self, accountsList: str) -> None:
        self.accounts = accountsList.split(",")
        self.event("managedAccounts").set()

    def nextValidId(self, orderId: int) -> None:
        self.next_order_id = orderId
        self.event("nextValidId").set()

    def error(self, reqId: int, errorCode: int, errorString: str) -> None:
        self.errors.append((reqId, errorCode, errorString))
        self.event(f"error {errorCode}").set()

    def position(self, account: str, contract: IbContract, position: float, avgCost: float) -> None:
        self.positions.append((account, contract, position, avgCost))

    def positionEnd(self) -> None:
        self.event("positionEnd").set()

    def updatePortfolio(
        self,
        contract: IbContract,
        position: float,
        marketPrice: float,
        marketValue: float,
        averageCost: float,
        unrealizedPNL: float,
        realizedPNL: float,
        accountName: str,
    ) -> None:
        self.portfolio.append(
            (contract, position, marketPrice, marketValue, averageCost, unrealizedPNL, realizedPNL, accountName)
        )

    def updateAccountValue(self, key: str, val: str, currency: str, accountName: str) -> None:
        self.account_values.append((key, val, currency, accountName))

    def updateAccountTime(self, timeStamp: str) -> None:
        self.account_times.append(timeStamp)

    def accountDownloadEnd(self, accountName: str) -> None:
        self.event(f"accountDownloadEnd {accountName}").set()

    def currentTime(self, time: int) -> None:
        self.current_times.append(time)
        self.event("currentTime").set()

    def accountUpdateMulti(self, reqId: int, account: str, modelCode: str, key: str, value: str, currency: str) -> None:
        self.multi.append((reqId, account, modelCode, key, value, currency))

    def accountUpdateMultiEnd(self, reqId: int) -> None:
        self.event(f"accountUpdateMultiEnd {reqId}").set()

    def pnlSingle(
        self, reqId: int, pos: int, dailyPnL: float, unrealizedPnL: float, realizedPnL: float, value: float
    ) -> None:
        self.pnl.append((reqId, pos, dailyPnL, unrealizedPnL, realizedPnL, value))
        self.event(f"pnlSingle {reqId}").set()

    def connectionClosed(self) -> None:
        self.event("connectionClosed").set()


@pytest.fixture
def app(sim: GatewayThread) -> Iterator[Recorder]:
    """A connected ibapi client, greeted (nextValidId received); disconnected and its threads joined afterwards."""
    recorder = Recorder()
    runner = threading.Thread(
        target=recorder.connect_and_run, args=(sim.host, sim.port, CLIENT_ID), name="ibapi-run", daemon=True
    )
    runner.start()
    recorder.wait("nextValidId")
    reader = recorder.reader
    yield recorder
    recorder.stop()
    runner.join(WAIT)
    assert not runner.is_alive(), "ibapi's run() did not return after disconnect"
    if reader is not None:
        reader.join(WAIT)
        assert not reader.is_alive(), "ibapi's reader thread did not finish"
    assert recorder.event("connectionClosed").is_set()
    wait_until(lambda: CLIENT_ID not in sim.call(lambda gw: gw.connected_clients), WAIT)


def state_call(sim: GatewayThread, fn: Callable[[Any], Any]) -> Any:
    """Read the gateway's state on its own loop."""
    return sim.call(lambda gw: fn(gw.state))


# --- tests ------------------------------------------------------------------------------------------------------------


def test_handshake_negotiates_157_and_greets(app: Recorder, sim: GatewayThread) -> None:
    assert app.serverVersion() == 157
    assert app.isConnected()
    app.wait("error 2158")
    assert app.accounts == state_call(sim, lambda s: list(s.accounts))
    assert app.next_order_id == 1
    assert [(req_id, code) for req_id, code, _ in app.errors] == [(-1, 2104), (-1, 2106), (-1, 2158)]
    start = [r for r in sim.requests() if r.client_id == CLIENT_ID]
    assert [(r.name, r.fields) for r in start] == [("START_API", ("71", "2", str(CLIENT_ID), ""))]


def test_positions_read_by_ibapi_equal_the_gateway_state(app: Recorder, sim: GatewayThread) -> None:
    app.reqPositions()
    app.wait("positionEnd")
    got = [
        (
            account,
            c.conId,
            c.symbol,
            c.secType,
            c.strike,
            c.right,
            c.lastTradeDateOrContractMonth,
            c.multiplier,
            c.exchange,
            c.currency,
            c.localSymbol,
            c.tradingClass,
            position,
            avg_cost,
        )
        for account, c, position, avg_cost in app.positions
    ]
    expected = state_call(
        sim,
        lambda s: [
            (
                h.account,
                h.contract.conid,
                h.contract.symbol,
                h.contract.sec_type,
                h.contract.strike,
                h.contract.right,
                h.contract.expiry,
                h.contract.multiplier,
                "" if h.contract.sec_type == "FUT" else h.contract.exchange,  # IB: none for futures positions
                h.contract.currency,
                h.contract.local_symbol,
                h.contract.trading_class,
                h.quantity,
                h.average_cost,
            )
            for h in s.positions()
        ],
    )
    assert got == expected
    assert {row[3] for row in got} == {"STK", "OPT", "FUT", "CASH"}


def test_position_changes_are_pushed_after_position_end(app: Recorder, sim: GatewayThread) -> None:
    app.reqPositions()
    app.wait("positionEnd")
    streamed = len(app.positions)
    account, conid = state_call(sim, lambda s: next((h.account, h.contract.conid) for h in s.positions()))
    closed = sim.call(lambda gw: gw.close_position(account, conid))
    wait_until(lambda: len(app.positions) > streamed, WAIT)
    pushed_account, contract, position, avg_cost = app.positions[streamed]
    assert (pushed_account, contract.conId, position, avg_cost) == (account, conid, 0.0, closed.average_cost)
    app.cancelPositions()
    wait_until(lambda: any(r.name == "CANCEL_POSITIONS" for r in sim.requests()), WAIT)
    sim.call(lambda gw: gw.close_position(account, conid))
    app.reqCurrentTime()  # a reply sent after any push would have been: none may arrive before it
    app.wait("currentTime")
    assert len(app.positions) == streamed + 1


def test_portfolio_read_by_ibapi_equals_the_gateway_valuation(app: Recorder, sim: GatewayThread) -> None:
    accounts = state_call(sim, lambda s: list(s.accounts))
    for account in accounts:
        app.reqAccountUpdates(True, account)
        app.wait(f"accountDownloadEnd {account}")
        app.reqAccountUpdates(False, account)
    got = {
        (account, c.conId): (c.secType, c.primaryExchange, position, price, value, cost, unrealized, realized)
        for c, position, price, value, cost, unrealized, realized, account in app.portfolio
    }
    assert len(got) == len(app.portfolio)  # each holding exactly once

    def expected_portfolio(state: Any) -> dict[tuple[str, int], tuple[Any, ...]]:
        rows = {}
        for h in state.positions():
            v = state.valuation(h)
            rows[(h.account, h.contract.conid)] = (
                h.contract.sec_type,
                h.contract.exchange,
                h.quantity,
                v.market_price,
                v.market_value,
                h.average_cost,
                v.unrealized_pnl,
                v.realized_pnl,
            )
        return rows

    assert got == state_call(sim, expected_portfolio)
    expected_values = state_call(sim, lambda s: [(k, v, c, a) for a in s.accounts for k, v, c in s.account_values(a)])
    assert app.account_values == expected_values
    assert len(app.account_times) == len(accounts)
    assert all(len(t) == 5 and t[2] == ":" for t in app.account_times)
    assert not [e for e in app.errors if e[1] in (2100, 2101)]


def test_current_time(app: Recorder) -> None:
    app.reqCurrentTime()
    app.wait("currentTime")
    assert abs(app.current_times[0] - time.time()) < 5


def test_account_updates_multi_and_pnl_single(app: Recorder, sim: GatewayThread) -> None:
    account, conid, expected_pnl = state_call(
        sim,
        lambda s: next(
            (
                h.account,
                h.contract.conid,
                (
                    int(h.quantity),
                    s.daily_pnl(h),
                    s.valuation(h).unrealized_pnl,
                    s.valuation(h).realized_pnl,
                    s.valuation(h).market_value,
                ),
            )
            for h in s.positions()
            if h.contract.sec_type == "STK"
        ),
    )
    app.reqAccountUpdatesMulti(7, account, "", False)
    app.wait("accountUpdateMultiEnd 7")
    rows = state_call(sim, lambda s: s.account_values(account))
    assert app.multi == [(7, account, "", key, value, currency) for key, value, currency in rows]
    app.cancelAccountUpdatesMulti(7)

    app.reqPnLSingle(8, account, "", conid)
    app.wait("pnlSingle 8")
    assert app.pnl[0] == (8, *expected_pnl)
    app.cancelPnLSingle(8)


def test_market_data_and_orders_are_refused_with_the_request_id(app: Recorder, sim: GatewayThread) -> None:
    contract = IbContract()
    contract.conId = 265598
    contract.symbol = "AAPL"
    contract.secType = "STK"
    contract.exchange = "SMART"
    contract.currency = "USD"
    app.reqMktData(42, contract, "", False, False, [])
    app.wait("error 354")
    assert (42, 354, "Requested market data is not subscribed.") in app.errors

    order = Order()
    order.action = "BUY"
    order.orderType = "LMT"
    order.totalQuantity = 1
    order.lmtPrice = 1.0
    assert app.next_order_id is not None
    app.placeOrder(app.next_order_id, contract, order)
    app.wait("error 321")
    (refusal,) = [e for e in app.errors if e[1] == 321]
    assert refusal[0] == app.next_order_id
    assert "Read-Only" in refusal[2]

    records = [r for r in sim.requests() if r.client_id == CLIENT_ID]
    market_data = [r for r in records if r.is_market_data]
    orders = [r for r in records if r.is_order]
    assert [(r.name, r.fields[2]) for r in market_data] == [("REQ_MKT_DATA", "42")]
    assert [(r.name, r.fields[1]) for r in orders] == [("PLACE_ORDER", str(app.next_order_id))]
    assert app.isConnected()


def test_two_official_clients_share_one_gateway_and_the_same_client_id_is_refused(sim: GatewayThread) -> None:
    """A second client with a taken id gets 326 and is closed; its own decoder reads the error."""
    first, second = Recorder(), Recorder()
    threads = []
    for recorder in (first, second):
        thread = threading.Thread(
            target=recorder.connect_and_run, args=(sim.host, sim.port, CLIENT_ID + 1), daemon=True
        )
        threads.append(thread)
        thread.start()
        if recorder is first:
            recorder.wait("nextValidId")
    second.wait("error 326")
    second.wait("connectionClosed")
    assert (-1, 326) in [(req_id, code) for req_id, code, _ in second.errors]
    first.reqCurrentTime()
    first.wait("currentTime")
    assert sim.call(lambda gw: gw.connected_clients) == [CLIENT_ID + 1]
    first.stop()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
