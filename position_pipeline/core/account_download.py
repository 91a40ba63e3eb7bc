"""One account's download (reqAccountUpdates): its portfolio items, account values and update time, read to
accountDownloadEnd and unsubscribed. No Dagster here.

IB serves account updates for one account at a time across all clients, so a download that another client's
subscription blocks (2101) is asked for again, within the account's bound; one that TWS interrupts (2100) is asked
for once more. Any of them failing costs this account only (AccountUnavailable). What the download says about the
account beside its positions is kept: its base currency, the ExchangeRate of each currency and the account update
time, parsed into the UTC moment of the values (`account_time.values_as_of`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from ib_async import IB, AccountValue, PortfolioItem

from position_pipeline.core.account_time import values_as_of
from position_pipeline.core.ib_errors import (
    ACCOUNT_UNSUBSCRIBED,
    ACCOUNT_UPDATES_REFUSED,
    AccountUnavailable,
    IBDisconnected,
    IBError,
    IBProtocolError,
    IBTimeout,
    Notices,
    Where,
    disconnect_text,
    timeout_text,
    until_code,
)

log = logging.getLogger(__name__)

BASE = "BASE"
"""The pseudo-currency of IB's account values that are totals in the account's base currency."""

BASE_CURRENCY_KEYS = ("NetLiquidation", "TotalCashValue", "EquityWithLoanValue", "AvailableFunds")
"""Account-level values IB states in the base currency: the first one present names it."""

_REFUSED_FIRST_WAIT_S = 0.1
_REFUSED_MAX_WAIT_S = 1.0


@dataclass
class AccountDownload:
    """What one account's download said. `items` by conid (positions closed today included, with quantity 0);
    `rates` maps a currency to the factor that turns it into `base_currency` (the base itself: 1.0)."""

    account: str
    finished_at: datetime
    items: dict[int, PortfolioItem] = field(default_factory=dict)
    update_time: str | None = None
    values_as_of: datetime | None = None
    base_currency: str | None = None
    rates: dict[str, float] = field(default_factory=dict)

    def fx_rate(self, currency: str) -> float | None:
        """The rate for `currency`, or None when IB sent none (never a guessed 1.0)."""
        return self.rates.get(currency)


def account_facts(download: AccountDownload, values: list[AccountValue], zone: ZoneInfo) -> None:
    """Fill in the base currency, the rates and the moment of the values from the download's account values."""
    download.base_currency = next(
        (v.currency for key in BASE_CURRENCY_KEYS for v in values if v.tag == key and v.currency not in ("", BASE)),
        None,
    )
    for v in values:
        if v.tag == "ExchangeRate" and v.currency not in ("", BASE):
            try:
                rate = float(v.value)
            except ValueError:
                log.warning("account %s: ExchangeRate %r for %s is not a number", v.account, v.value, v.currency)
                continue
            if rate > 0:
                download.rates[v.currency] = rate
    if download.base_currency is not None:
        download.rates[download.base_currency] = 1.0
    if download.update_time is not None:
        download.values_as_of = values_as_of(download.update_time, download.finished_at, zone)


async def read_account_when_free(
    ib: IB, account: str, settings: Where, timeout: float, client_id: int, notices: Notices, zone: ZoneInfo
) -> AccountDownload:
    """One account's download within `timeout` seconds (its own bound), or AccountUnavailable naming it.

    IB serves account updates to one account at a time across all clients: when another client (a backfill run next
    to the sensor's, a trading bot) holds another account (2101), wait for it and ask again. When TWS takes the
    subscription in the middle of the download (2100), ask once more. A download that never ends, 2101 until the
    bound, or a second 2100 fail this account only; a dropped connection or a broken stream fail the whole read.
    """
    deadline = time.monotonic() + timeout
    delay, refusals, unsubscribed = _REFUSED_FIRST_WAIT_S, 0, 0
    refused: _AccountUpdatesRefused | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 and refused is not None:
            raise AccountUnavailable(account, f"{refused} (refused {refusals} times in {timeout:g} s)") from refused
        try:
            return await read_account(ib, account, settings, client_id, notices, zone, remaining, timeout)
        except _AccountUpdatesRefused as exc:
            refusals, refused = refusals + 1, exc
            log.info("account updates for %s refused (2101), try %d; retrying in %.2f s", account, refusals, delay)
            await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, _REFUSED_MAX_WAIT_S)
        except _AccountUnsubscribed as exc:
            unsubscribed += 1
            if unsubscribed > 1 or deadline - time.monotonic() <= 0:
                raise AccountUnavailable(account, f"{exc}; asked once more and it happened again") from exc
            log.warning("%s; asking once more", exc)
        except IBTimeout as exc:
            raise AccountUnavailable(account, str(exc)) from exc


