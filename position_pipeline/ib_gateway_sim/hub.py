"""What all client sessions of one gateway share: state, faults, the client-id registry, the single account-updates
subscription, and the record of every request. No I/O.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING

from .faults import Faults
from .messages import MARKET_DATA_REQUESTS, ORDER_REQUESTS
from .state import GatewayState, Holding

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)


class SubscribeOutcome(Enum):
    SUBSCRIBED = "subscribed"
    SWITCHED = "switched"  # the client's earlier account subscription was replaced (IB warns with 2100)
    REFUSED = "refused"  # another client holds a different account (IB refuses with 2101)


@dataclass(frozen=True)
class RequestRecord:
    """One request as the gateway received it."""

    connection: int
    client_id: int | None
    msg_id: int
    name: str
    fields: tuple[str, ...]
    received_at: datetime

    @property
    def is_order(self) -> bool:
        return self.msg_id in ORDER_REQUESTS

    @property
    def is_market_data(self) -> bool:
        return self.msg_id in MARKET_DATA_REQUESTS


@dataclass
class Hub:
    """Cross-client rules live here so that every session sees the same gateway."""

    state: GatewayState
    faults: Faults = field(default_factory=Faults)
    next_order_id: int = 1
    sessions: dict[int, Session] = field(default_factory=dict)  # by client id, once the API started
    requests: list[RequestRecord] = field(default_factory=list)
    # IB serves account updates for one account at a time across all clients: that account and its subscribers.
    account_updates: str | None = None
    account_subscribers: list[Session] = field(default_factory=list)
    # Timers: the server sets its loop's call_later; without one (sans-I/O tests) timers wait in `deferred` until
    # `run_deferred`.
    call_later: Callable[[float, Callable[[], None]], object] | None = None
    deferred: list[tuple[float, Callable[[], None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state.subscribe(self._on_holding_changed)

    # --- client ids ----------------------------------------------------------------------------------------

    def client_id_taken(self, client_id: int) -> bool:
        return client_id in self.sessions or client_id in self.faults.locked_client_ids

    def register(self, session: Session) -> None:
        assert session.client_id is not None
        self.sessions[session.client_id] = session

    def unregister(self, session: Session) -> None:
        if session.client_id is not None and self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        self.unsubscribe_account_updates(session)

    # --- timers ----------------------------------------------------------------------------------------------

    def later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run `callback` after `delay` seconds (now when 0) on the gateway's loop."""
        if delay <= 0:
            callback()
        elif self.call_later is not None:
            self.call_later(delay, callback)
        else:
            self.deferred.append((delay, callback))

    def run_deferred(self) -> None:
        """Without a loop: run the waiting timers, in the order of their delays."""
        due, self.deferred = sorted(self.deferred, key=lambda timer: timer[0]), []
        for _, callback in due:
            callback()

    # --- account updates -------------------------------------------------------------------------------------

    def subscribe_account_updates(self, session: Session, account: str) -> SubscribeOutcome:
        """IB's rule: one account at a time across all clients. The sole subscriber may switch accounts (IB warns
        with 2100); another client asking for a different account is refused (2101), and so is every client while
        an outside client holds the slot (`Faults.account_updates_held_by`); the same account is shared."""
        holders = self.account_updates_holders(session, account)
        if holders:
            log.warning(
                "client %s refused account updates for %s: clients %s are subscribed to %s",
                session.client_id, account, holders, self.account_updates or "another account",
            )  # fmt: skip
            return SubscribeOutcome.REFUSED
        switched = self.account_updates not in (None, account) and session in self.account_subscribers
        self.account_updates = account
        if session not in self.account_subscribers:
            self.account_subscribers.append(session)
        return SubscribeOutcome.SWITCHED if switched else SubscribeOutcome.SUBSCRIBED

    def account_updates_holders(self, session: Session, account: str) -> list[int]:
        """The client ids for which IB would refuse `session` account updates for `account` (2101): the outside
        holder, or the other clients subscribed to another account. Empty: not refused."""
        held_by = self.faults.account_updates_held_by
        if held_by is not None and held_by != session.client_id:
            return [held_by]
        others = [s.client_id for s in self.account_subscribers if s is not session and s.client_id is not None]
        return others if self.account_updates not in (None, account) else []

    def refuses_account_updates(self, session: Session, account: str) -> bool:
        """Whether IB would refuse `session` account updates for `account` (2101)."""
        return bool(self.account_updates_holders(session, account))

    def unsubscribe_account_updates(self, session: Session) -> None:
        if session in self.account_subscribers:
            self.account_subscribers.remove(session)
        if not self.account_subscribers:
            self.account_updates = None

    def apply_fills_before_download(self, account: str) -> None:
        """The `fills_before_download` fault for `account`: each fill through `set_position` (announced, the
        account revalued), then the entry clears. A conid no account holds has no contract to fill: logged."""
        for conid, quantity in self.faults.fills_before_download.pop(account, []):
            contract = self.state.contract(conid)
            if contract is None:
                log.warning("fault: fill before download of %s: conid %d is held nowhere; skipped", account, conid)
                continue
            log.warning("fault: fill before download: %s conid %d to %g", account, conid, quantity)
            self.state.set_position(account, contract, quantity)

    def account_updates_account(self, session: Session) -> str | None:
        return self.account_updates if session in self.account_subscribers else None

    # --- pushes ----------------------------------------------------------------------------------------------

    def _on_holding_changed(self, holding: Holding) -> None:
        for session in list(self.sessions.values()):
            session.push_holding(holding)

    def refresh(self, portfolio: bool, pnl: bool, accounts: Collection[str] | None = None) -> None:
        """Periodic pushes: portfolio values (IB: about every 3 minutes; only to subscribers of `accounts` when
        given) and per-position PnL (about 1 s)."""
        for session in list(self.sessions.values()):
            session.push_refresh(portfolio=portfolio, pnl=pnl, accounts=accounts)

    def broadcast_error(self, code: int, text: str) -> None:
        for session in list(self.sessions.values()):
            session.push_error(code, text)

    # --- the record ------------------------------------------------------------------------------------------

    def record(self, session: Session, msg_id: int, name: str, fields: list[str]) -> None:
        self.requests.append(
            RequestRecord(session.connection, session.client_id, msg_id, name, tuple(fields), datetime.now(UTC))
        )

    def requests_by_client(self) -> dict[int | None, list[RequestRecord]]:
        grouped: dict[int | None, list[RequestRecord]] = defaultdict(list)
        for record in self.requests:
            grouped[record.client_id].append(record)
        return dict(grouped)

    def open_pnl_subscriptions(self) -> list[tuple[int, int, str, int]]:
        """(client id, reqId, account, conid) of each PnL subscription on a connection still open: closing a
        connection ends its subscriptions (its session leaves `sessions`), as at IB."""
        return sorted(
            (client_id, req_id, account, conid)
            for client_id, session in self.sessions.items()
            for req_id, (account, conid) in session.pnl_subscriptions.items()
        )
