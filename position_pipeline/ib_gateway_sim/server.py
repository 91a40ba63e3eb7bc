"""The asyncio adapter: moves bytes between sockets and sessions, runs the clocks (price moves, portfolio refresh),
and offers the control API that tests and the CLI use to change state and inject faults while clients are connected.

`SimulatedGateway` lives in one event loop; `GatewayThread` runs one in a background thread for code (tests, the
pipeline, the demo) whose own loop must stay free for the IB client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from .faults import Faults
from .hub import Hub, RequestRecord
from .messages import ErrorCode, error_text
from .session import Session
from .state import Contract, GatewayState, Holding, Valuation

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_HOST = "127.0.0.1"
READ_CHUNK = 64 * 1024


class SimulatedGateway:
    """A TWS API server on loopback. Use as `async with SimulatedGateway(state) as gateway:`."""

    def __init__(
        self,
        state: GatewayState | None = None,
        host: str = DEFAULT_HOST,
        port: int = 0,
        faults: Faults | None = None,
        price_interval: float | None = 1.0,
        portfolio_refresh: float = 180.0,
        timezone: str | None = None,
    ) -> None:
        """`portfolio_refresh`: seconds between refresh ticks (every account revalued and pushed; IB: about 3
        min; 0: only at start, on position changes and on `revalue`). `timezone`: the gateway's IANA zone
        (default: the state's, America/New_York unless the state says otherwise)."""
        self.hub = Hub(state or GatewayState.generate(positions=20, accounts=2), faults or Faults())
        if timezone is not None:
            self.hub.state.set_timezone(timezone)
        self.host = host
        self.port = port
        self.price_interval = price_interval
        self.portfolio_refresh = portfolio_refresh
        self._server: asyncio.Server | None = None
        self._connections: dict[int, tuple[Session, asyncio.StreamWriter]] = {}
        self._serial = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._reopen: asyncio.TimerHandle | None = None
        self._closed = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Value every account once (the first download's values), then listen and run the clocks."""
        self.state.revalue()
        self.hub.call_later = asyncio.get_running_loop().call_later  # download latency timers
        await self._listen()
        if self.price_interval:
            self._tasks.append(asyncio.create_task(self._clock(self.price_interval, prices=True)))
        if self.portfolio_refresh:
            self._tasks.append(asyncio.create_task(self._clock(self.portfolio_refresh, prices=False)))
        log.info("simulated IB Gateway listening on %s:%d (accounts %s, %d positions)",
                 self.host, self.port, ",".join(self.state.accounts), len(self.state.holdings))  # fmt: skip

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self.faults.down_until = None

    async def close(self) -> None:
        if self._reopen:
            self._reopen.cancel()
        for task in self._tasks:
            task.cancel()
        self._stop_listening()
        self.drop_connections()
        self._closed.set()

    async def serve_forever(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> SimulatedGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    # --- the control API (call on the gateway's loop; GatewayThread.call does that from other threads) --------

    @property
    def state(self) -> GatewayState:
        return self.hub.state

    @property
    def faults(self) -> Faults:
        return self.hub.faults

    @property
    def requests(self) -> list[RequestRecord]:
        return list(self.hub.requests)

    @property
    def connected_clients(self) -> list[int]:
        return sorted(self.hub.sessions)

    @property
    def open_pnl_subscriptions(self) -> list[tuple[int, int, str, int]]:
        """(client id, reqId, account, conid) of each PnL subscription on a connection still open: closing a
        connection ends its subscriptions, as at IB."""
        return self.hub.open_pnl_subscriptions()

    def go_down(self, seconds: float, drop_existing: bool = True) -> None:
        """Refuse connections for `seconds` (the listening socket is closed), like a restarting gateway."""
        loop = asyncio.get_running_loop()
        self._stop_listening()
        if drop_existing:
            self.drop_connections()
        self.faults.down_until = loop.time() + seconds
        if self._reopen:
            self._reopen.cancel()
        self._reopen = loop.call_later(seconds, lambda: asyncio.ensure_future(self._come_back()))
        log.warning("fault: gateway down for %.1f s", seconds)

    async def _come_back(self) -> None:
        self._reopen = None
        await self._listen()
        log.warning("gateway accepting connections again on %s:%d", self.host, self.port)

    def drop_connections(self) -> None:
        """Close every client socket at once, as when the gateway process dies."""
        for session, writer in list(self._connections.values()):
            session.close("fault: connection dropped")
            writer.transport.abort()

    def connectivity_lost(self) -> None:
        """Error 1100 to every client; replies are held back until connectivity is restored."""
        self.faults.offline = True
        self.hub.broadcast_error(ErrorCode.CONNECTIVITY_LOST, error_text(ErrorCode.CONNECTIVITY_LOST))

    def connectivity_restored(self, data_lost: bool = False) -> None:
        """Error 1102 (held replies are sent) or 1101 (data lost: held replies are dropped)."""
        self.faults.offline = False
        code = (
            ErrorCode.CONNECTIVITY_RESTORED_DATA_LOST if data_lost else ErrorCode.CONNECTIVITY_RESTORED_DATA_MAINTAINED
        )
        self.hub.broadcast_error(code, error_text(code))
        for session in list(self.hub.sessions.values()):
            session.release_withheld(deliver=not data_lost)

    def send_error(self, code: int, text: str | None = None) -> None:
        """Any IB error or notice (for example 2110) to every connected client, with reqId -1."""
        if text is None:
            text = error_text(ErrorCode(code)) if code in ErrorCode._value2member_map_ else f"error {code}"
        self.hub.broadcast_error(code, text)

    def set_position(
        self,
        account: str,
        contract: Contract,
        quantity: float,
        average_cost: float | None = None,
        market_price: float | None = None,
    ) -> Holding:
        return self.state.set_position(account, contract, quantity, average_cost, market_price)

    def close_position(self, account: str, conid: int) -> Holding:
        return self.state.close_position(account, conid)

    def move_prices(self) -> None:
        self.state.move_prices()
        self.hub.refresh(portfolio=False, pnl=True)

    def revalue(self, account: str | None = None, at: datetime | None = None) -> datetime:
        """A refresh tick at `at` (timezone-aware; default now): revalue `account` (every account when None) at
        the live prices and push the values to its account-updates subscriber. Returns the tick in UTC."""
        when = self.state.revalue(account, at)
        self.hub.refresh(portfolio=True, pnl=False, accounts=None if account is None else [account])
        return when

    def refresh_portfolios(self) -> None:
        """The periodic refresh tick: every account revalued now and pushed."""
        self.revalue()

    # --- I/O -------------------------------------------------------------------------------------------------

    async def _clock(self, interval: float, prices: bool) -> None:
        while True:
            await asyncio.sleep(interval)
            if prices:
                self.move_prices()
            else:
                self.refresh_portfolios()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = next(self._serial)
        session = Session(self.hub, connection)
        self._connections[connection] = (session, writer)
        output = asyncio.Event()
        session.on_output = output.set
        sender = asyncio.create_task(self._send_loop(session, writer, output))
        peer = writer.get_extra_info("peername")
        log.debug("connection %d from %s", connection, peer)
        try:
            while session.close_reason is None:
                data = await reader.read(READ_CHUNK)
                if not data:
                    session.receive_eof()
                    break
                session.receive_data(data)
                output.set()
        except (ConnectionError, OSError) as exc:
            session.close(f"socket error: {exc}")
        except Exception:  # a bug in the simulator must cost one connection, never the server
            log.exception("connection %d: unexpected error; closing it", connection)
            session.close("internal error")
        finally:
            output.set()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await asyncio.wait_for(sender, timeout=max(5.0, self.faults.reply_delay + 5.0))
            if not writer.is_closing():
                writer.close()
            self._connections.pop(connection, None)
            self.hub.unregister(session)
            log.info("connection %d (client %s) closed: %s", connection, session.client_id, session.close_reason)

    async def _send_loop(self, session: Session, writer: asyncio.StreamWriter, output: asyncio.Event) -> None:
        """The one writer of a connection, so replies and pushes keep their order."""
        try:
            while True:
                await output.wait()
                output.clear()
                frames = session.data_to_send()
                if frames:
                    if self.faults.reply_delay > 0:
                        await asyncio.sleep(self.faults.reply_delay)
                    writer.write(b"".join(frames))
                    await writer.drain()
                if session.close_reason is not None:
                    if not writer.is_closing():
                        writer.close()
                    return
        except (ConnectionError, OSError) as exc:
            session.close(f"socket error: {exc}")


class GatewayThread:
    """Runs a SimulatedGateway in its own thread and loop; `call` runs control code there and waits for it."""

    def __init__(self, gateway_factory: Callable[[], SimulatedGateway], start_timeout: float = 10.0) -> None:
        self._factory = gateway_factory
        self._start_timeout = start_timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="ib-gateway-sim", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.gateway: SimulatedGateway

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self.gateway = self._factory()
            self._loop.run_until_complete(self.gateway.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_until_complete(self.gateway.serve_forever())
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def start(self) -> GatewayThread:
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            raise TimeoutError("the simulated gateway did not start in time")
        if self._error:
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.gateway.close(), self._loop).result(timeout)
            self._thread.join(timeout)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self.gateway.port

    @property
    def host(self) -> str:
        return self.gateway.host

    def call(self, fn: Callable[[SimulatedGateway], T], timeout: float = 10.0) -> T:
        """Run `fn(gateway)` on the gateway's loop and return its result."""

        async def run() -> T:
            return fn(self.gateway)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def requests(self) -> list[RequestRecord]:
        return self.call(lambda gw: gw.requests)

    def revalue(self, account: str | None = None, at: datetime | None = None) -> datetime:
        """`SimulatedGateway.revalue` on the gateway's loop: a refresh tick at a chosen moment."""
        return self.call(lambda gw: gw.revalue(account, at))

    # What clients are told, read on the gateway's loop (the state's stored valuations, never the live prices).

    def valuation(self, account: str, conid: int) -> Valuation:
        """The values `account`'s clients were last told for its holding of `conid` (KeyError if not held)."""

        def told(gateway: SimulatedGateway) -> Valuation:
            holding = gateway.state.holding(account, conid)
            if holding is None:
                raise KeyError(f"{account} holds no conid {conid}")
            return gateway.state.valuation(holding)

        return self.call(told)

    def valued_at(self, account: str) -> datetime:
        """When `account` was last valued (UTC): its ACCT_UPDATE_TIME is this moment's HH:MM in the gateway's zone."""
        return self.call(lambda gw: gw.state.valued_at(account))

    def base_currency(self, account: str) -> str:
        return self.call(lambda gw: gw.state.base_currency(account))

    def exchange_rate(self, account: str, currency: str) -> float | None:
        """The ExchangeRate `account` was last told for `currency` (value_in_base = value * rate)."""
        return self.call(lambda gw: gw.state.exchange_rate(account, currency))

    def set_faults(self, **changes: Any) -> None:
        """Change fault switches (see `Faults`) while clients are connected."""

        def apply(gateway: SimulatedGateway) -> None:
            for name, value in changes.items():
                if not hasattr(gateway.faults, name):
                    raise AttributeError(f"no fault named {name!r}")
                setattr(gateway.faults, name, value)

        self.call(apply)
