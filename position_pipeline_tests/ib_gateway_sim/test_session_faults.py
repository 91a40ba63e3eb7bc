"""The simulator's protocol state machine (Session) driven with bytes, no sockets:
faults, the end of the stream, malformed and mutated input, and regressions (cancels, unsubscribe, one-shot faults)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from position_pipeline.ib_gateway_sim.framing import encode_raw
from position_pipeline.ib_gateway_sim.hub import Hub
from position_pipeline.ib_gateway_sim.messages import In
from position_pipeline.ib_gateway_sim.session import Phase, Session
from position_pipeline_tests.support.session_driver import (
    AAPL,
    connect,
    errors,
    handshake,
    req,
    sent,
    start_api,
)

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
