"""How an IB read fails: the IBError family, the codes the reader acts on, and the messages' shared wording.

Every failure of a read becomes an IBError whose message names the gateway, the client id and what IB said, and
says what happens next; the sync job gives the batch back on any of them.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

CLIENT_ID_IN_USE = 326
POSITIONS_REFUSED = 321  # "Error validating request": at connect, IB refusing reqPositions (> 50 subaccounts)
ACCOUNT_UPDATES_REFUSED = 2101  # another client holds account updates for a different account
ACCOUNT_UNSUBSCRIBED = 2100  # TWS itself took the account subscription: no accountDownloadEnd follows

Notices = list[tuple[int, int, str]]
"""(reqId, code, text) of every error and notice IB sent on one connection, in order."""


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


class AccountUnavailable(IBError):
    """One account's download failed (no accountDownloadEnd within its bound, 2101 beyond its wait, 2100 twice, or
    no budget left): that account's items are given back, the other accounts' rows are written."""

    def __init__(self, account: str, message: str) -> None:
        super().__init__(message)
        self.account = account


class IBProtocolError(IBError):
    """The gateway sent something a sane gateway does not (an unknown account, a conid that is no integer, a
    managed-accounts list that names no account): the read is not trusted and the batch is given back."""


class Where(Protocol):
    """What the messages name: the gateway's address (IBSettings)."""

    @property
    def where(self) -> str: ...


def timeout_text(settings: Where, client_id: int, what: str, notices: Notices, waited: float) -> str:
    """Every error IB sent on this connection (not the 2100-2199 notices) goes into the message."""
    said = [f"{code} {text}" for _, code, text in notices if code < 2100 or code > 2199]
    hint = f"; IB said: {' | '.join(said)}" if said else ""
    return (
        f"{what} did not complete within {waited:g} s (gateway {settings.where}, client id "
        f"{client_id}){hint}: the gateway may be restarting or have lost its connection to IB; the items are "
        f"released and retried"
    )


def disconnect_text(settings: Where, client_id: int, what: str) -> str:
    return (
        f"the connection to IB at {settings.where} (client id {client_id}) dropped during {what}: the items are "
        f"released and retried on a later tick"
    )


def has_code(notices: Notices, since: int, code: int) -> bool:
    return any(c == code for _, c, _ in notices[since:])


async def until_code(notices: Notices, since: int, code: int) -> None:
    """Returns once IB has sent `code` after notice number `since`."""
    while not has_code(notices, since, code):
        await asyncio.sleep(0.02)
