"""One polling read of positions and portfolio values from IB Gateway/TWS through ib_async. No Dagster here.

Read-only, and never a market-data request: positions come from the reqPositions that ib_async sends at every connect
(collected, then cancelled: no second request). Market values come from one of two places (IB_VALUES_FROM): in the
account mode from reqAccountUpdates, one account at a time (IB serves one account across all clients), each
unsubscribed before the next (`account_download`); in the pnl mode from reqPnLSingle per wanted position, all at once
(`pnl_values`). A row's quantity and values come from one message of IB (a portfolio item, a PnL message); the
connect-time figure is kept only to say when they differ. The connection is always closed on the way out. Every
failure becomes an `IBError` (`ib_errors`) whose message says what happened and what to do.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import zlib
from collections.abc import Iterable, Mapping, Set
from datetime import UTC, datetime

from ib_async import IB, Contract, PortfolioItem, Position, StartupFetch

from position_pipeline.core.account_download import AccountDownload, read_account_when_free
from position_pipeline.core.ib_errors import (
    ACCOUNT_UPDATES_REFUSED,
    CLIENT_ID_IN_USE,
    POSITIONS_REFUSED,
    AccountUnavailable,
    ClientIdInUse,
    GatewayUnreachable,
    IBConfigError,
    IBDisconnected,
    IBError,
    IBProtocolError,
    IBTimeout,
    Notices,
    disconnect_text,
    has_code,
    timeout_text,
    until_code,
)
from position_pipeline.core.ib_records import HeldPosition, IBSettings, IBSnapshot
from position_pipeline.core.pnl_values import read_pnl_values
from position_pipeline.core.terms import ValuesFrom

__all__ = [
    "ACCOUNT_UPDATES_REFUSED", "CLIENT_ID_IN_USE", "AccountUnavailable", "ClientIdInUse", "GatewayUnreachable",
    "HeldPosition", "IBConfigError", "IBDisconnected", "IBError", "IBProtocolError", "IBSettings", "IBSnapshot",
    "IBTimeout", "client_id_for",
    "read_snapshot", "read_snapshot_async",
]  # fmt: skip

log = logging.getLogger(__name__)


def client_id_for(seed: str, settings: IBSettings, attempt: int = 0) -> int:
    """Distinct, stable client ids for overlapping runs: derived from the run id, moved on when IB says 326."""
    offset = (zlib.crc32(seed.encode()) + attempt) % max(settings.client_id_span, 1)
    return settings.client_id + offset


def read_snapshot(
    settings: IBSettings, conids: Iterable[int], seed: str, pinned: Mapping[int, Set[str]] | None = None
) -> IBSnapshot:
    """Blocking wrapper for code that has no event loop (Dagster asset bodies)."""
    return asyncio.run(read_snapshot_async(settings, set(conids), seed, pinned))


async def read_snapshot_async(
    settings: IBSettings, conids: set[int], seed: str, pinned: Mapping[int, Set[str]] | None = None
) -> IBSnapshot:
    """The positions of `conids` in the configured accounts, with their values. `pinned` (conid -> accounts) narrows
    a contract whose every item names its account to those accounts (`sync.pinned_accounts`); any other contract is
    read in every account that holds it."""
    pinned = pinned or {}
    ib = IB()
    notices: Notices = []
    positions: list[Position] = []
    ib.errorEvent += lambda req_id, code, text, contract: notices.append((req_id, code, text))
    ib.positionEvent += positions.append  # ib_async reads every position at connect; nothing to ask again
    refused: list[str] = []

    def positions_refused(req_id: int, code: int, text: str, contract: object) -> None:
        """IB serves no reqPositions to logins with more than 50 subaccounts: its 321 ends ib_async's wait."""
        if code == POSITIONS_REFUSED and req_id == -1:  # only while connecting: removed once connected
            refused.append(text)
            ib.wrapper.positionEnd()

    ib.errorEvent += positions_refused
    started = time.monotonic()
    client_id = await _connect(ib, settings, seed, notices)
    ib.errorEvent -= positions_refused
    try:
        ib.client.cancelPositions()
        managed = _checked_accounts(ib.managedAccounts(), settings, client_id)
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
        _check_positions(positions, managed, settings, client_id)
        latest = {(p.account, p.contract.conId): p for p in positions}  # later pushes replace earlier ones
        wanted = [p for p in latest.values() if p.account in accounts and p.contract.conId in conids]
        wanted = [p for p in wanted if _pinned_allows(pinned, p.account, p.contract.conId)]
        needed = sorted({p.account for p in wanted})
        if refused:  # no position list: every account is read, and its download lists its positions
            log.warning("IB refused reqPositions (%s): reading every account's download instead%s", refused[0],
                        " (pnl mode needs the position list)" * (settings.values_from is ValuesFrom.PNL))  # fmt: skip
            snapshot.positions_from_downloads, needed = True, sorted(accounts) if conids else []
        if settings.values_from is ValuesFrom.PNL and not refused:
            await read_pnl_values(ib, snapshot, wanted, settings, client_id, started)
        else:
            await _read_downloads(ib, snapshot, needed, settings, client_id, started)
            snapshot.unread = {(p.account, p.contract.conId) for p in wanted if p.account not in snapshot.downloads}
            wanted = [p for p in wanted if p.account in snapshot.downloads]
            snapshot.positions = _held_positions(wanted, snapshot.downloads, conids, pinned)
        snapshot.taken_at = datetime.now(UTC)
        return snapshot
    finally:
        ib.disconnect()


