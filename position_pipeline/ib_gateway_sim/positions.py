"""One session's position subscriptions: reqPositions (every account) and reqPositionsMulti (one account each),
with the faults of the position stream (dropped half-way, no positionEnd, refused beyond 50 accounts).

No I/O. Invariants: a subscription is pushed every later change of the positions it covers until cancelled; a
refused reqPositions (IB: not available for logins with more than 50 subaccounts) subscribes nothing and sends no
positionEnd, while reqPositionsMulti per account keeps working.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import messages as m
from .contracts import Holding
from .framing import Field
from .messages import ErrorCode
from .request_fields import account_field, int_field

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)


class Positions:
    """The position side of one session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.hub = session.hub
        self.subscribed = False  # reqPositions
        self.multi: dict[int, tuple[str, str]] = {}  # reqPositionsMulti: reqId -> (account, model code)

    def request(self, fields: list[str]) -> None:
        """reqPositions `[61, 1]`: every account's positions, then positionEnd."""
        session, faults = self.session, self.hub.faults
        accounts = len(self.hub.state.accounts)
        if faults.positions_refused(accounts):
            log.warning("connection %d (client %s): reqPositions refused: not available for %d accounts",
                        session.connection, session.client_id, accounts)  # fmt: skip
            code = ErrorCode.SERVER_ERROR_VALIDATING_REQUEST
            detail = m.POSITIONS_REFUSED_DETAIL
            session.reply_error(m.NO_REQ_ID, code, m.error_text(code, request="reqPositions", detail=detail))
            return
        self.subscribed = True
        holdings = list(self.hub.state.positions())
        if faults.drop_mid_positions:
            faults.drop_mid_positions = False  # one stream only, so the client's retry can succeed
            for holding in holdings[: len(holdings) // 2]:
                session.reply(m.position_data(holding))
            log.warning("connection %d: fault: dropping the connection mid position stream", session.connection)
            session.close("fault: dropped mid position stream")
            return
        for holding in holdings:
            session.reply(m.position_data(holding))
        if not faults.suppress_position_end:
            session.reply(m.position_end())

    def cancel(self, fields: list[str]) -> None:
        self.subscribed = False

    def request_multi(self, fields: list[str]) -> None:
        """reqPositionsMulti `[74, 1, reqId, account, modelCode]`: the account's positions, then positionMultiEnd."""
        req_id = int_field(fields, 2, "reqId")
        account = account_field(fields, 3, self.hub.state.accounts)
        model_code = fields[4] if len(fields) > 4 else ""
        self.multi[req_id] = (account, model_code)
        for holding in self.hub.state.positions(account):
            self.session.reply(m.position_multi(req_id, holding, model_code))
        self.session.reply(m.position_multi_end(req_id))

    def cancel_multi(self, fields: list[str]) -> None:
        self.multi.pop(int_field(fields, 2, "reqId"), None)

    def pushes(self, holding: Holding) -> Iterator[list[Field]]:
        """The messages that announce a changed `holding` to this session's subscriptions."""
        if self.subscribed:
            yield m.position_data(holding)
        for req_id, (account, model_code) in self.multi.items():
            if account == holding.account:
                yield m.position_multi(req_id, holding, model_code)
