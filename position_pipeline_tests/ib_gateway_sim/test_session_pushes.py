"""The simulator's protocol state machine (Session) driven with bytes, no sockets:
pushes (positions, portfolio, PnL, broadcast errors) and the request record."""

from __future__ import annotations

from position_pipeline.ib_gateway_sim.hub import Hub
from position_pipeline.ib_gateway_sim.messages import ERROR_TEXT, ErrorCode, In
from position_pipeline_tests.support.session_driver import (
    AAPL,
    MSFT,
    connect,
    err,
    req,
    sent,
)

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
    frames = sent(portfolio)  # the change revalued the whole account: it is pushed whole, as at a tick, no end
    assert [f[0] for f in frames if f[0] != "6"] == ["7", "7", "8"]
    assert frames[0][0] == "6" and ["6", "2", "StockMarketValue", "22725.00", "USD", "DU1"] in frames
    aapl = next(f for f in frames if f[:3] == ["7", "8", "265598"])
    assert aapl[13:] == ["150", "151.5", "22725", "150.25", "187.5", "0", "DU1"]
    assert sent(idle) == []

    small_hub.state.set_position("DU2", MSFT, 10.0)  # another account: the portfolio subscriber hears nothing
    assert [f[2:4] for f in sent(positions)] == [["DU2", "101000"]]
    assert sent(portfolio) == []


def test_closing_a_position_pushes_quantity_zero_and_realized_pnl(small_hub: Hub) -> None:
    session = connect(small_hub)
    session.receive_data(req(In.REQ_ACCT_DATA, 2, True, "DU1"))
    sent(session)
    small_hub.state.close_position("DU1", 265598)
    frames = sent(session)
    portfolio = next(f for f in frames if f[:3] == ["7", "8", "265598"])
    assert frames[-1][0] == "8"  # the account update time ends the push; no download end
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
    assert not session.positions.subscribed


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