async def _read_downloads(
    ib: IB, snapshot: IBSnapshot, needed: list[str], settings: IBSettings, client_id: int, started: float
) -> None:
    """The account mode: each needed account's download in turn, each within its own bound and what is left of the
    read's budget; one that fails is unavailable. IBTimeout/IBError when none could be read."""
    causes: list[BaseException | None] = []
    for account in needed:
        left = settings.read_budget - (time.monotonic() - started)
        if left <= 0:
            snapshot.unavailable[account] = (
                f"the read's budget of {settings.read_budget:g} s (IB_READ_BUDGET) was spent before {account} was read"
            )
            continue
        began = time.monotonic()
        try:
            snapshot.downloads[account] = await read_account_when_free(
                ib, account, settings, min(settings.request_timeout, left), client_id, snapshot.notices,
                settings.zone,
            )  # fmt: skip
        except AccountUnavailable as exc:
            log.warning("account %s not read: %s", account, exc)
            snapshot.unavailable[account] = str(exc)
            causes.append(exc.__cause__)
        snapshot.seconds[account] = time.monotonic() - began
    if needed and not snapshot.downloads:  # nothing to write: the run fails and the sensor backs off
        kind = IBTimeout if all(isinstance(c, IBTimeout) for c in causes) else IBError
        raise kind(
            f"no account could be read from IB at {settings.where} (client id {client_id}): "
            + "; ".join(f"{a}: {why}" for a, why in snapshot.unavailable.items())
        )


def _pinned_allows(pinned: Mapping[int, Set[str]], account: str, conid: int) -> bool:
    """Whether the read wants `account`'s position in `conid`: a pinned contract in its items' accounts only."""
    return conid not in pinned or account in pinned[conid]


def _held_positions(
    wanted: list[Position], downloads: dict[str, AccountDownload], conids: set[int], pinned: Mapping[int, Set[str]]
) -> list[HeldPosition]:
    """The wanted contracts held in the downloaded accounts: every reqPositions entry, with its portfolio item when
    the download had one, and the download's items that reqPositions did not list (opened in between)."""
    held = [_held(p.account, p.contract, downloads[p.account], p.position, p.avgCost) for p in wanted]
    listed = {(p.account, p.contract.conId) for p in wanted}
    for account, download in sorted(downloads.items()):
        for conid, item in sorted(download.items.items()):
            if conid in conids and (account, conid) not in listed and _pinned_allows(pinned, account, conid):
                held.append(_held(account, item.contract, download, None, item.averageCost))
    return held


def _held(account: str, c: Contract, download: AccountDownload, connect: float | None, cost: float) -> HeldPosition:
    item: PortfolioItem | None = download.items.get(c.conId)
    return HeldPosition.of(
        account,
        c,
        c.exchange or _listing(item),
        position=item.position if item else (connect or 0.0),
        average_cost=item.averageCost if item else cost,
        market_price=item.marketPrice if item else None,
        market_value=item.marketValue if item else None,
        unrealized_pnl=item.unrealizedPNL if item else None,
        realized_pnl=item.realizedPNL if item else None,
        account_update_time=download.update_time,
        values_as_of=download.values_as_of,
        base_currency=download.base_currency,
        fx_rate=download.fx_rate(c.currency),
        connect_position=connect,
    )


_ACCOUNT_CODE = re.compile(r"[A-Z][A-Z0-9]*[0-9][A-Z0-9]*")
"""What IB account codes look like (DU1234567, U1234567, F1234567, I1234567 ...): letters, then digits."""


def _checked_accounts(managed: list[str], settings: IBSettings, client_id: int) -> list[str]:
    """The managed accounts, or IBProtocolError when the list names none or something that is no account code (a
    broken or hostile server made ib_async read `-1` as one)."""
    bad = [a for a in managed if not _ACCOUNT_CODE.fullmatch(a)]
    if not managed or bad:
        raise IBProtocolError(
            f"IB at {settings.where} (client id {client_id}) sent managed accounts {managed!r}, which "
            f"{'names no account' if not managed else f'includes {bad!r}, not an account code'}: is it an IB "
            "Gateway/TWS API port? The read is not trusted and the items are released"
        )
    return managed


def _check_positions(positions: list[Position], managed: list[str], settings: IBSettings, client_id: int) -> None:
    """Every position names a managed account, an integer conid and a finite quantity; else IBProtocolError."""
    broken = [
        f"{p.account!r} conid {p.contract.conId!r} position {p.position!r}"
        for p in positions
        if p.account not in managed
        or not isinstance(p.contract.conId, int)
        or p.contract.conId <= 0
        or not math.isfinite(p.position)
    ]
    if broken:
        raise IBProtocolError(
            f"IB at {settings.where} (client id {client_id}) sent {len(broken)} positions no gateway sends "
            f"({'; '.join(broken[:3])}; managed accounts {', '.join(managed)}): the read is not trusted and the "
            "items are released"
        )


def _listing(item: PortfolioItem | None) -> str:
    """A futures position message has no exchange (IB leaves it out); its portfolio item names the listing."""
    return "" if item is None else item.contract.exchange or item.contract.primaryExchange


async def _connect(ib: IB, settings: IBSettings, seed: str, notices: Notices) -> int:
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
        refused = asyncio.ensure_future(until_code(notices, seen, CLIENT_ID_IN_USE))
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
                    timeout_text(settings, client_id, "reqPositions (sent by ib_async at connect)", notices,
                                  settings.connect_timeout)
                ) from exc  # fmt: skip
            raise IBDisconnected(disconnect_text(settings, client_id, "the connect-time reqPositions")) from exc
        except TimeoutError as exc:
            if has_code(notices, seen, CLIENT_ID_IN_USE):
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
