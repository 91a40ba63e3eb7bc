"""The simulator's protocol state machine (Session) driven with bytes, no sockets:
every reply's exact field list, and the errors IB would send (320, 321, 354) for what it refuses."""

from __future__ import annotations

import time

import pytest

from position_pipeline.ib_gateway_sim.framing import Field
from position_pipeline.ib_gateway_sim.hub import Hub
from position_pipeline.ib_gateway_sim.messages import ErrorCode, In, error_text
from position_pipeline.ib_gateway_sim.session import Phase
from position_pipeline.ib_gateway_sim.state import GatewayState
from position_pipeline_tests.support.session_driver import (
    AAPL,
    HH_MM,
    READ_ONLY,
    connect,
    err,
    errors,
    req,
    sent,
)

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


def test_account_summary_ledger_flags_send_currency_sections(small_hub: Hub) -> None:
    """IB's `$LEDGER` flags: the BASE section only, one currency's, or every currency's with its ExchangeRate."""
    session = connect(small_hub)
    session.receive_data(req(In.REQ_ACCOUNT_SUMMARY, 1, 5, "All", "NetLiquidation,$LEDGER:ALL"))
    rows = [(f[3], f[4], f[6]) for f in sent(session)[:-1]]
    for account in ("DU1", "DU2"):
        base = small_hub.state.base_currency(account)
        assert (account, "NetLiquidation", base) in rows
        rates = {ccy for a, tag, ccy in rows if a == account and tag == "ExchangeRate"}
        assert {"BASE", base} <= rates
    assert not {tag for _, tag, _ in rows} & {"AccountCode", "TotalCashValue"}  # only what was asked
    session.receive_data(req(In.REQ_ACCOUNT_SUMMARY, 1, 6, "All", "$LEDGER"))
    assert {f[6] for f in sent(session)[:-1]} == {"BASE"}
    session.receive_data(req(In.REQ_ACCOUNT_SUMMARY, 1, 7, "All", "$LEDGER:USD"))
    assert {(f[4], f[6]) for f in sent(session)[:-1]} >= {("ExchangeRate", "USD"), ("CashBalance", "USD")}


def test_a_refused_account_summary_is_a_321_naming_its_request(small_hub: Hub) -> None:
    small_hub.faults.account_summary_refused = True
    session = connect(small_hub)
    session.receive_data(req(In.REQ_ACCOUNT_SUMMARY, 1, 8, "All", "$LEDGER:ALL"))
    assert errors(sent(session)) == [(8, 321)]


def test_a_cut_account_summary_sends_its_first_values_and_no_end(small_hub: Hub) -> None:
    small_hub.faults.account_summary_cut_after = 3
    session = connect(small_hub)
    session.receive_data(req(In.REQ_ACCOUNT_SUMMARY, 1, 9, "All", "NetLiquidation,$LEDGER:ALL"))
    frames = sent(session)
    assert [f[0] for f in frames] == ["63"] * 3  # three values, no ACCOUNT_SUMMARY_END


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
