"""One polling read of positions and portfolio values from IB Gateway/TWS through ib_async. No Dagster here.

Read-only, and never a market-data request: positions come from the reqPositions that ib_async sends at every connect
(collected, then cancelled: no second request), and market values from reqAccountUpdates, one account at a time (IB
serves one account across all clients), each unsubscribed before the next. The connection is always closed on the way
out. Every failure becomes an `IBError` whose message says what happened and what to do.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ib_async import IB, PortfolioItem, Position, StartupFetch

from position_pipeline.core import terms

log = logging.getLogger(__name__)

CLIENT_ID_IN_USE = 326
ACCOUNT_UPDATES_REFUSED = 2101  # another client holds account updates for a different account


class IBError(Exception):
    """Reading from IB failed; the message names the gateway, the client id and what IB said."""


class GatewayUnreachable(IBError):
    pass


class ClientIdInUse(IBError):
    pass


class IBTimeout(IBError):
    pass


class IBDisconnected(IBError):
    pass


class IBConfigError(IBError):
    pass


@dataclass(frozen=True)
class IBSettings:
    """Where the gateway is and how long to wait; the resource fills it from its config."""

    host: str = terms.IB_HOST
    port: int = terms.IB_PORT
    client_id: int = terms.IB_CLIENT_ID
    client_id_span: int = terms.IB_CLIENT_ID_SPAN
    accounts: tuple[str, ...] = ()
    connect_timeout: float = terms.IB_CONNECT_TIMEOUT_S
    request_timeout: float = terms.IB_REQUEST_TIMEOUT_S
    client_id_attempts: int = 5

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class HeldPosition:
    """A position with its contract and, when IB sent them, its portfolio values."""

    account: str
    conid: int
    symbol: str
    sec_type: str
    expiry: str
    strike: float
    right: str
    multiplier: str
    currency: str
    local_symbol: str
    trading_class: str
    exchange: str
    position: float
    average_cost: float
    market_price: float | None = None
    market_value: float | None = None
    unrealized_pnl: float | None = None
    realized_pnl: float | None = None
    account_update_time: str | None = None


@dataclass
class IBSnapshot:
    """What one read saw: every position of the wanted contracts in the configured accounts."""

    taken_at: datetime
    client_id: int
    server_version: int
    managed_accounts: list[str]
    accounts: list[str]  # the accounts this read covered: the configured ones, else every managed one
    positions: list[HeldPosition] = field(default_factory=list)
    notices: list[tuple[int, int, str]] = field(default_factory=list)

    def by_conid(self) -> dict[int, list[HeldPosition]]:
        found: dict[int, list[HeldPosition]] = {}
        for position in self.positions:
            found.setdefault(position.conid, []).append(position)
        return found


def client_id_for(seed: str, settings: IBSettings, attempt: int = 0) -> int:
    """Distinct, stable client ids for overlapping runs: derived from the run id, moved on when IB says 326."""
    offset = (zlib.crc32(seed.encode()) + attempt) % max(settings.client_id_span, 1)
    return settings.client_id + offset


def read_snapshot(settings: IBSettings, conids: Iterable[int], seed: str) -> IBSnapshot:
    """Blocking wrapper for code that has no event loop (Dagster asset bodies)."""
    return asyncio.run(read_snapshot_async(settings, set(conids), seed))


async def read_snapshot_async(settings: IBSettings, conids: set[int], seed: str) -> IBSnapshot:
    ib = IB()
    notices: list[tuple[int, int, str]] = []
    positions: list[Position] = []
    ib.errorEvent += lambda req_id, code, text, contract: notices.append((req_id, code, text))
    ib.positionEvent += positions.append  # ib_async reads every position at connect; nothing to ask again
    client_id = await _connect(ib, settings, seed, notices)
    try:
        ib.client.cancelPositions()
        managed = ib.managedAccounts()
        unknown = sorted(set(settings.accounts) - set(managed))
        if unknown:
            raise IBConfigError(
                f"accounts {', '.join(unknown)} are not managed by the gateway at {settings.where} (client id "
                f"{client_id}; it manages {', '.join(managed)}): fix IB_ACCOUNTS"
            )
        accounts = list(settings.accounts) or managed
        snapshot = IBSnapshot(
            datetime.now(UTC), client_id, ib.client.serverVersion(), managed, accounts, notices=notices
        )
        latest = {(p.account, p.contract.conId): p for p in positions}  # later pushes replace earlier ones
        wanted = [p for p in latest.values() if p.account in accounts and p.contract.conId in conids]
        values: dict[tuple[str, int], PortfolioItem] = {}
        update_times: dict[str, str] = {}
        for account in sorted({p.account for p in wanted}):
            values.update(await _read_portfolio_when_free(ib, account, settings, client_id, notices, update_times))
        snapshot.taken_at = datetime.now(UTC)
        for p in wanted:
            c = p.contract
            item = values.get((p.account, c.conId))
            snapshot.positions.append(
                HeldPosition(
                    account=p.account,
                    conid=c.conId,
                    symbol=c.symbol,
                    sec_type=c.secType,
                    expiry=c.lastTradeDateOrContractMonth,
                    strike=c.strike,
                    right=c.right,
                    multiplier=c.multiplier,
                    currency=c.currency,
                    local_symbol=c.localSymbol,
                    trading_class=c.tradingClass,
                    exchange=c.exchange,
                    position=p.position,
                    average_cost=p.avgCost,
                    market_price=item.marketPrice if item else None,
                    market_value=item.marketValue if item else None,
                    unrealized_pnl=item.unrealizedPNL if item else None,
                    realized_pnl=item.realizedPNL if item else None,
                    account_update_time=update_times.get(p.account),
                )
            )
        return snapshot
    finally:
        ib.disconnect()


async def _connect(ib: IB, settings: IBSettings, seed: str, notices: list[tuple[int, int, str]]) -> int:
    """Connect read-only. ib_async always reads every position at connect (and nothing else with StartupFetch(0));
    with raiseSyncErrors that read must finish within the connect timeout. On 326, move to the next client id."""
    tried = []
    for attempt in range(settings.client_id_attempts):
        client_id = client_id_for(seed, settings, attempt)
        tried.append(client_id)
        seen = len(notices)
        connect = asyncio.ensure_future(
            ib.connectAsync(
                settings.host,
                settings.port,
                clientId=client_id,
                timeout=settings.connect_timeout,
                readonly=True,
                fetchFields=StartupFetch(0),
                raiseSyncErrors=True,
            )
        )
        refused = asyncio.ensure_future(_until_code(notices, seen, CLIENT_ID_IN_USE))
        try:
            done, _ = await asyncio.wait({connect, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            refused.cancel()
        if refused in done and not connect.done():
            connect.cancel()
            await asyncio.gather(connect, return_exceptions=True)
            ib.disconnect()
            log.warning("client id %d is in use at %s; trying the next one", client_id, settings.where)
            continue
        try:
            await connect
        except ConnectionRefusedError as exc:
            raise GatewayUnreachable(
                f"IB Gateway/TWS refused the connection at {settings.where} (client id {client_id}): is it running, "
                f"with the API enabled on port {settings.port} (IB_HOST, IB_PORT)?"
            ) from exc
        except ConnectionError as exc:
            if exc.args and isinstance(exc.args[0], list):  # raiseSyncErrors: the connect-time reads timed out
                raise IBTimeout(
                    _timeout_text(settings, client_id, "reqPositions (sent by ib_async at connect)", notices,
                                  settings.connect_timeout)
                ) from exc  # fmt: skip
            raise IBDisconnected(_disconnect_text(settings, client_id, "the connect-time reqPositions")) from exc
        except TimeoutError as exc:
            if _has_code(notices, seen, CLIENT_ID_IN_USE):
                ib.disconnect()
                continue
            raise IBTimeout(
                f"no API handshake from {settings.where} within {settings.connect_timeout:g} s with client id "
                f"{client_id}: check that the port is the API port and that the gateway is logged in"
            ) from exc
        except OSError as exc:
            raise GatewayUnreachable(f"cannot reach IB at {settings.where} (client id {client_id}): {exc}") from exc
        log.info("connected to IB at %s with client id %d (server version %d)",
                 settings.where, client_id, ib.client.serverVersion())  # fmt: skip
        return client_id
    raise ClientIdInUse(
        f"IB at {settings.where} says client ids {tried} are already in use (error 326): another program or a "
        f"crashed run holds them; set IB_CLIENT_ID to a free range or wait for the gateway to release them"
    )


class _AccountUpdatesRefused(IBError):
    """2101: another client holds account updates for a different account."""


async def _read_portfolio_when_free(
    ib: IB,
    account: str,
    settings: IBSettings,
    client_id: int,
    notices: list[tuple[int, int, str]],
    update_times: dict[str, str],
) -> dict[tuple[str, int], PortfolioItem]:
    """IB serves account updates to one account at a time across all clients: when another client (a backfill run
    next to the sensor's) holds another account, wait for it and try again, within the request timeout."""
    deadline = time.monotonic() + settings.request_timeout
    delay, refusals = _REFUSED_FIRST_WAIT_S, 0
    while True:
        remaining = deadline - time.monotonic()
        try:
            return await _read_portfolio(ib, account, settings, client_id, notices, update_times, remaining)
        except _AccountUpdatesRefused as exc:
            refusals += 1
            if time.monotonic() + delay >= deadline:
                raise IBError(f"{exc} (refused {refusals} times in {settings.request_timeout:g} s)") from exc
            log.info("account updates for %s refused (2101), try %d; retrying in %.2f s", account, refusals, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _REFUSED_MAX_WAIT_S)


_REFUSED_FIRST_WAIT_S = 0.1
_REFUSED_MAX_WAIT_S = 1.0


async def _read_portfolio(
    ib: IB,
    account: str,
    settings: IBSettings,
    client_id: int,
    notices: list[tuple[int, int, str]],
    update_times: dict[str, str],
    timeout: float,
) -> dict[tuple[str, int], PortfolioItem]:
    """Subscribe to one account's updates, read to accountDownloadEnd, unsubscribe."""
    wrapper = ib.wrapper
    original = wrapper.updateAccountTime
    wrapper.updateAccountTime = lambda timestamp: update_times.__setitem__(account, timestamp)  # type: ignore[method-assign]
    seen = len(notices)
    items: dict[tuple[str, int], PortfolioItem] = {}

    def keep(item: PortfolioItem) -> None:  # ib.portfolio() drops positions closed today; the event keeps them
        if item.account == account:
            items[(item.account, item.contract.conId)] = item

    ib.updatePortfolioEvent += keep
    download = asyncio.ensure_future(ib.reqAccountUpdatesAsync(account))
    refused = asyncio.ensure_future(_until_code(notices, seen, ACCOUNT_UPDATES_REFUSED))
    try:
        done, _ = await asyncio.wait({download, refused}, timeout=max(timeout, 0.0),
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if refused in done:
            download.cancel()
            said = next(text for _, code, text in notices[seen:] if code == ACCOUNT_UPDATES_REFUSED)
            raise _AccountUpdatesRefused(
                f"IB at {settings.where} refused account updates for {account} to client id {client_id} (error "
                f"2101: {said}): IB serves one account at a time across all clients and another client held "
                f"another account throughout; the items are released and retried"
            )
        if download not in done:
            download.cancel()
            raise IBTimeout(
                _timeout_text(settings, client_id, f"reqAccountUpdates({account})", notices, settings.request_timeout)
            )
        try:
            download.result()
        except ConnectionError as exc:
            raise IBDisconnected(_disconnect_text(settings, client_id, f"reqAccountUpdates({account})")) from exc
    finally:
        refused.cancel()
        ib.updatePortfolioEvent -= keep
        wrapper.updateAccountTime = original  # type: ignore[method-assign]
        if ib.isConnected():
            ib.client.reqAccountUpdates(False, account)
    return items


def _timeout_text(
    settings: IBSettings, client_id: int, what: str, notices: list[tuple[int, int, str]], waited: float
) -> str:
    """Every error IB sent on this connection (not the 2100-2199 notices) goes into the message."""
    said = [f"{code} {text}" for _, code, text in notices if code < 2100 or code > 2199]
    hint = f"; IB said: {' | '.join(said)}" if said else ""
    return (
        f"{what} did not complete within {waited:g} s (gateway {settings.where}, client id "
        f"{client_id}){hint}: the gateway may be restarting or have lost its connection to IB; the items are "
        f"released and retried"
    )


def _disconnect_text(settings: IBSettings, client_id: int, what: str) -> str:
    return (
        f"the connection to IB at {settings.where} (client id {client_id}) dropped during {what}: the items are "
        f"released and retried on a later tick"
    )


def _has_code(notices: list[tuple[int, int, str]], since: int, code: int) -> bool:
    return any(c == code for _, c, _ in notices[since:])


async def _until_code(notices: list[tuple[int, int, str]], since: int, code: int) -> None:
    while not _has_code(notices, since, code):
        await asyncio.sleep(0.02)
