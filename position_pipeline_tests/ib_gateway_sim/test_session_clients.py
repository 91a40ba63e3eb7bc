"""The simulator's protocol state machine (Session) driven with bytes, no sockets:
client ids (326), account-updates arbitration across clients (2100), and pacing (100) on an injected clock."""

from __future__ import annotations

from position_pipeline.ib_gateway_sim.hub import Hub
from position_pipeline.ib_gateway_sim.messages import ERROR_TEXT, ErrorCode, In, refused_text
from position_pipeline.ib_gateway_sim.session import Phase, Session
from position_pipeline_tests.support.session_driver import (
    Clock,
    connect,
    err,
    errors,
    handshake,
    req,
    sent,
    start_api,
)

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
    assert sent(b) == [err(-1, 2101, refused_text([1]))]  # the text ends with the holders' client ids
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
