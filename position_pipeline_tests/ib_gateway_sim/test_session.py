"""The per-connection protocol state machine driven with bytes, no sockets: handshake and version negotiation, the
startApi greeting, every reply's exact field list, errors IB would send (320, 321, 326, 354, 100, 2100, 2101),
account-updates arbitration across clients, pacing on an injected clock, faults, pushes, and the request record."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator

import pytest

from position_pipeline.ib_gateway_sim.framing import HANDSHAKE_PREFIX, Field, FrameDecoder, encode_frame, encode_raw
from position_pipeline.ib_gateway_sim.hub import Hub
from position_pipeline.ib_gateway_sim.messages import ERROR_TEXT, ErrorCode, In, error_text
from position_pipeline.ib_gateway_sim.session import Phase, Session
from position_pipeline.ib_gateway_sim.state import Contract, GatewayState

CONNECTION_TIME = re.compile(r"^\d{8} \d{2}:\d{2}:\d{2} UTC$")
HH_MM = re.compile(r"^\d{2}:\d{2}$")
READ_ONLY = "The API interface is currently in Read-Only mode."

AAPL = Contract(265598, "AAPL", "STK", "USD", "NASDAQ", "AAPL", "NMS")
AAPL_CALL = Contract(
    700_000_001, "AAPL", "OPT", "USD", "SMART", "AAPL  270115C00230000", "AAPL", "20270115", 230.0, "C", "100"
)
MSFT = Contract(101_000, "MSFT", "STK", "USD", "NASDAQ", "MSFT", "NMS")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def handshake(offer: str = "v157..178") -> bytes:
    return HANDSHAKE_PREFIX + encode_raw(offer.encode())


def start_api(client_id: int) -> bytes:
    return encode_frame([In.START_API, 2, client_id, ""])


def req(*fields: Field) -> bytes:
    return encode_frame(fields)


def sent(session: Session) -> list[list[str]]:
    """Everything the session wants to send since the last call, as field lists; asserts whole frames only."""
    decoder = FrameDecoder()
    frames = [payload for chunk in session.data_to_send() for payload in decoder.feed(chunk)]
    assert decoder.pending_bytes == 0
    return [payload.decode().split("\0")[:-1] for payload in frames]


def errors(frames: list[list[str]]) -> list[tuple[int, int]]:
    return [(int(f[2]), int(f[3])) for f in frames if f[0] == "4"]


def err(req_id: int, code: int, text: str) -> list[str]:
    """ERR_MSG as sent at server version 166+: version 2 and a trailing empty advancedOrderRejectJson."""
    return ["4", "2", str(req_id), str(code), text, ""]


def connect(hub: Hub, client_id: int = 1, offer: str = "v157..178", clock: Clock | None = None) -> Session:
    """A session past startApi with its greeting drained."""
    session = Session(hub, connection=client_id + 1000, clock=clock or Clock())
    session.receive_data(handshake(offer) + start_api(client_id))
    assert session.phase is Phase.READY, session.close_reason
    sent(session)
    return session


@pytest.fixture
def hub(sim_state: GatewayState) -> Hub:
    """The generated three-account state shared by all sessions."""
    return Hub(sim_state)


@pytest.fixture
def small_hub() -> Hub:
    """Two accounts and hand-made positions, so that replies can be written out field by field."""
    state = GatewayState(accounts=["DU1", "DU2"])
    state.set_position("DU1", AAPL, 100.0, average_cost=150.25, market_price=151.5)
    state.set_position("DU1", AAPL_CALL, -3.0, average_cost=512.5, market_price=6.0)
    state.set_position("DU2", MSFT, 20.0, average_cost=400.0, market_price=415.0)
    return Hub(state)


def account_with_positions(state: GatewayState) -> str:
    return next(h.account for h in state.positions())


# --- handshake ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offer", "version"),
    [
        ("v157..178", 178),
        ("v100..157", 157),
        ("v100..200", 178),
        ("v178..200", 178),
        ("v160..170", 170),
        ("v176", 176),
        ("v157..178 +PACEAPI", 178),
    ],
)
def test_handshake_picks_the_highest_common_version(hub: Hub, offer: str, version: int) -> None:
    session = Session(hub, 1)
    session.receive_data(handshake(offer))
    (reply,) = session.data_to_send()
    connection_time = reply[4:].split(b"\0")[1].decode()
    assert CONNECTION_TIME.match(connection_time)
    payload = f"{version}\0{connection_time}\0".encode()
    assert reply == len(payload).to_bytes(4, "big") + payload  # exactly two fields: version, connection time
    assert session.server_version == version
    assert session.phase is Phase.START_API


@pytest.mark.parametrize("offer", ["v100..150", "v100..156", "v179..200", "v190"])
def test_handshake_outside_the_supported_range_gets_no_reply_and_closes(hub: Hub, offer: str) -> None:
    session = Session(hub, 1)
    session.receive_data(handshake(offer) + start_api(1))
    assert session.data_to_send() == []
    assert session.phase is Phase.CLOSED
    assert session.close_reason == "unsupported client version range"
    assert hub.sessions == {}


def test_handshake_and_start_api_sent_one_byte_at_a_time(hub: Hub) -> None:
    data = handshake() + start_api(5) + req(In.REQ_CURRENT_TIME, 1)
    session = Session(hub, 1)
    handshake_end = len(handshake())
    frames: list[list[str]] = []
    for i in range(len(data)):
        session.receive_data(data[i : i + 1])
        got = sent(session)
        if i + 1 < handshake_end:
            assert got == []
        frames += got
    assert frames[0][0] == "178"
    assert [f[0] for f in frames[1:]] == ["15", "9", "4", "4", "4", "49"]
    assert session.phase is Phase.READY and session.client_id == 5


def test_handshake_start_api_and_a_request_in_one_chunk(hub: Hub) -> None:
    session = Session(hub, 1)
    session.receive_data(handshake() + start_api(5) + req(In.REQ_IDS, 1, 1))
    assert [f[0] for f in sent(session)] == ["178", "15", "9", "4", "4", "4", "9"]


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"AX",
        b"API\x01" + encode_raw(b"v157..178"),
        b"API\x00" + encode_raw(b"hello"),
        b"API\x00" + encode_raw(b"v178..157"),
        b"API\x00" + encode_raw(b""),
        b"API\x00" + encode_raw(b"v157..178 \xff"),
        b"API\x00" + b"\x00\x00\x04\x01" + b"v" * 1025,  # a handshake frame over 1 KiB
    ],
)
def test_malformed_handshake_closes_with_a_reason_and_no_reply(hub: Hub, data: bytes) -> None:
    session = Session(hub, 1)
    session.receive_data(data)
    assert session.data_to_send() == []
    assert session.phase is Phase.CLOSED
    assert session.close_reason is not None and session.close_reason.startswith("protocol error")


def test_partial_handshake_prefix_waits(hub: Hub) -> None:
    session = Session(hub, 1)
    session.receive_data(b"AP")
    assert session.phase is Phase.HANDSHAKE and session.close_reason is None


# --- startApi -------------------------------------------------------------------------------------------------------


def test_start_api_greeting(hub: Hub) -> None:
    session = Session(hub, 1)
    session.receive_data(handshake() + start_api(7))
    frames = sent(session)[1:]
    assert frames == [
        ["15", "1", "DU1000001,DU1000002,DU1000003"],
        ["9", "1", "1"],
        err(-1, 2104, "Market data farm connection is OK:usfarm"),
        err(-1, 2106, "HMDS data farm connection is OK:ushmds"),
        err(-1, 2158, "Sec-def data farm connection is OK:secdefil"),
    ]
    assert hub.sessions == {7: session}


@pytest.mark.parametrize(
    "frame",
    [req(In.REQ_POSITIONS, 1), req(71, 2), req(71, 2, "abc", ""), encode_raw(b"")],
)
def test_anything_but_a_valid_start_api_after_the_handshake_closes(hub: Hub, frame: bytes) -> None:
    session = Session(hub, 1)
    session.receive_data(handshake())
    sent(session)
    session.receive_data(frame)
    assert sent(session) == []
    assert session.phase is Phase.CLOSED and session.close_reason is not None
    assert session.close_reason.startswith("protocol error")
    assert hub.sessions == {}


@pytest.mark.parametrize(("offer", "fields"), [("v157..165", 5), ("v157..166", 6), ("v100..157", 5), ("v170", 6)])
def test_err_msg_gains_the_advanced_order_reject_field_at_166(hub: Hub, offer: str, fields: int) -> None:
    session = Session(hub, 1)
    session.receive_data(handshake(offer) + start_api(1))
    notices = [f for f in sent(session) if f[0] == "4"]
    assert len(notices) == 3
    for notice in notices:
        assert len(notice) == fields
        assert notice[:3] == ["4", "2", "-1"]
    if fields == 6:
        assert {notice[5] for notice in notices} == {""}


# --- replies, field by field --------------------------------------------------------------------------------------


def test_position_data_for_a_stock_and_an_option(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_POSITIONS, 1))
    assert sent(session) == [
        ["61", "3", "DU1", "265598", "AAPL", "STK", "", "0", "", "", "NASDAQ", "USD", "AAPL", "NMS", "100", "150.25"],
        ["61", "3", "DU1", "700000001", "AAPL", "OPT", "20270115", "230", "C", "100", "SMART", "USD",
         "AAPL  270115C00230000", "AAPL", "-3", "512.5"],
        ["61", "3", "DU2", "101000", "MSFT", "STK", "", "0", "", "", "NASDAQ", "USD", "MSFT", "NMS", "20", "400"],
        ["62", "1"],
    ]  # fmt: skip


def test_every_position_of_a_generated_state_has_sixteen_fields(hub: Hub) -> None:
    session = connect(hub)
    session.receive_data(req(In.REQ_POSITIONS, 1))
    frames = sent(session)
    assert frames[-1] == ["62", "1"]
    positions = frames[:-1]
    assert len(positions) == len(hub.state.holdings)
    assert {len(f) for f in positions} == {16}
    assert {(f[2], int(f[3])) for f in positions} == set(hub.state.holdings)


def test_account_download_order_and_portfolio_value_fields(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_ACCT_DATA, 2, True, "DU1"))
    frames = sent(session)
    ids = [f[0] for f in frames]
    rows = small_hub.state.account_values("DU1")
    assert ids == ["6"] * len(rows) + ["7", "7", "8", "54"]
    assert frames[: len(rows)] == [["6", "2", key, value, currency, "DU1"] for key, value, currency in rows]
    assert frames[0] == ["6", "2", "AccountCode", "DU1", "", "DU1"]
    stock, option, update_time, end = frames[len(rows) :]
    assert stock == [
        "7", "8", "265598", "AAPL", "STK", "", "0", "", "", "NASDAQ", "USD", "AAPL", "NMS",
        "100", "151.5", "15150", "150.25", "125", "0", "DU1",
    ]  # fmt: skip
    assert option == [
        "7", "8", "700000001", "AAPL", "OPT", "20270115", "230", "C", "100", "SMART", "USD", "AAPL  270115C00230000",
        "AAPL", "-3", "6", "-1800", "512.5", "-262.5", "0", "DU1",
    ]  # fmt: skip
    assert len(stock) == len(option) == 20
    assert update_time[:2] == ["8", "1"] and HH_MM.match(update_time[2]) and len(update_time) == 3
    assert end == ["54", "1", "DU1"]


def test_account_updates_with_an_empty_account_on_a_single_account_gateway() -> None:
    state = GatewayState(accounts=["DU9"])
    state.set_position("DU9", AAPL, 10.0, market_price=200.0)
    session = connect(Hub(state))
    session.receive_data(req(In.REQ_ACCT_DATA, 2, True, ""))
    frames = sent(session)
    assert frames[-1] == ["54", "1", "DU9"]
    assert next(f for f in frames if f[0] == "7")[-1] == "DU9"


def test_account_updates_multi_rows_then_end(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_ACCOUNT_UPDATES_MULTI, 1, 12, "DU2", "", True))
    frames = sent(session)
    rows = small_hub.state.account_values("DU2")
    assert frames == [["73", "1", "12", "DU2", "", key, value, currency] for key, value, currency in rows] + [
        ["74", "1", "12"]
    ]
    assert session.multi_subscriptions == {12: "DU2"}
    session.receive_data(req(In.CANCEL_ACCOUNT_UPDATES_MULTI, 1, 12))
    assert session.multi_subscriptions == {}
    assert sent(session) == []


def test_pnl_single_has_no_version_field(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_PNL_SINGLE, 7, "DU1", "", 265598))
    assert sent(session) == [["95", "7", "100", "0", "125", "0", "15150"]]
    session.receive_data(req(In.REQ_PNL_SINGLE, 8, "DU1", "", 999))  # not held: zeros
    assert sent(session) == [["95", "8", "0", "0", "0", "0", "0"]]
    session.receive_data(req(In.CANCEL_PNL_SINGLE, 7))
    assert list(session.pnl_subscriptions) == [8]


@pytest.mark.parametrize(
    ("request_fields", "reply"),
    [
        ((In.REQ_EXECUTIONS, 3, 42, 0, "", "", "", "", "", ""), [["55", "1", "42"]]),
        ((In.REQ_OPEN_ORDERS, 1), [["53", "1"]]),
        ((In.REQ_ALL_OPEN_ORDERS, 1), [["53", "1"]]),
        ((In.REQ_COMPLETED_ORDERS, 0), [["102"]]),
        ((In.REQ_IDS, 1, 1), [["9", "1", "1"]]),
        ((In.REQ_MANAGED_ACCTS, 1), [["15", "1", "DU1,DU2"]]),
        ((In.REQ_MARKET_DATA_TYPE, 1, 3), []),
        ((In.CANCEL_POSITIONS, 1), []),
    ],
)
def test_simple_replies(small_hub: Hub, request_fields: tuple[Field, ...], reply: list[list[str]]) -> None:
    session = connect(small_hub)
    session.receive_data(req(*request_fields))
    assert sent(session) == reply
    assert session.phase is Phase.READY


def test_current_time(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_CURRENT_TIME, 1))
    ((msg_id, version, epoch),) = sent(session)
    assert (msg_id, version) == ("49", "1")
    assert abs(int(epoch) - time.time()) < 5


def test_auto_open_orders_only_for_client_zero(small_hub: Hub) -> None:
    other = connect(small_hub, client_id=1)
    other.receive_data(req(In.REQ_AUTO_OPEN_ORDERS, 1, True))
    assert errors(sent(other)) == [(-1, 321)]
    master = connect(small_hub, client_id=0)
    master.receive_data(req(In.REQ_AUTO_OPEN_ORDERS, 1, True))
    assert sent(master) == []


def test_account_summary_rows_for_the_requested_tags(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_ACCOUNT_SUMMARY, 1, 4, "All", "NetLiquidation,TotalCashValue"))
    frames = sent(session)
    assert [f[4] for f in frames[:-1]] == ["NetLiquidation", "TotalCashValue"] * 2
    assert [f[3] for f in frames[:-1]] == ["DU1", "DU1", "DU2", "DU2"]
    assert {(f[0], f[1], f[2], len(f)) for f in frames[:-1]} == {("63", "1", "4", 7)}
    assert frames[-1] == ["64", "1", "4"]
    session.receive_data(req(In.CANCEL_ACCOUNT_SUMMARY, 1, 4))
    assert sent(session) == [] and session.phase is Phase.READY


# --- refusals and errors ---------------------------------------------------------------------------------------------


def test_unsupported_known_request_gets_321_with_its_req_id(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_CONTRACT_DATA, 8, 31, 265598, "AAPL", "STK"))
    text = error_text(
        ErrorCode.SERVER_ERROR_VALIDATING_REQUEST,
        request="REQ_CONTRACT_DATA",
        detail="REQ_CONTRACT_DATA is not supported by the simulated gateway",
    )
    assert sent(session) == [err(31, 321, text)]
    assert session.phase is Phase.READY


@pytest.mark.parametrize(
    ("request_fields", "req_id"),
    [
        ((In.REQ_MKT_DATA, 11, 9, 265598, "AAPL", "STK", "", 0.0, "", "", "SMART", "", "USD", "", "", 0, "", 0, 0), 9),
        ((In.REQ_MKT_DEPTH, 5, 10, 265598, "AAPL", "STK"), 10),
        ((In.REQ_REAL_TIME_BARS, 3, 11, 265598, "AAPL"), 11),
        ((In.REQ_TICK_BY_TICK_DATA, 12, 265598, "AAPL"), 12),
    ],
)
def test_market_data_requests_get_354_and_are_recorded_as_market_data(
    small_hub: Hub, request_fields: tuple[Field, ...], req_id: int
) -> None:
    session = connect(small_hub)
    session.receive_data(req(*request_fields))
    assert sent(session) == [err(req_id, 354, "Requested market data is not subscribed.")]
    record = small_hub.requests[-1]
    assert record.is_market_data and not record.is_order
    assert record.client_id == 1
    assert session.phase is Phase.READY


@pytest.mark.parametrize(
    ("request_fields", "order_id"),
    [((In.PLACE_ORDER, 17, 265598, "AAPL", "STK", "BUY", 100), 17), ((In.CANCEL_ORDER, 1, 18, ""), 18)],
)
def test_order_requests_are_refused_read_only_and_recorded_as_orders(
    small_hub: Hub, request_fields: tuple[Field, ...], order_id: int
) -> None:
    session = connect(small_hub)
    session.receive_data(req(*request_fields))
    text = f"Error validating request.-'bW{order_id}' : cause - {READ_ONLY}"
    assert sent(session) == [err(order_id, 321, text)]
    record = small_hub.requests[-1]
    assert record.is_order and not record.is_market_data
    assert session.phase is Phase.READY


@pytest.mark.parametrize("msg_id", ["999", "abc", "", "-5"])
def test_unknown_message_id_gets_320_then_close(small_hub: Hub, msg_id: str) -> None:
    session = connect(small_hub)
    session.receive_data(req(msg_id, 1) + req(In.REQ_CURRENT_TIME, 1))
    assert sent(session) == [err(-1, 320, f"Error reading request. Unknown message id {msg_id}")]
    assert session.phase is Phase.CLOSED and session.close_reason == "unknown message id"
    assert small_hub.sessions == {}
    assert small_hub.requests[-1].name == f"UNKNOWN_{msg_id}"
    session.receive_data(req(In.REQ_CURRENT_TIME, 1))  # ignored once closed
    assert sent(session) == []


@pytest.mark.parametrize(
    ("request_fields", "req_id", "detail"),
    [
        ((In.REQ_ACCT_DATA, 2, "x", "DU1"), -1, "REQ_ACCT_DATA: field subscribe (#2) is not an integer: 'x'"),
        ((In.REQ_ACCT_DATA, 2, 2, "DU1"), -1, "REQ_ACCT_DATA: field subscribe (#2) is not a boolean: 2"),
        ((In.REQ_ACCT_DATA, 2), -1, "REQ_ACCT_DATA: field subscribe (#2) is missing"),
        ((In.REQ_EXECUTIONS, 3, "abc"), -1, "REQ_EXECUTIONS: field reqId (#2) is not an integer: 'abc'"),
        ((In.REQ_PNL_SINGLE, 5, "DU1", ""), 5, "REQ_PNL_SINGLE: field conId (#4) is missing"),
        ((In.REQ_PNL_SINGLE, 5, "DU1", "", "1.5"), 5, "REQ_PNL_SINGLE: field conId (#4) is not an integer: '1.5'"),
        ((In.REQ_ACCOUNT_UPDATES_MULTI, 1), -1, "REQ_ACCOUNT_UPDATES_MULTI: field reqId (#2) is missing"),
    ],
)
def test_garbage_fields_get_320_and_the_session_stays_open(
    small_hub: Hub, request_fields: tuple[Field, ...], req_id: int, detail: str
) -> None:
    session = connect(small_hub)
    session.receive_data(req(*request_fields))
    assert sent(session) == [err(req_id, 320, f"Error reading request. {detail}")]
    assert session.phase is Phase.READY
    session.receive_data(req(In.REQ_OPEN_ORDERS, 1))
    assert sent(session) == [["53", "1"]]


@pytest.mark.parametrize(
    ("request_fields", "req_id"),
    [
        ((In.REQ_ACCT_DATA, 2, True, "DU999"), -1),
        ((In.REQ_ACCT_DATA, 2, True, ""), -1),  # no default account when the gateway manages several
        ((In.REQ_ACCOUNT_UPDATES_MULTI, 1, 5, "DU999", "", True), 5),
        ((In.REQ_PNL_SINGLE, 6, "DU999", "", 265598), 6),
    ],
)
def test_request_for_an_unmanaged_account_gets_321(
    small_hub: Hub, request_fields: tuple[Field, ...], req_id: int
) -> None:
    session = connect(small_hub)
    session.receive_data(req(*request_fields))
    ((frame),) = sent(session)
    assert frame[:4] == ["4", "2", str(req_id), "321"]
    assert "is not managed by this gateway (DU1,DU2)" in frame[4]
    assert session.phase is Phase.READY
    assert small_hub.account_subscribers == []


# --- client ids -------------------------------------------------------------------------------------------------------


def test_second_session_with_the_same_client_id_gets_326_and_closes(small_hub: Hub) -> None:
    first = connect(small_hub, client_id=4)
    second = Session(small_hub, 2)
    second.receive_data(handshake() + start_api(4))
    assert sent(second)[1:] == [err(-1, 326, ERROR_TEXT[ErrorCode.CLIENT_ID_IN_USE])]
    assert second.phase is Phase.CLOSED and second.close_reason == "client id 4 already in use"
    assert small_hub.sessions == {4: first}
    first.receive_data(req(In.REQ_OPEN_ORDERS, 1))
    assert sent(first) == [["53", "1"]]
    first.receive_eof()
    third = connect(small_hub, client_id=4)  # free again once the first has gone
    assert small_hub.sessions == {4: third}


def test_locked_client_id_gets_326(small_hub: Hub) -> None:
    small_hub.faults.locked_client_ids = {9}
    session = Session(small_hub, 1)
    session.receive_data(handshake() + start_api(9))
    assert errors(sent(session)) == [(-1, 326)]
    assert session.phase is Phase.CLOSED
    small_hub.faults.locked_client_ids = set()
    assert connect(small_hub, client_id=9).phase is Phase.READY


# --- account updates: one account at a time across clients -----------------------------------------------------------


def test_account_updates_arbitration(hub: Hub) -> None:
    acct1, acct2, acct3 = hub.state.accounts
    a, b = connect(hub, client_id=1), connect(hub, client_id=2)

    a.receive_data(req(In.REQ_ACCT_DATA, 2, True, acct1))
    frames = sent(a)
    assert errors(frames) == [] and frames[-1] == ["54", "1", acct1]

    b.receive_data(req(In.REQ_ACCT_DATA, 2, True, acct2))
    assert sent(b) == [err(-1, 2101, ERROR_TEXT[ErrorCode.ACCOUNT_UPDATES_REFUSED])]
    assert hub.account_updates == acct1 and hub.account_subscribers == [a]

    b.receive_data(req(In.REQ_ACCT_DATA, 2, True, acct1))  # the same account is shared
    frames = sent(b)
    assert errors(frames) == [] and frames[-1] == ["54", "1", acct1]
    assert hub.account_subscribers == [a, b]

    a.receive_data(req(In.REQ_ACCT_DATA, 2, False, acct1))
    assert sent(a) == []
    assert hub.account_subscribers == [b]
    b.receive_eof()
    assert hub.account_updates is None and hub.account_subscribers == []

    c = connect(hub, client_id=3)
    c.receive_data(req(In.REQ_ACCT_DATA, 2, True, acct3))
    assert sent(c)[-1] == ["54", "1", acct3]
    assert hub.account_updates == acct3


def test_sole_subscriber_switching_accounts_gets_2100_then_the_download(hub: Hub) -> None:
    acct1, acct2, _ = hub.state.accounts
    a = connect(hub)
    a.receive_data(req(In.REQ_ACCT_DATA, 2, True, acct1))
    sent(a)
    a.receive_data(req(In.REQ_ACCT_DATA, 2, True, acct2))
    frames = sent(a)
    assert frames[0] == err(-1, 2100, ERROR_TEXT[ErrorCode.ACCOUNT_UPDATES_SWITCHED])
    assert frames[1] == ["6", "2", "AccountCode", acct2, "", acct2]
    assert frames[-1] == ["54", "1", acct2]
    assert errors(frames[1:]) == []
    assert {f[-1] for f in frames if f[0] == "7"} == {acct2}
    assert hub.account_updates == acct2


def test_after_the_subscriber_closes_another_client_can_take_any_account(hub: Hub) -> None:
    acct1, acct2, _ = hub.state.accounts
    a, b = connect(hub, client_id=1), connect(hub, client_id=2)
    a.receive_data(req(In.REQ_ACCT_DATA, 2, True, acct1))
    b.receive_data(req(In.REQ_ACCT_DATA, 2, True, acct2))
    assert errors(sent(b)) == [(-1, 2101)]
    a.close("gone")
    b.receive_data(req(In.REQ_ACCT_DATA, 2, True, acct2))
    frames = sent(b)
    assert errors(frames) == [] and frames[-1] == ["54", "1", acct2]


# --- pacing -----------------------------------------------------------------------------------------------------------


def test_pacing_51st_request_within_a_second_gets_error_100_and_no_answer(small_hub: Hub) -> None:
    clock = Clock()
    session = connect(small_hub, clock=clock)
    other = connect(small_hub, client_id=2, clock=clock)
    session.receive_data(b"".join(req(In.REQ_OPEN_ORDERS, 1) for _ in range(50)))
    assert sent(session) == [["53", "1"]] * 50
    clock.now += 0.999
    session.receive_data(req(In.REQ_OPEN_ORDERS, 1))
    assert sent(session) == [err(-1, 100, "Max rate of messages per second has been exceeded:max=50 rec=51")]
    assert session.phase is Phase.READY
    other.receive_data(req(In.REQ_OPEN_ORDERS, 1))  # the limit is per client
    assert sent(other) == [["53", "1"]]
    clock.now += 1.0
    session.receive_data(req(In.REQ_OPEN_ORDERS, 1))
    assert sent(session) == [["53", "1"]]
    assert len([r for r in small_hub.requests if r.client_id == 1 and r.name == "REQ_OPEN_ORDERS"]) == 52


def test_pacing_limit_is_a_sliding_window(small_hub: Hub) -> None:
    clock = Clock()
    small_hub.faults.pacing_limit = 5
    session = connect(small_hub, clock=clock)
    for _ in range(20):  # five a second forever is fine
        session.receive_data(req(In.REQ_OPEN_ORDERS, 1))
        clock.now += 0.2
    assert errors(sent(session)) == []


# --- faults -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, 7, 9])
def test_drop_after_messages_closes_after_exactly_n_frames(small_hub: Hub, limit: int) -> None:
    small_hub.faults.drop_after_messages = limit
    session = Session(small_hub, 1)
    session.receive_data(handshake() + start_api(1) + req(In.REQ_POSITIONS, 1))  # 10 frames if healthy
    assert len(sent(session)) == limit
    assert session.phase is Phase.CLOSED
    assert session.close_reason == f"fault: dropped after {limit} messages"


def test_drop_mid_positions_sends_half_then_closes(hub: Hub) -> None:
    session = connect(hub)
    hub.faults.drop_mid_positions = True
    session.receive_data(req(In.REQ_POSITIONS, 1))
    frames = sent(session)
    assert len(frames) == len(hub.state.holdings) // 2
    assert {f[0] for f in frames} == {"61"}
    assert session.phase is Phase.CLOSED and session.close_reason == "fault: dropped mid position stream"
    assert hub.sessions == {}


def test_suppress_position_end(small_hub: Hub) -> None:
    small_hub.faults.suppress_position_end = True
    session = connect(small_hub)
    session.receive_data(req(In.REQ_POSITIONS, 1))
    assert [f[0] for f in sent(session)] == ["61", "61", "61"]
    assert session.phase is Phase.READY


def test_suppress_account_download_end(small_hub: Hub) -> None:
    small_hub.faults.suppress_account_download_end = True
    session = connect(small_hub)
    session.receive_data(req(In.REQ_ACCT_DATA, 2, True, "DU1"))
    ids = [f[0] for f in sent(session)]
    assert ids[-3:] == ["7", "7", "8"] and "54" not in ids


def test_offline_withholds_replies_until_released(small_hub: Hub) -> None:
    session = connect(small_hub)
    small_hub.faults.offline = True
    session.receive_data(req(In.REQ_POSITIONS, 1) + req(In.REQ_EXECUTIONS, 3, 5))
    assert sent(session) == []
    small_hub.faults.offline = False
    session.release_withheld(deliver=True)
    assert [f[0] for f in sent(session)] == ["61", "61", "61", "62", "55"]
    session.release_withheld(deliver=True)  # nothing is sent twice
    assert sent(session) == []


def test_offline_replies_are_dropped_when_data_is_lost(small_hub: Hub) -> None:
    session = connect(small_hub)
    small_hub.faults.offline = True
    session.receive_data(req(In.REQ_POSITIONS, 1))
    small_hub.faults.offline = False
    session.release_withheld(deliver=False)
    assert sent(session) == []
    session.receive_data(req(In.REQ_OPEN_ORDERS, 1))
    assert sent(session) == [["53", "1"]]


def test_offline_suppresses_pushes(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_POSITIONS, 1))
    sent(session)
    small_hub.faults.offline = True
    small_hub.state.set_position("DU1", AAPL, 50.0)
    assert sent(session) == []


# --- pushes -----------------------------------------------------------------------------------------------------------


def test_position_change_reaches_the_positions_subscriber_and_that_accounts_updates_subscriber_only(
    small_hub: Hub,
) -> None:
    positions, portfolio, idle = (connect(small_hub, client_id=i) for i in (1, 2, 3))
    positions.receive_data(req(In.REQ_POSITIONS, 1))
    portfolio.receive_data(req(In.REQ_ACCT_DATA, 2, True, "DU1"))
    for session in (positions, portfolio, idle):
        sent(session)

    small_hub.state.set_position("DU1", AAPL, 150.0)
    assert sent(positions) == [
        ["61", "3", "DU1", "265598", "AAPL", "STK", "", "0", "", "", "NASDAQ", "USD", "AAPL", "NMS", "150", "150.25"]
    ]
    portfolio_frames = sent(portfolio)
    assert [f[0] for f in portfolio_frames] == ["7", "8"]
    assert portfolio_frames[0][13:] == ["150", "151.5", "22725", "150.25", "187.5", "0", "DU1"]
    assert sent(idle) == []

    small_hub.state.set_position("DU2", MSFT, 10.0)  # another account: the portfolio subscriber hears nothing
    assert [f[2:4] for f in sent(positions)] == [["DU2", "101000"]]
    assert sent(portfolio) == []


def test_closing_a_position_pushes_quantity_zero_and_realized_pnl(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_ACCT_DATA, 2, True, "DU1"))
    sent(session)
    small_hub.state.close_position("DU1", 265598)
    portfolio, _ = sent(session)
    assert portfolio[13:] == ["0", "151.5", "0", "150.25", "0", "125", "DU1"]


def test_pnl_subscription_is_pushed_on_change(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_PNL_SINGLE, 3, "DU1", "", 265598))
    sent(session)
    small_hub.state.set_position("DU1", AAPL, 200.0)
    assert sent(session) == [["95", "3", "200", "0", "250", "0", "30300"]]
    small_hub.state.set_position("DU2", MSFT, 1.0)
    assert sent(session) == []


def test_cancel_positions_stops_pushes(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_POSITIONS, 1))
    sent(session)
    session.receive_data(req(In.CANCEL_POSITIONS, 1))
    small_hub.state.set_position("DU1", AAPL, 1.0)
    assert sent(session) == []
    assert not session.positions_subscribed


def test_pushes_call_on_output(small_hub: Hub) -> None:
    session = connect(small_hub)
    calls: list[int] = []
    session.on_output = lambda: calls.append(1)
    session.receive_data(req(In.REQ_POSITIONS, 1))
    small_hub.state.set_position("DU1", AAPL, 1.0)
    assert calls


def test_refresh_pushes_portfolio_without_download_end(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_ACCT_DATA, 2, True, "DU2"))
    sent(session)
    small_hub.refresh(portfolio=True, pnl=False)
    ids = [f[0] for f in sent(session)]
    assert ids == ["6"] * len(small_hub.state.account_values("DU2")) + ["7", "8"]


def test_broadcast_error_reaches_every_ready_session(small_hub: Hub) -> None:
    sessions = [connect(small_hub, client_id=i) for i in (1, 2)]
    small_hub.broadcast_error(1100, ERROR_TEXT[ErrorCode.CONNECTIVITY_LOST])
    for session in sessions:
        assert sent(session) == [err(-1, 1100, ERROR_TEXT[ErrorCode.CONNECTIVITY_LOST])]


# --- end of stream and robustness -------------------------------------------------------------------------------------


def test_eof_mid_frame_closes_with_a_reason(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_POSITIONS, 1)[:5])
    assert sent(session) == []
    session.receive_eof()
    assert session.phase is Phase.CLOSED and session.close_reason == "closed by the client"
    assert small_hub.sessions == {}


def test_eof_mid_handshake_closes_with_a_reason(small_hub: Hub) -> None:
    session = Session(small_hub, 1)
    session.receive_data(handshake()[:6])
    session.receive_eof()
    assert session.phase is Phase.CLOSED and session.close_reason == "closed by the client"


MALFORMED = [
    b"\xff\xff\xff\xff",  # oversize length
    encode_raw(b"49\x001"),  # missing trailing NUL
    encode_raw(b"\xff\xfe\x00"),  # invalid UTF-8
    encode_raw(b""),  # empty frame
    req("999", 1),
    req("abc"),
    req(In.REQ_ACCT_DATA, 2, "x", "DU1"),
    req(In.REQ_PNL_SINGLE),
    req(In.REQ_MKT_DATA, "v", "id"),
    req(In.PLACE_ORDER, "not-an-id"),
    req(In.CANCEL_ORDER),
    req(In.REQ_ACCOUNT_SUMMARY, 1, "x"),
    req(71, 2, 3, ""),  # a second startApi once the API is running
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_input_never_raises_out_of_receive_data(small_hub: Hub, data: bytes) -> None:
    session = connect(small_hub)
    session.receive_data(data)
    sent(session)
    if session.phase is Phase.CLOSED:
        assert session.close_reason
    session.receive_data(data)
    session.receive_eof()
    assert session.phase is Phase.CLOSED and session.close_reason


def _mutations(seed: int, count: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    good = handshake() + start_api(1) + req(In.REQ_ACCT_DATA, 2, True, "DU1") + req(In.REQ_PNL_SINGLE, 1, "DU1", "", 1)
    for _ in range(count):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data))
            roll = rng.random()
            if roll < 0.4:
                data[pos] = rng.randrange(256)
            elif roll < 0.7:
                del data[pos]
            else:
                data.insert(pos, rng.randrange(256))
        yield bytes(data)


def test_mutated_streams_never_raise_and_always_end_closed(small_hub: Hub) -> None:
    rng = random.Random(11)
    for i, data in enumerate(_mutations(seed=5, count=2000)):
        session = Session(small_hub, i)
        cut = rng.randrange(len(data) + 1)
        session.receive_data(data[:cut])
        session.receive_data(data[cut:])
        session.data_to_send()
        session.receive_eof()
        assert session.phase is Phase.CLOSED and session.close_reason
    assert small_hub.sessions == {} and small_hub.account_subscribers == []


# --- the request record -----------------------------------------------------------------------------------------------


def test_request_record_lists_every_request_with_client_id_and_name(small_hub: Hub) -> None:
    a, b = connect(small_hub, client_id=1), connect(small_hub, client_id=2)
    a.receive_data(req(In.REQ_POSITIONS, 1) + req(In.REQ_MKT_DATA, 11, 3, 265598))
    b.receive_data(req(In.REQ_CURRENT_TIME, 1) + req(In.PLACE_ORDER, 8, 265598) + req("999"))
    by_client = small_hub.requests_by_client()
    assert [r.name for r in by_client[1]] == ["START_API", "REQ_POSITIONS", "REQ_MKT_DATA"]
    assert [r.name for r in by_client[2]] == ["START_API", "REQ_CURRENT_TIME", "PLACE_ORDER", "UNKNOWN_999"]
    assert [r.client_id for r in small_hub.requests] == [1, 2, 1, 1, 2, 2, 2]
    positions = by_client[1][1]
    assert positions.msg_id == 61 and positions.fields == ("61", "1") and positions.connection == a.connection
    assert [r.name for r in small_hub.requests if r.is_market_data] == ["REQ_MKT_DATA"]
    assert [r.name for r in small_hub.requests if r.is_order] == ["PLACE_ORDER"]


# --- regressions: cancels, unsubscribe, one-shot faults ---------------------------------------------------------------


@pytest.mark.parametrize(
    "msg_id", [In.CANCEL_MKT_DEPTH, In.CANCEL_REAL_TIME_BARS, In.CANCEL_POSITIONS_MULTI, In.CANCEL_PNL]
)
def test_cancels_of_anything_get_no_reply_and_keep_the_connection(small_hub: Hub, msg_id: In) -> None:
    session = connect(small_hub)
    session.receive_data(req(msg_id, 1, 5) + req(In.REQ_CURRENT_TIME, 1))
    assert [f[0] for f in sent(session)] == ["49"]
    assert session.phase is Phase.READY


def test_an_unsupported_request_from_ibs_list_gets_321_and_keeps_the_connection(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_SCANNER_PARAMETERS, 1))
    assert errors(sent(session)) == [(-1, 321)]
    assert session.phase is Phase.READY


def test_unsubscribing_account_updates_ignores_the_account_field(small_hub: Hub) -> None:
    a, b = connect(small_hub, client_id=1), connect(small_hub, client_id=2)
    a.receive_data(req(In.REQ_ACCT_DATA, 2, 1, "DU1"))
    a.receive_data(req(In.REQ_ACCT_DATA, 2, 0, ""))
    assert small_hub.account_updates is None
    b.receive_data(req(In.REQ_ACCT_DATA, 2, 1, "DU2"))
    assert sent(b)[-1] == ["54", "1", "DU2"]


def test_drop_after_messages_closes_an_idle_connection_at_the_nth_frame(small_hub: Hub) -> None:
    small_hub.faults.drop_after_messages = 6  # handshake reply, 15, 9 and three farm notices
    session = Session(small_hub, 1)
    session.receive_data(handshake() + start_api(1))
    assert len(sent(session)) == 6
    assert session.phase is Phase.CLOSED


def test_drop_mid_positions_affects_one_stream_only(small_hub: Hub) -> None:
    small_hub.faults.drop_mid_positions = True
    first, second = connect(small_hub, client_id=1), connect(small_hub, client_id=2)
    first.receive_data(req(In.REQ_POSITIONS, 1))
    second.receive_data(req(In.REQ_POSITIONS, 1))
    assert first.phase is Phase.CLOSED
    assert [f[0] for f in sent(second)] == ["61", "61", "61", "62"]