class _AccountUpdatesRefused(IBError):
    """2101: another client holds account updates for a different account."""


class _AccountUnsubscribed(IBError):
    """2100: TWS took the account subscription in the middle of the download; no accountDownloadEnd follows."""


async def read_account(
    ib: IB,
    account: str,
    settings: Where,
    client_id: int,
    notices: Notices,
    zone: ZoneInfo,
    remaining: float,
    timeout: float,
) -> AccountDownload:
    """Subscribe to one account's updates, read to that account's accountDownloadEnd, unsubscribe.

    ib_async ends its request at any accountDownloadEnd, also a late one of the account read before (whose download
    outlived its bound): the download counts as ended only when the end names this account."""
    wrapper = ib.wrapper
    original_time, original_end = wrapper.updateAccountTime, wrapper.accountDownloadEnd
    download = AccountDownload(account, datetime.now(UTC))
    values: list[AccountValue] = []
    broken: list[str] = []
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def keep_time(timestamp: str) -> None:
        download.update_time = timestamp

    def keep_end(name: str) -> None:
        if name == account and not ended.done():
            ended.set_result(None)
        original_end(name)

    def keep_item(item: PortfolioItem) -> None:  # ib.portfolio() drops positions closed today; the event keeps them
        if item.account != account:
            return
        conid = item.contract.conId
        if not isinstance(conid, int) or conid <= 0 or not math.isfinite(item.position):
            broken.append(f"conid {conid!r}, position {item.position!r}")
        else:
            download.items[conid] = item

    def keep_value(value: AccountValue) -> None:
        if value.account == account:
            values.append(value)

    wrapper.updateAccountTime = keep_time  # type: ignore[method-assign]
    wrapper.accountDownloadEnd = keep_end  # type: ignore[method-assign,assignment]
    ib.updatePortfolioEvent += keep_item
    ib.accountValueEvent += keep_value
    seen = len(notices)
    request = asyncio.ensure_future(ib.reqAccountUpdatesAsync(account))
    refused = asyncio.ensure_future(until_code(notices, seen, ACCOUNT_UPDATES_REFUSED))
    unsubscribed = asyncio.ensure_future(until_code(notices, seen, ACCOUNT_UNSUBSCRIBED))
    deadline = time.monotonic() + max(remaining, 0.0)
    waiting: set[asyncio.Future[None]] = {ended, request, refused, unsubscribed}
    try:
        while not ended.done():
            done, _ = await asyncio.wait(waiting, timeout=max(deadline - time.monotonic(), 0.0),
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if ended in done:
                break
            if unsubscribed in done:
                said = next(text for _, code, text in notices[seen:] if code == ACCOUNT_UNSUBSCRIBED)
                raise _AccountUnsubscribed(
                    f"IB at {settings.where} unsubscribed client id {client_id} from the account data of {account} "
                    f"in the middle of its download (2100: {said}): TWS or another session took the subscription"
                )
            if refused in done:
                said = next(text for _, code, text in notices[seen:] if code == ACCOUNT_UPDATES_REFUSED)
                raise _AccountUpdatesRefused(
                    f"IB at {settings.where} refused account updates for {account} to client id {client_id} (error "
                    f"2101: {said}): IB serves one account at a time across all clients and another client held "
                    f"another account throughout; the items are released and retried"
                )
            if request in done:
                if isinstance(request.exception(), ConnectionError):
                    raise IBDisconnected(disconnect_text(settings, client_id, f"reqAccountUpdates({account})"))
                waiting.discard(request)  # ended by another account's download end: ours is still to come
                continue
            raise IBTimeout(timeout_text(settings, client_id, f"reqAccountUpdates({account})", notices, timeout))
    finally:
        for future in (request, refused, unsubscribed):
            future.cancel()
        ib.updatePortfolioEvent -= keep_item
        ib.accountValueEvent -= keep_value
        wrapper.updateAccountTime = original_time  # type: ignore[method-assign]
        wrapper.accountDownloadEnd = original_end  # type: ignore[method-assign]
        if ib.isConnected():
            ib.client.reqAccountUpdates(False, account)
    if broken:
        raise IBProtocolError(
            f"IB at {settings.where} (client id {client_id}) sent portfolio items for {account} that no gateway "
            f"sends ({'; '.join(broken[:3])}): the read is not trusted and the items are released"
        )
    download.finished_at = datetime.now(UTC)
    account_facts(download, values, zone)
    return download
