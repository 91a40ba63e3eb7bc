"""The `pnl` values mode (IB_VALUES_FROM=pnl): a read's market values from reqPnLSingle per (account, conid), all
subscribed at once across every account, instead of one account download after another. No Dagster here.

reqPnLSingle has no one-account rule and takes no market-data line; its values are those of TWS's portfolio window,
computed in real time (the account window's, which reqAccountUpdates sends, refresh about every 3 minutes). A row's
values are those of the first PNL_SINGLE whose `value` is set, stamped with the UTC moment it arrived. IB does not
say which currency `value` is in: it is taken as the contract's currency, as updatePortfolio's marketValue is.

Each account's base currency and ExchangeRates come from one reqAccountSummary of every account (group "All", tags
`NetLiquidation,$LEDGER:ALL`: IB states NetLiquidation in the base currency, and the ledger of every currency carries
its ExchangeRate), cancelled once it has ended (IB allows two summary subscriptions at a time). An account it does not
cover gets its own reqAccountUpdatesMulti: every account when the summary is refused (as IB does for IBroker logins
with more than 50 subaccounts; asked as soon as the refusal comes) or has not ended in time (a summary cut short may
hold an account's NetLiquidation without its ExchangeRates). The PnL requests leave room in the window for those.
No rate means null base values, as in the account mode.

The PnL subscriptions are not cancelled one by one: the read disconnects as soon as the values are in, and the
gateway ends a client's subscriptions with its connection (ib_async leaves its own connect-time subscriptions to the
disconnect too). A cancel per pair would double what the read sends at IB's 50 messages a second.

Invariants: at most REQUESTS_PER_S requests a second, none after the window (IB_REQUEST_TIMEOUT, IB_READ_BUDGET);
IB's unset double and NaN are null, never a number in a row; a dropped connection ends the wait at once and nothing
is sent on it; a pair whose value never comes gets no row: it is in `snapshot.unread`, its account in
`snapshot.unavailable`, and its items are given back (`sync.given_back`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from ib_async import IB, AccountValue, PnLSingle, Position

from position_pipeline.core import terms
from position_pipeline.core.account_download import AccountDownload, account_facts
from position_pipeline.core.ib_errors import IBDisconnected, IBTimeout, disconnect_text
from position_pipeline.core.ib_records import HeldPosition, IBSettings, IBSnapshot

log = logging.getLogger(__name__)

UNSET_DOUBLE = 1.7976931348623157e308
"""IB's 'not computed yet' (Double.MAX_VALUE), which ib_async passes through."""

REQUESTS_PER_S = 40
"""This mode's requests a second: under IB's 50, with room for the gateway's own clock."""

SUMMARY_WAIT_S = 5.0
"""How long the account summary may take beyond the PnL requests (it is asked first, and a gateway answers it in
well under a second) before the accounts it did not cover are asked one by one."""

LEDGER_TAGS = "NetLiquidation,$LEDGER:ALL"
"""The account summary's tags: the base currency (NetLiquidation's currency) and every currency's ExchangeRate."""


def ib_number(value: float | None) -> float | None:
    """`value`, or None for IB's unset double, NaN (ib_async's 'not received') and infinities."""
    if value is None or not math.isfinite(value) or abs(value) >= UNSET_DOUBLE:
        return None
    return value


