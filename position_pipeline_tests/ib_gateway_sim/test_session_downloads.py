"""The cost and per-account faults of account downloads, and the per-login behaviours of issue 14, driven through
the protocol state machine (Session) with bytes and no sockets: frames and field layouts exactly as sent."""

from __future__ import annotations

from position_pipeline.ib_gateway_sim.contracts import Contract
from position_pipeline.ib_gateway_sim.filler import filler_rows
from position_pipeline.ib_gateway_sim.hub import Hub
from position_pipeline.ib_gateway_sim.messages import In, refused_text
from position_pipeline.ib_gateway_sim.session import Phase
from position_pipeline.ib_gateway_sim.state import GatewayState
from position_pipeline_tests.support.session_driver import connect, err, errors, req, sent

SWITCHED = "New account data requested from TWS. API client has been unsubscribed from account data."
FUTURE = Contract(495512563, "ES", "FUT", exchange="CME", currency="USD", expiry="20270319", multiplier="50")


def subscribe(account: str) -> bytes:
    return req(In.REQ_ACCT_DATA, 2, True, account)


def ids(frames: list[list[str]]) -> list[str]:
    return [f[0] for f in frames]


def test_a_download_with_latency_waits_for_its_timer_and_other_requests_do_not(small_hub: Hub) -> None:
    small_hub.faults.download_seconds_by_account = {"DU1": 0.5}
    session = connect(small_hub)
    session.receive_data(subscribe("DU1") + req(In.REQ_CURRENT_TIME, 1))
    assert ids(sent(session)) == ["49"]  # the time at once, the download not yet
    assert [delay for delay, _ in small_hub.deferred] == [0.5]
    small_hub.run_deferred()
    frames = sent(session)
    assert frames[-1] == ["54", "1", "DU1"] and ids(frames).count("7") == 2


def test_a_download_dropped_by_an_unsubscribe_before_its_timer_is_never_sent(small_hub: Hub) -> None:
    small_hub.faults.download_seconds = 1.0
    session = connect(small_hub)
    session.receive_data(subscribe("DU1") + req(In.REQ_ACCT_DATA, 2, False, "DU1"))
    small_hub.run_deferred()
    assert sent(session) == []


def test_nothing_is_pushed_before_a_pending_download(small_hub: Hub) -> None:
    small_hub.faults.download_seconds = 1.0
    session = connect(small_hub)
    session.receive_data(subscribe("DU1"))
    session.push_refresh(portfolio=True, pnl=False)
    assert sent(session) == []
    small_hub.run_deferred()
    assert sent(session)[-1] == ["54", "1", "DU1"]


def test_a_second_client_is_refused_while_a_download_is_in_flight(small_hub: Hub) -> None:
    small_hub.faults.download_seconds = 1.0
    a, b = connect(small_hub, client_id=1), connect(small_hub, client_id=2)
    a.receive_data(subscribe("DU1"))
    b.receive_data(subscribe("DU2"))
    assert sent(b) == [err(-1, 2101, refused_text([1]))]


def test_account_value_volume_sends_exactly_that_many_distinct_extra_rows(small_hub: Hub) -> None:
    ledger = small_hub.state.account_values("DU1")
    small_hub.faults.account_value_volume = 700  # past every realistic key: numbered ones
    session = connect(small_hub)
    session.receive_data(subscribe("DU1"))
    values = [f for f in sent(session) if f[0] == "6"]
    assert len(values) == len(ledger) + 700
    assert len({(f[2], f[4]) for f in values}) == len(values)
    assert {"AccruedCash-S", "BuyingPower-C"} <= {f[2] for f in values}
    assert filler_rows(ledger, 10) == filler_rows(ledger, 10)


def test_one_accounts_download_never_ends_and_the_others_do(small_hub: Hub) -> None:
    small_hub.faults.suppress_download_end_for = {"DU1"}
    session = connect(small_hub)
    session.receive_data(subscribe("DU1"))
    frames = sent(session)
    assert ids(frames)[-1] == "8" and "54" not in ids(frames)
    session.receive_data(subscribe("DU2"))
    assert sent(session)[-1] == ["54", "1", "DU2"]


def test_2100_mid_download_sends_half_the_portfolio_then_unsubscribes(small_hub: Hub) -> None:
    small_hub.faults.unsubscribe_mid_download = {"DU1": 2}
    session = connect(small_hub)
    session.receive_data(subscribe("DU1"))
    frames = sent(session)
    assert ids(frames).count("7") == 1 and "8" not in ids(frames) and "54" not in ids(frames)
    assert frames[-1] == err(-1, 2100, SWITCHED)
    assert small_hub.account_updates is None and small_hub.faults.unsubscribe_mid_download == {"DU1": 1}


