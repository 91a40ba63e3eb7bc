"""One session's account-updates subscription (reqAccountUpdates): subscribe and unsubscribe under IB's
one-account-at-a-time rule (kept by the hub), the account download with its cost (latency, filler volume) and its
per-account faults (no download end, 2100 half-way), and the whole-account pushes once it is delivered.

No I/O: a download with latency is a timer through `Hub.later` (the server's event loop, or the hub's own list
without one), so other requests and other clients are answered while it waits.

Invariants: a download is delivered only to the subscription that asked for it (an unsubscribe, a switch to
another account or a closed connection in the meantime drops it); nothing of the account is pushed to the
subscriber before its download (refresh ticks and position changes wait for it, and the download carries the
values of the moment it is sent); a download cut by 2100 leaves the client unsubscribed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import messages as m
from . import replies
from .hub import SubscribeOutcome
from .messages import ErrorCode, Out
from .request_fields import account_field, bool_field

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)


class AccountUpdates:
    """The account-updates side of one session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.hub = session.hub
        self.pending: str | None = None  # the account whose download waits on its latency
        self._generation = 0  # bumped by every subscribe and unsubscribe: a timer of an older one is void

    @property
    def pushing(self) -> str | None:
        """The account whose changes this session is pushed: subscribed, and its download delivered."""
        account = self.hub.account_updates_account(self.session)
        return None if account is None or account == self.pending else account

    def request(self, fields: list[str]) -> None:
        """reqAccountUpdates `[6, 2, subscribe, account]`."""
        self._generation += 1
        self.pending = None
        if not bool_field(fields, 2, "subscribe"):
            self.hub.unsubscribe_account_updates(self.session)  # whatever the account field says
            return
        account = account_field(fields, 3, self.hub.state.accounts, allow_empty_single=True)
        holders = self.hub.account_updates_holders(self.session, account)
        if not holders:
            self.hub.apply_fills_before_download(account)
        outcome = self.hub.subscribe_account_updates(self.session, account)
        if outcome is SubscribeOutcome.REFUSED:  # a refused subscription gets no download
            self.session.reply_error(m.NO_REQ_ID, ErrorCode.ACCOUNT_UPDATES_REFUSED, m.refused_text(holders))
            return
        if outcome is SubscribeOutcome.SWITCHED:
            code = ErrorCode.ACCOUNT_UPDATES_SWITCHED
            self.session.reply_error(m.NO_REQ_ID, code, m.error_text(code))
        delay = self.hub.faults.download_delay(account)
        generation = self._generation
        if delay > 0:
            self.pending = account
        self.hub.later(delay, lambda: self._deliver(account, generation))

    def push_whole(self, account: str) -> None:
        """The whole account again, without the end: a refresh tick or a position change of the account."""
        for fields in replies.account_download(self.hub.state, account, end=False):
            self.session.reply(fields)

    def _deliver(self, account: str, generation: int) -> None:
        session = self.session
        if generation != self._generation or session.closed:
            return
        self.pending = None
        if self.hub.account_updates_account(session) != account:
            return
        faults = self.hub.faults
        frames = replies.account_download(self.hub.state, account, end=True, filler=faults.account_value_volume)
        if faults.take_unsubscribe(account):
            values = [f for f in frames if f[0] == Out.ACCT_VALUE]
            portfolio = [f for f in frames if f[0] == Out.PORTFOLIO_VALUE]
            for fields in values + portfolio[: len(portfolio) // 2]:
                session.reply(fields)
            log.warning("fault: client %s unsubscribed from %s mid download (2100)", session.client_id, account)
            code = ErrorCode.ACCOUNT_UPDATES_SWITCHED
            session.reply_error(m.NO_REQ_ID, code, m.error_text(code))
            self.hub.unsubscribe_account_updates(session)
        else:
            if faults.suppress_account_download_end or account in faults.suppress_download_end_for:
                frames = frames[:-1]
            for fields in frames:
                session.reply(fields)
        session.on_output()