async def read_pnl_values(
    ib: IB, snapshot: IBSnapshot, wanted: list[Position], settings: IBSettings, client_id: int, started: float
) -> None:
    """Fill `snapshot` (positions, downloads with each account's base currency and rates, unavailable, unread,
    seconds) from one PnL subscription per wanted pair, within IB_REQUEST_TIMEOUT and what is left of IB_READ_BUDGET:
    pairs that would not fit are not asked for (unread, given back). IBTimeout when no pair's value came at all,
    IBDisconnected when the connection drops."""
    window_end = min(time.monotonic() + settings.request_timeout, started + settings.read_budget)
    pairs = {(p.account, p.contract.conId) for p in wanted}
    accounts = sorted({account for account, _ in pairs})
    arrived: dict[tuple[str, int], tuple[PnLSingle, datetime, float]] = {}
    asked: set[tuple[str, int]] = set()
    all_in = asyncio.Event()
    began = time.monotonic()
    pacer = _Pacer()

    def keep(pnl: PnLSingle) -> None:
        key = (pnl.account, pnl.conId)
        if key in asked and key not in arrived and ib_number(pnl.value) is not None:
            arrived[key] = (replace(pnl), datetime.now(UTC), time.monotonic() - began)
            if len(arrived) == len(pairs):
                all_in.set()

    ib.pnlSingleEvent += keep
    ib.disconnectedEvent += all_in.set  # a dropped connection ends the wait at once (raised below)
    summary = _LedgerSummary(ib)
    facts: dict[str, AccountDownload] = {}
    try:
        if accounts:  # the rates first: their replies come while the PnL is asked for
            await pacer.turn()
            summary.ask()
        reserve = (len(accounts) + 1) * pacer.gap * bool(accounts)  # the summary's cancel and its fallbacks
        ends: list[asyncio.Future[Any]] | None = None
        for account, conid in _round_robin(pairs):
            if ends is None and summary.refusal is not None:  # refused: ask the accounts now, not at the end
                ends, reserve = await _fallbacks(ib, summary, accounts, pacer, window_end), 0.0
            if time.monotonic() + pacer.gap + reserve >= window_end:
                break  # no time left to ask (and to ask the rates after): the rest is unread
            await pacer.turn()
            asked.add((account, conid))
            ib.reqPnLSingle(account, "", conid)
        if ends is None:
            ends = await _rates_for(ib, summary, accounts, pacer, window_end, reserve)
        if pairs:
            with contextlib.suppress(TimeoutError):  # what came is kept; the rest is unread
                await asyncio.wait_for(_values_in(all_in, ends), max(window_end - time.monotonic(), 0.0))
        if not ib.isConnected():
            raise IBDisconnected(disconnect_text(settings, client_id, "the reqPnLSingle subscriptions"))
        facts = {a: _account_facts(a, summary.values_for(a) or _multi_values(ib, a), settings) for a in accounts}
    except ConnectionError as exc:  # ib_async's "Not connected" from a request sent after the socket closed
        raise IBDisconnected(disconnect_text(settings, client_id, "the reqPnLSingle subscriptions")) from exc
    finally:
        ib.pnlSingleEvent -= keep
        ib.disconnectedEvent -= all_in.set
        summary.close()
    snapshot.downloads.update(facts)
    waited = time.monotonic() - began
    if pairs and not arrived:
        raise IBTimeout(
            f"no reqPnLSingle value came from IB at {settings.where} (client id {client_id}) within {waited:.3g} s "
            f"for any of {len(pairs)} positions in {', '.join(accounts)}: the items are released and retried"
        )
    missing = sorted(pairs - set(arrived))
    _note_missing(snapshot, missing, asked, waited)
    for account in accounts:
        times = [seconds for (a, _), (_, _, seconds) in arrived.items() if a == account]
        snapshot.seconds[account] = waited if account in snapshot.unavailable else max(times, default=0.0)
    snapshot.unread = set(missing)
    snapshot.positions = [
        _held(p, *arrived[(p.account, p.contract.conId)][:2], snapshot.downloads[p.account])
        for p in wanted
        if (p.account, p.contract.conId) in arrived
    ]


async def _values_in(all_in: asyncio.Event, ends: list[asyncio.Future[Any]]) -> None:
    """Every pair's value and every fallback account request's end (or the connection's drop)."""
    await all_in.wait()
    await asyncio.gather(*ends, return_exceptions=True)


async def _rates_for(
    ib: IB, summary: _LedgerSummary, accounts: list[str], pacer: _Pacer, window_end: float, reserve: float
) -> list[asyncio.Future[Any]]:
    """Wait for the account summary's end (SUMMARY_WAIT_S at most, and `reserve` before the window's end: the time
    `_fallbacks` may take to send), then `_fallbacks`."""
    if not accounts:
        return []
    await summary.ended(min(window_end - reserve, time.monotonic() + SUMMARY_WAIT_S))
    return await _fallbacks(ib, summary, accounts, pacer, window_end)


