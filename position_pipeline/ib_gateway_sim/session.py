"""One client's conversation with the gateway, without I/O: bytes in through `receive_data`, frames out through
`data_to_send`, and `close_reason` set when the connection must end.

Phases: HANDSHAKE (`API\\0` + version range) -> START_API (startApi with the client id) -> READY (requests).
Malformed input never raises out of here: it becomes a log line, an IB error message and, where IB would, a close.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Collection
from enum import Enum

from . import garbage, replies
from . import messages as m
from .account_updates import AccountUpdates
from .contracts import Holding
from .framing import (
    HANDSHAKE_PREFIX,
    Field,
    FrameDecoder,
    ProtocolError,
    encode_frame,
    negotiate_version,
    parse_handshake,
    split_fields,
)
from .hub import Hub
from .messages import ErrorCode, In
from .pnl import PnLSubscriptions
from .positions import Positions
from .request_fields import RequestError, account_field, int_field, req_id_of

log = logging.getLogger(__name__)


class Phase(Enum):
    HANDSHAKE = "handshake"
    START_API = "start_api"
    READY = "ready"
    CLOSED = "closed"


class Session:
    """The protocol state of one connection."""

    def __init__(self, hub: Hub, connection: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.hub = hub
        self.connection = connection
        self.phase = Phase.HANDSHAKE
        self.server_version = 0
        self.client_id: int | None = None
        self.close_reason: str | None = None
        self.on_output: Callable[[], None] = lambda: None
        self.messages_sent = 0
        self.pnl = PnLSubscriptions(self)
        self.multi_subscriptions: dict[int, str] = {}
        self.positions = Positions(self)
        self.account_updates = AccountUpdates(self)
        self._clock = clock
        self._handshake = bytearray()
        self._decoder = FrameDecoder()
        self._out: list[bytes] = []
        self._withheld: list[list[Field]] = []
        self._recent: deque[float] = deque()
        self._handlers: dict[int, Callable[[list[str]], None]] = {
            In.REQ_POSITIONS: self.positions.request,
            In.CANCEL_POSITIONS: self.positions.cancel,
            In.REQ_ACCT_DATA: self.account_updates.request,
            In.REQ_POSITIONS_MULTI: self.positions.request_multi,
            In.CANCEL_POSITIONS_MULTI: self.positions.cancel_multi,
            In.REQ_ACCOUNT_UPDATES_MULTI: self._req_account_updates_multi,
            In.CANCEL_ACCOUNT_UPDATES_MULTI: self._cancel_account_updates_multi,
            In.REQ_ACCOUNT_SUMMARY: self._req_account_summary,
            In.CANCEL_ACCOUNT_SUMMARY: lambda fields: None,  # the summary is sent once; nothing to stop
            In.REQ_PNL_SINGLE: self.pnl.request,
            In.CANCEL_PNL_SINGLE: self.pnl.cancel,
            # read-only, so no executions and no orders: only the ends
            In.REQ_EXECUTIONS: lambda fields: self.reply(m.execution_data_end(int_field(fields, 2, "reqId"))),
            In.REQ_OPEN_ORDERS: lambda fields: self.reply(m.open_order_end()),
            In.REQ_ALL_OPEN_ORDERS: lambda fields: self.reply(m.open_order_end()),
            In.REQ_COMPLETED_ORDERS: lambda fields: self.reply(m.completed_orders_end()),
            In.REQ_AUTO_OPEN_ORDERS: self._req_auto_open_orders,
            In.REQ_CURRENT_TIME: lambda fields: self.reply(m.current_time(int(time.time()))),
            In.REQ_IDS: lambda fields: self.reply(m.next_valid_id(self.hub.next_order_id)),
            In.REQ_MANAGED_ACCTS: lambda fields: self.reply(m.managed_accounts(self.hub.state.accounts)),
            In.REQ_MARKET_DATA_TYPE: lambda fields: None,  # a setting only; nothing to answer
            In.PLACE_ORDER: self._refuse_order,
            In.CANCEL_ORDER: self._refuse_order,
        }

    @property
    def pnl_subscriptions(self) -> dict[int, tuple[str, int]]:
        """The open PnL subscriptions, reqId -> (account, conid)."""
        return self.pnl.subscriptions

    # --- the sans-I/O surface ----------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Consume bytes from the client; replies accumulate for `data_to_send`."""
        if self.phase is Phase.CLOSED:
            return
        try:
            if self.phase is Phase.HANDSHAKE:
                data = self._receive_handshake(data)
                if self.phase is Phase.HANDSHAKE or not data:
                    return
            for payload in self._decoder.feed(data):
                if self.phase is Phase.CLOSED:
                    return
                self._receive_frame(split_fields(payload))
        except ProtocolError as exc:
            log.warning("connection %d (client %s): %s; closing", self.connection, self.client_id, exc)
            self.close(f"protocol error: {exc}")

    def receive_eof(self) -> None:
        if self.phase is not Phase.CLOSED and (self._decoder.pending_bytes or self._handshake):
            log.warning("connection %d: closed by the client in the middle of a frame", self.connection)
        self.close("closed by the client")

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    def close(self, reason: str) -> None:
        if self.phase is Phase.CLOSED:
            return
        self.phase = Phase.CLOSED
        self.close_reason = reason
        self.hub.unregister(self)

    # --- pushes from the hub -------------------------------------------------------------------------------

    def push_holding(self, holding: Holding) -> None:
        """A position changed: tell a positions subscriber, and the account-updates subscriber of its account (the
        whole revalued account: see `replies.portfolio_push`)."""
        if self.phase is not Phase.READY or self.hub.faults.offline:
            return
        for fields in self.positions.pushes(holding):
            self._send(fields)
        if self.account_updates.pushing == holding.account:
            for fields in replies.portfolio_push(self.hub.state, holding):
                self._send(fields)
        self.pnl.push_for(holding)
        self.on_output()

    def push_refresh(self, portfolio: bool, pnl: bool, accounts: Collection[str] | None = None) -> None:
        """Periodic updates: the portfolio of the subscribed account (if in `accounts`, when given), and every PnL
        subscription."""
        if self.phase is not Phase.READY or self.hub.faults.offline:
            return
        account = self.account_updates.pushing if portfolio else None
        if account is not None and (accounts is None or account in accounts):
            self.account_updates.push_whole(account)
        if pnl:
            self.pnl.push_all()
        self.on_output()

    def push_error(self, code: int, text: str) -> None:
        if self.phase is Phase.READY:
            self._send(m.err_msg(self.server_version, m.NO_REQ_ID, code, text))
            self.on_output()

    def release_withheld(self, deliver: bool) -> None:
        """Connectivity is back: send the replies held since 1100 (1102), or drop them (1101, data lost)."""
        withheld, self._withheld = self._withheld, []
        if deliver and self.phase is Phase.READY:
            for fields in withheld:
                self._send(fields)
            self.on_output()

    # --- phases ----------------------------------------------------------------------------------------------

    def _receive_handshake(self, data: bytes) -> bytes:
        """Returns the bytes left over once the handshake is complete."""
        self._handshake += data
        if len(self._handshake) < len(HANDSHAKE_PREFIX):
            if not HANDSHAKE_PREFIX.startswith(bytes(self._handshake)):
                raise ProtocolError(f"bad handshake: expected 'API\\0', got {bytes(self._handshake)!r}")
            return b""
        if not self._handshake.startswith(HANDSHAKE_PREFIX):
            raise ProtocolError(f"bad handshake: expected 'API\\0', got {bytes(self._handshake[:8])!r}")
        frames = FrameDecoder(max_frame_bytes=1024).feed(bytes(self._handshake[len(HANDSHAKE_PREFIX) :]))
        if not frames:
            return b""
        payload = frames[0]
        consumed = len(HANDSHAKE_PREFIX) + 4 + len(payload)
        rest = bytes(self._handshake[consumed:])
        self._handshake.clear()
        offer = parse_handshake(payload)
        version = negotiate_version(offer, m.MIN_SERVER_VERSION, m.MAX_SERVER_VERSION)
        if version is None:
            log.warning(
                "connection %d: client versions %d..%d are outside the supported %d..%d; closing",
                self.connection, offer.min_version, offer.max_version, m.MIN_SERVER_VERSION, m.MAX_SERVER_VERSION,
            )  # fmt: skip
            self.close("unsupported client version range")
            return b""
        self.server_version = version
        self.phase = Phase.START_API
        self._send([version, replies.connection_time(self.hub.state)])
        log.info("connection %d: server version %d negotiated (client offered %s)", self.connection, version, offer)
        return rest

    def _receive_frame(self, fields: list[str]) -> None:
        if not fields:
            raise ProtocolError("empty frame")
        if self.phase is Phase.START_API:
            self._start_api(fields)
            return
        try:
            msg_id = int(fields[0])
        except ValueError:
            msg_id = -1
        name = In(msg_id).name if msg_id in In._value2member_map_ else f"UNKNOWN_{fields[0][:20]}"
        self.hub.record(self, msg_id, name, fields)
        if self._over_pacing_limit():
            return
        handler = self._handlers.get(msg_id)
        if self.hub.faults.garbage_after_handshake:
            for junk in garbage.junk_frames(self.connection + len(self.hub.requests), 2):
                self._send(junk)
        try:
            if handler is not None:
                handler(fields)
            elif msg_id in m.MARKET_DATA_REQUESTS:
                self.reply_error(
                    req_id_of(fields, msg_id), ErrorCode.MARKET_DATA_NOT_SUBSCRIBED,
                    m.error_text(ErrorCode.MARKET_DATA_NOT_SUBSCRIBED),
                )  # fmt: skip
            elif msg_id in In._value2member_map_ and In(msg_id).is_cancel:
                pass  # nothing was subscribed here, and IB never answers a cancel
            elif msg_id in In._value2member_map_:
                detail = f"{name} is not supported by the simulated gateway"
                self.reply_error(
                    req_id_of(fields, msg_id), ErrorCode.SERVER_ERROR_VALIDATING_REQUEST,
                    m.error_text(ErrorCode.SERVER_ERROR_VALIDATING_REQUEST, request=name, detail=detail),
                )  # fmt: skip
            else:
                log.warning("connection %d (client %s): unknown message id %r; closing",
                            self.connection, self.client_id, fields[0][:20])  # fmt: skip
                self._send_error(
                    m.NO_REQ_ID, ErrorCode.SERVER_ERROR_READING_REQUEST,
                    m.error_text(ErrorCode.SERVER_ERROR_READING_REQUEST, detail=f"Unknown message id {fields[0][:20]}"),
                )  # fmt: skip
                self.close("unknown message id")
        except RequestError as exc:
            log.warning("connection %d (client %s): %s: %s", self.connection, self.client_id, name, exc)
            text = (
                m.error_text(exc.code, request=name, detail=str(exc))
                if exc.code is ErrorCode.SERVER_ERROR_VALIDATING_REQUEST
                else m.error_text(exc.code, detail=f"{name}: {exc}")
            )
            self._send_error(req_id_of(fields, msg_id), exc.code, text)

    def _start_api(self, fields: list[str]) -> None:
        if fields[0] != str(int(In.START_API)) or len(fields) < 3:
            raise ProtocolError(f"expected startApi (71) after the handshake, got {fields[:3]}")
        try:
            client_id = int(fields[2])
        except ValueError as exc:
            raise ProtocolError(f"startApi client id is not an integer: {fields[2]!r}") from exc
        self.client_id = client_id
        self.hub.record(self, In.START_API, In.START_API.name, fields)
        if self.hub.client_id_taken(client_id):
            log.warning("connection %d: client id %d is already in use; refusing", self.connection, client_id)
            self._send_error(m.NO_REQ_ID, ErrorCode.CLIENT_ID_IN_USE, m.error_text(ErrorCode.CLIENT_ID_IN_USE))
            self.client_id = None
            self.close(f"client id {client_id} already in use")
            return
        self.hub.register(self)
        self.phase = Phase.READY
        if self.hub.faults.garbage_after_handshake:
            log.warning("connection %d: fault: garbage after the handshake", self.connection)
            for junk in garbage.greeting(self.connection):
                self._send(junk)
        else:
            self._send(m.managed_accounts(self.hub.state.accounts))
        self._send(m.next_valid_id(self.hub.next_order_id))
        for code in (ErrorCode.MARKET_DATA_FARM_OK, ErrorCode.HMDS_FARM_OK, ErrorCode.SEC_DEF_FARM_OK):
            self._send_error(m.NO_REQ_ID, code, m.error_text(code))
        log.info("connection %d: client %d started the API", self.connection, client_id)

    # --- request handlers ------------------------------------------------------------------------------------

    def _req_account_updates_multi(self, fields: list[str]) -> None:
        req_id = int_field(fields, 2, "reqId")
        account = account_field(fields, 3, self.hub.state.accounts)
        model_code = fields[4] if len(fields) > 4 else ""
        self.multi_subscriptions[req_id] = account
        for reply in replies.account_updates_multi(self.hub.state, req_id, account, model_code):
            self.reply(reply)

    def _cancel_account_updates_multi(self, fields: list[str]) -> None:
        self.multi_subscriptions.pop(int_field(fields, 2, "reqId"), None)

    def _req_account_summary(self, fields: list[str]) -> None:
        """reqAccountSummary [62, 1, reqId, group, tags]: the requested tags of every account (ib_async sends it
        by itself after error 1102)."""
        req_id = int_field(fields, 2, "reqId")
        if self.hub.faults.account_summary_refused:
            detail = "group All is not available for this login; request the accounts one by one"
            self.reply_error(req_id, ErrorCode.SERVER_ERROR_VALIDATING_REQUEST,
                             m.error_text(ErrorCode.SERVER_ERROR_VALIDATING_REQUEST,
                                          request="reqAccountSummary", detail=detail))  # fmt: skip
            return
        tags = {t for t in (fields[4] if len(fields) > 4 else "").split(",") if t}
        frames = replies.account_summary(self.hub.state, req_id, tags)
        cut = self.hub.faults.account_summary_cut_after
        for reply in frames if cut is None else frames[: min(cut, len(frames) - 1)]:
            self.reply(reply)

    def _req_auto_open_orders(self, fields: list[str]) -> None:
        if self.client_id != 0:
            detail = "auto binding of orders is only allowed for client id 0"
            self.reply_error(m.NO_REQ_ID, ErrorCode.SERVER_ERROR_VALIDATING_REQUEST,
                              m.error_text(ErrorCode.SERVER_ERROR_VALIDATING_REQUEST,
                                           request="reqAutoOpenOrders", detail=detail))  # fmt: skip

    def _refuse_order(self, fields: list[str]) -> None:
        msg_id = int(fields[0])
        order_id = req_id_of(fields, msg_id)
        log.warning("connection %d (client %s): order request %s refused: read-only API",
                    self.connection, self.client_id, In(msg_id).name)  # fmt: skip
        self._send_error(order_id, ErrorCode.SERVER_ERROR_VALIDATING_REQUEST,
                         m.error_text(ErrorCode.SERVER_ERROR_VALIDATING_REQUEST,
                                      request=f"bW{order_id}", detail=m.READ_ONLY_DETAIL))  # fmt: skip

    # --- helpers ---------------------------------------------------------------------------------------------

    def _over_pacing_limit(self) -> bool:
        now = self._clock()
        recent = self._recent
        recent.append(now)
        while recent and now - recent[0] >= 1.0:
            recent.popleft()
        limit = self.hub.faults.pacing_limit
        if len(recent) > limit:
            self._send_error(m.NO_REQ_ID, ErrorCode.MAX_RATE_EXCEEDED,
                             m.error_text(ErrorCode.MAX_RATE_EXCEEDED, limit=limit, received=len(recent)))  # fmt: skip
            return True
        return False

    def reply(self, fields: list[Field]) -> None:
        """A reply to a request: held back while the gateway has lost connectivity to IB (after 1100)."""
        if self.hub.faults.offline:
            self._withheld.append(fields)
        else:
            self._send(fields)

    def reply_error(self, req_id: int, code: int, text: str) -> None:
        self.reply(m.err_msg(self.server_version, req_id, code, text))

    def _send_error(self, req_id: int, code: int, text: str) -> None:
        self._send(m.err_msg(self.server_version, req_id, code, text))

    def _send(self, fields: list[Field]) -> None:
        if self.phase is Phase.CLOSED:
            return
        self._out.append(encode_frame(fields))
        self.messages_sent += 1
        limit = self.hub.faults.drop_after_messages
        if limit is not None and self.messages_sent >= limit:
            log.warning("connection %d: fault: dropping the connection after %d messages", self.connection, limit)
            self.close(f"fault: dropped after {limit} messages")
