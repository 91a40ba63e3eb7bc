"""One session's PnL subscriptions (reqPnLSingle / cancelPnLSingle): the first PNL_SINGLE after a configurable
delay (`Faults.pnl_delay`, a timer through `Hub.later`, so other requests and clients are answered meanwhile), then
a message whenever the position changes and at every PnL refresh tick. Per-account faults: values that stay unset
(`Faults.pnl_unset_for`) and subscriptions that never send anything (`Faults.pnl_silent_for`).

Invariants: nothing is sent for a subscription before its first message is due, nor after its cancel or the
connection's close; values are live (IB computes them in real time, apart from the account window).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import replies
from .contracts import Holding
from .faults import PNL_FIELDS
from .request_fields import account_field, int_field

if TYPE_CHECKING:
    from .session import Session


class PnLSubscriptions:
    """The PnL side of one session: reqId -> (account, conid), and which of them are still waiting to start."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.hub = session.hub
        self.subscriptions: dict[int, tuple[str, int]] = {}
        self.pending: set[int] = set()  # subscribed, first message not yet due

    def request(self, fields: list[str]) -> None:
        """reqPnLSingle `[94, reqId, account, modelCode, conId]`."""
        req_id = int_field(fields, 1, "reqId")
        account = account_field(fields, 2, self.hub.state.accounts)
        conid = int_field(fields, 4, "conId")
        self.subscriptions[req_id] = (account, conid)
        delay = self.hub.faults.pnl_delay(account)
        if delay > 0:
            self.pending.add(req_id)
        self.hub.later(delay, lambda: self._start(req_id, account, conid))

    def cancel(self, fields: list[str]) -> None:
        req_id = int_field(fields, 1, "reqId")
        self.subscriptions.pop(req_id, None)
        self.pending.discard(req_id)

    def push_all(self) -> None:
        """A PnL refresh tick: every started subscription."""
        for req_id in list(self.subscriptions):
            self._send(req_id)

    def push_for(self, holding: Holding) -> None:
        """`holding` changed: the subscriptions on it."""
        key = (holding.account, holding.contract.conid)
        for req_id in [r for r, k in self.subscriptions.items() if k == key]:
            self._send(req_id)

    def _start(self, req_id: int, account: str, conid: int) -> None:
        if self.session.closed or self.subscriptions.get(req_id) != (account, conid):
            return  # cancelled (or its id reused) meanwhile
        self.pending.discard(req_id)
        self._send(req_id)
        self.session.on_output()

    def _send(self, req_id: int) -> None:
        if req_id in self.pending or req_id not in self.subscriptions:
            return
        account, conid = self.subscriptions[req_id]
        faults = self.hub.faults
        if account in faults.pnl_silent_for:
            return
        unset = PNL_FIELDS if account in faults.pnl_unset_for else faults.pnl_unset
        self.session.reply(replies.pnl(self.hub.state, req_id, account, conid, unset))