async def _fallbacks(
    ib: IB, summary: _LedgerSummary, accounts: list[str], pacer: _Pacer, window_end: float
) -> list[asyncio.Future[Any]]:
    """Cancel the summary and ask reqAccountUpdatesMulti for each account it did not cover (every account when it
    did not end: a summary cut short may hold an account's NetLiquidation without its ExchangeRates); the futures of
    those requests, resolved at their ends. At most len(accounts) + 1 requests, none after `window_end`."""
    if summary.is_open and pacer.fits(window_end):
        await pacer.turn()
        summary.cancel()
    uncovered = [account for account in accounts if not summary.values_for(account)]
    summary.settled = True  # a later error naming it no longer takes away the accounts it covered
    if uncovered:
        log.warning("accounts %s: not in the account summary (%s): asking reqAccountUpdatesMulti for each",
                    ", ".join(uncovered), summary.why_not)  # fmt: skip
    ends = []
    for account in uncovered:
        if not pacer.fits(window_end):
            break  # no rates for the rest: null base values (`sync.missing_rates` says so)
        await pacer.turn()
        ends.append(_ask_account_values(ib, account))
    return ends


def _round_robin(pairs: set[tuple[str, int]]) -> list[tuple[str, int]]:
    """The pairs, one of each account in turn: when not all fit in the bound, every account gets its share."""
    rank: dict[str, int] = {}
    ordered = []
    for account, conid in sorted(pairs):
        rank[account] = rank.get(account, -1) + 1
        ordered.append((rank[account], account, conid))
    return [(account, conid) for _, account, conid in sorted(ordered)]


class _Pacer:
    """Spaces one read's requests evenly, REQUESTS_PER_S a second: IB refuses (error 100) more than 50 messages
    in a second, and ib_async's own throttle (45 per second, sent in bursts) can land 46-90 in the gateway's second."""

    def __init__(self) -> None:
        self.gap = 1.0 / REQUESTS_PER_S
        self._next = time.monotonic()

    async def turn(self) -> None:
        now = time.monotonic()
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next = max(now, self._next) + self.gap

    def fits(self, window_end: float) -> bool:
        """Whether the next turn comes before `window_end`."""
        return max(time.monotonic(), self._next) < window_end


def _note_missing(
    snapshot: IBSnapshot, missing: list[tuple[str, int]], asked: set[tuple[str, int]], waited: float
) -> None:
    """Each account with pairs whose value never came (or that were not asked for: they would not fit in the bound)
    is unavailable for those pairs, with a reason naming them."""
    for account in sorted({a for a, _ in missing}):
        silent = [c for a, c in missing if a == account and (a, c) in asked]
        unasked = [c for a, c in missing if a == account and (a, c) not in asked]
        why = [f"reqPnLSingle sent no value for conid {_some(silent)} within {waited:.3g} s (unset or not sent)"]
        why *= bool(silent)
        if unasked:
            why.append(
                f"conid {_some(unasked)} not asked for: asking for them would not fit in "
                f"IB_REQUEST_TIMEOUT/IB_READ_BUDGET at {REQUESTS_PER_S} requests a second"
            )
        snapshot.unavailable[account] = "; ".join(why) + ": those items are given back and retried"
        log.warning("account %s: %s", account, snapshot.unavailable[account])


def _some(conids: list[int]) -> str:
    return ", ".join(str(c) for c in conids[:5]) + (f" and {len(conids) - 5} more" if len(conids) > 5 else "")


