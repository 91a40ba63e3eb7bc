"""The replies built from the state's told valuations: the account download (reqAccountUpdates), account values
for reqAccountUpdatesMulti and reqAccountSummary, a changed holding's portfolio push, PnL, and the handshake's
connection time. State in, field lists out: no I/O and no session state, so each is tested on its own.

Portfolio and account values come from the account's last valuation (`GatewayState.valuation`,
`account_values`), never from the live price; reqPnLSingle is the exception, as with IB: PnL subscriptions are
computed in real time, apart from the account window.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from . import messages as m
from .contracts import Holding
from .filler import filler_rows
from .framing import Field
from .ledger import BASE, LEDGER_SECTION_KEYS
from .state import GatewayState


def account_download(state: GatewayState, account: str, end: bool, filler: int = 0) -> list[list[Field]]:
    """IB's order: ACCT_VALUE rows (and `filler` more, see filler.py), PORTFOLIO_VALUE per holding,
    ACCT_UPDATE_TIME, then (if `end`) ACCT_DOWNLOAD_END. A refresh tick sends the same without the end."""
    rows = state.account_values(account)
    rows = rows + filler_rows(rows, filler) if filler else rows
    frames = [m.account_value(key, value, currency, account) for key, value, currency in rows]
    frames += [m.portfolio_value(holding, state.valuation(holding)) for holding in state.positions(account)]
    frames.append(m.account_update_time(state.account_update_time(account)))
    if end:
        frames.append(m.account_download_end(account))
    return frames


def portfolio_push(state: GatewayState, holding: Holding) -> list[list[Field]]:
    """A changed holding for its account's updates subscriber. The change revalued the whole account, so the
    subscriber is told all of it, as at a refresh tick (account values, every holding, the update time; no end):
    what a subscriber was last told is always the stored valuation."""
    return account_download(state, holding.account, end=False)


def account_updates_multi(state: GatewayState, req_id: int, account: str, model_code: str) -> list[list[Field]]:
    rows = state.account_values(account)
    frames = [m.account_update_multi(req_id, account, model_code, key, value, ccy) for key, value, ccy in rows]
    frames.append(m.account_update_multi_end(req_id))
    return frames


def account_summary(state: GatewayState, req_id: int, tags: set[str]) -> list[list[Field]]:
    """The requested tags of every account, then the end. Account-level tags (NetLiquidation, ...) in the base
    currency; IB's ledger flags per currency section (`ledger.LEDGER_SECTION_KEYS`, ExchangeRate included):
    `$LEDGER` the BASE section only, `$LEDGER:EUR` that currency's, `$LEDGER:ALL` every currency's (BASE
    included). No tags: the account-level ones."""
    frames = [
        m.account_summary(req_id, account, key, value, currency)
        for account in state.accounts
        for key, value, currency in state.account_values(account)
        if _in_summary(key, currency, tags)
    ]
    frames.append(m.account_summary_end(req_id))
    return frames


def _in_summary(key: str, currency: str, tags: set[str]) -> bool:
    if key not in LEDGER_SECTION_KEYS:
        return (not tags or key in tags) and key != "AccountCode"
    return "$LEDGER:ALL" in tags or f"$LEDGER:{currency}" in tags or ("$LEDGER" in tags and currency == BASE)


def pnl(state: GatewayState, req_id: int, account: str, conid: int, unset: Collection[str] = ()) -> list[Field]:
    """PNL_SINGLE at the live price (zeros for a contract the account does not hold), the daily PnL against the
    prior close (`GatewayState.daily_pnl`); fields named in `unset` as IB's unset double (not computed yet)."""
    holding = state.holding(account, conid)
    if holding is None:
        return m.pnl_single(req_id, 0, 0.0, 0.0, 0.0, 0.0, unset)
    value = state.live_valuation(holding)
    return m.pnl_single(
        req_id, holding.quantity, state.daily_pnl(holding), value.unrealized_pnl, value.realized_pnl,
        value.market_value, unset,
    )  # fmt: skip


def connection_time(state: GatewayState, now: datetime | None = None) -> str:
    """The handshake's `YYYYMMDD HH:MM:SS TZ`: the gateway's local time with its zone's abbreviation."""
    local = (now or datetime.now(state.zone)).astimezone(state.zone)
    return local.strftime("%Y%m%d %H:%M:%S %Z")
