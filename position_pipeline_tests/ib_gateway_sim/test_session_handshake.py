"""The simulator's protocol state machine (Session) driven with bytes, no sockets:
the handshake and version negotiation, and the startApi greeting."""

from __future__ import annotations

import pytest

from position_pipeline.ib_gateway_sim.framing import encode_raw
from position_pipeline.ib_gateway_sim.hub import Hub
from position_pipeline.ib_gateway_sim.messages import In
from position_pipeline.ib_gateway_sim.session import Phase, Session
from position_pipeline_tests.support.session_driver import (
    CONNECTION_TIME,
    err,
    handshake,
    req,
    sent,
    start_api,
)

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