class _LedgerSummary:
    """One reqAccountSummary("All", LEDGER_TAGS): its end or its refusal (an error naming its request id) ends the
    wait; its values are read from ib_async's summary store."""

    def __init__(self, ib: IB) -> None:
        self.ib = ib
        self.req_id: int | None = None
        self.future: asyncio.Future[Any] | None = None
        self.refusal: str | None = None  # an error naming its request id
        self.settled = False  # the accounts it covers are decided (`_fallbacks`)
        self._open = False

    def ask(self) -> None:
        self.req_id = self.ib.client.getReqId()
        self.future = self.ib.wrapper.startReq(self.req_id)
        self.ib.errorEvent += self._refused
        self.ib.client.reqAccountSummary(self.req_id, "All", LEDGER_TAGS)
        self._open = True

    def _refused(self, req_id: int, code: int, text: str, contract: object) -> None:
        """Any error naming the request: ib_async ends the request itself for codes it does not take for warnings
        (before this event), and leaves it waiting for a 321."""
        if req_id == self.req_id and self.future is not None and not self.settled:
            self.refusal = f"refused: error {code} {text}"
            self._open = False
            if not self.future.done():
                self.future.set_result([])

    @property
    def why_not(self) -> str:
        return self.refusal or "not ended in time"

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def complete(self) -> bool:
        """Ended (its end message came) and not refused."""
        f = self.future
        return f is not None and f.done() and not f.cancelled() and f.exception() is None and self.refusal is None

    async def ended(self, deadline: float) -> None:
        if self.future is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.future), max(deadline - time.monotonic(), 0.0))

    def cancel(self) -> None:
        if self._open and self.ib.isConnected():
            self.ib.client.cancelAccountSummary(self.req_id)
        self._open = False

    def close(self) -> None:
        """Stop listening; a summary still open ends with the connection, which the read closes next (a cancel here
        could come after the read's window)."""
        self.ib.errorEvent -= self._refused

    def values_for(self, account: str) -> list[AccountValue]:
        """The account's summary values, when the summary ended and they name its base currency (NetLiquidation's
        currency)."""
        if not self.complete:
            return []
        values = [v for v in self.ib.wrapper.acctSummary.values() if v.account == account]
        return values if any(v.tag == "NetLiquidation" and v.currency for v in values) else []


def _ask_account_values(ib: IB, account: str) -> asyncio.Future[Any]:
    """reqAccountUpdatesMulti for `account` (its values fill `ib.wrapper.accountValues`); resolved at its end."""
    req_id = ib.client.getReqId()
    future = ib.wrapper.startReq(req_id)
    ib.client.reqAccountUpdatesMulti(req_id, account, "", False)
    return future


def _multi_values(ib: IB, account: str) -> list[AccountValue]:
    return [v for v in ib.wrapper.accountValues.values() if v.account == account and not v.modelCode]


def _account_facts(account: str, values: list[AccountValue], settings: IBSettings) -> AccountDownload:
    """The account's base currency and rates from its account values; none came: null base values (the rows say
    so through `sync.missing_rates`)."""
    download = AccountDownload(account, datetime.now(UTC))
    if not values:
        log.warning("account %s: no account values (summary or reqAccountUpdatesMulti) in time: no base-currency "
                    "values", account)  # fmt: skip
    account_facts(download, values, settings.zone)
    return download


def _held(p: Position, pnl: PnLSingle, at: datetime, download: AccountDownload) -> HeldPosition:
    """A row's position from its PnL message: value, PnL, the message's quantity, price = value / (quantity x
    multiplier) (unknown for a closed position), in the contract's currency."""
    c = p.contract
    value, quantity = ib_number(pnl.value), float(pnl.position)
    multiplier = float(c.multiplier) if c.multiplier else 1.0
    return HeldPosition.of(
        p.account,
        c,
        c.exchange,
        position=quantity,
        average_cost=p.avgCost,
        market_price=None if value is None or quantity == 0 else value / (quantity * multiplier),
        market_value=value,
        unrealized_pnl=ib_number(pnl.unrealizedPnL),
        realized_pnl=ib_number(pnl.realizedPnL),
        values_as_of=at,
        base_currency=download.base_currency,
        fx_rate=download.fx_rate(c.currency),
        connect_position=p.position,
        daily_pnl=ib_number(pnl.dailyPnL),
        values_from=terms.ValuesFrom.PNL,
    )