def test_an_outside_holder_refuses_every_client_but_itself(small_hub: Hub) -> None:
    small_hub.faults.account_updates_held_by = 77
    other, holder = connect(small_hub, client_id=1), connect(small_hub, client_id=77)
    other.receive_data(subscribe("DU1"))
    assert sent(other) == [err(-1, 2101, refused_text([77]))]
    holder.receive_data(subscribe("DU1"))
    assert sent(holder)[-1] == ["54", "1", "DU1"]


def test_reqpositions_is_refused_beyond_50_accounts_and_on_the_switch() -> None:
    state = GatewayState(accounts=[f"DU{i}" for i in range(51)])
    state.set_position("DU7", FUTURE, 2.0, average_cost=250_000.0, market_price=5000.0)
    session = connect(Hub(state))
    session.receive_data(req(In.REQ_POSITIONS, 1))
    frames = sent(session)
    assert errors(frames) == [(-1, 321)] and "reqPositions" in frames[0][4] and "62" not in ids(frames)
    session.receive_data(req(In.REQ_POSITIONS_MULTI, 1, 5, "DU7", ""))
    assert sent(session) == [
        ["71", "1", "5", "DU7", "495512563", "ES", "FUT", "20270319", "0", "", "50", "", "USD", "", "", "2",
         "250000", ""],
        ["72", "1", "5"],
    ]  # fmt: skip
    small = Hub(GatewayState(accounts=["DU1"]))
    small.faults.positions_unavailable = True
    one = connect(small)
    one.receive_data(req(In.REQ_POSITIONS, 1))
    assert errors(sent(one)) == [(-1, 321)]


def test_position_multi_pushes_changes_of_its_account_until_cancelled(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_POSITIONS_MULTI, 1, 8, "DU2", "") + req(In.REQ_POSITIONS_MULTI, 1, 9, "DU1", ""))
    sent(session)
    small_hub.state.close_position("DU2", next(h.contract.conid for h in small_hub.state.positions("DU2")))
    assert [f[:4] for f in sent(session)] == [["71", "1", "8", "DU2"]]
    session.receive_data(req(In.CANCEL_POSITIONS_MULTI, 1, 8))
    small_hub.state.set_position("DU2", FUTURE, 1.0, market_price=5000.0)
    assert sent(session) == []


def test_futures_positions_have_no_exchange_and_their_portfolio_values_keep_it(small_hub: Hub) -> None:
    small_hub.state.set_position("DU1", FUTURE, 1.0, average_cost=250_000.0, market_price=5000.0)
    session = connect(small_hub)
    session.receive_data(req(In.REQ_POSITIONS, 1) + subscribe("DU1"))
    frames = sent(session)
    position = next(f for f in frames if f[0] == "61" and f[3] == "495512563")
    portfolio = next(f for f in frames if f[0] == "7" and f[2] == "495512563")
    assert position[10] == "" and portfolio[9] == "CME"
    stock = next(f for f in frames if f[0] == "61" and f[5] == "STK")
    assert stock[10] != ""


def test_unset_pnl_fields_are_sent_as_ibs_unset_double(small_hub: Hub) -> None:
    small_hub.faults.pnl_unset = {"dailyPnL", "realizedPnL"}
    session = connect(small_hub)
    conid = next(h.contract.conid for h in small_hub.state.positions("DU1"))
    session.receive_data(req(In.REQ_PNL_SINGLE, 3, "DU1", "", conid))
    (pnl,) = sent(session)
    assert pnl[0] == "95" and pnl[3] == pnl[5] == "1.7976931348623157E308"
    assert float(pnl[4]) < 1e300 and float(pnl[6]) < 1e300


def test_garbage_greets_with_minus_one_and_junk_and_the_session_carries_on(small_hub: Hub) -> None:
    small_hub.faults.garbage_after_handshake = True
    session = connect(small_hub, client_id=5)  # the driver drains the greeting
    assert session.phase is Phase.READY
    session.receive_data(req(In.REQ_POSITIONS, 1))
    frames = sent(session)
    assert ["62", "1"] in frames and len([f for f in frames if f[0] == "61" and len(f) == 16]) == 3
    assert len(frames) > 5  # junk frames among the replies


def test_garbage_greeting_has_managed_accounts_minus_one(small_hub: Hub) -> None:
    from position_pipeline.ib_gateway_sim.session import Session
    from position_pipeline_tests.support.session_driver import handshake, start_api

    small_hub.faults.garbage_after_handshake = True
    session = Session(small_hub, 1)
    session.receive_data(handshake() + start_api(6))
    frames = sent(session)[1:]
    assert [f for f in frames if f[0] == "15"] == [["15", "1", "-1"]]
    assert ["9", "1", "1"] in frames
