"""The simulator's PnL subscriptions (reqPnLSingle) driven with bytes, no sockets: the daily PnL against the prior
close, the delay before a subscription's first message, the per-account faults (values that stay unset, messages
that never come) and the end of a connection's subscriptions with it."""

from __future__ import annotations

from position_pipeline.ib_gateway_sim.hub import Hub
from position_pipeline.ib_gateway_sim.messages import UNSET_DOUBLE_TEXT, In
from position_pipeline.ib_gateway_sim.state import GatewayState
from position_pipeline_tests.support.session_driver import AAPL, AAPL_CALL, MSFT, connect, req, sent


def test_daily_pnl_is_position_times_multiplier_times_the_move_from_the_prior_close(small_hub: Hub) -> None:
    small_hub.state.closes[AAPL.conid] = 150.0  # live 151.5, 100 shares
    session = connect(small_hub)
    session.receive_data(req(In.REQ_PNL_SINGLE, 3, "DU1", "", AAPL.conid))
    (pnl,) = sent(session)
    assert pnl[:4] == ["95", "3", "100", "150"]
    assert small_hub.state.daily_pnl(small_hub.state.holdings[("DU1", AAPL.conid)]) == 150.0


def test_a_generated_desk_has_prior_closes_so_daily_pnl_is_not_always_zero() -> None:
    state = GatewayState.generate(positions=30, accounts=2, seed=3)
    assert set(state.closes) == set(state.prices)
    assert any(state.daily_pnl(h) != 0.0 for h in state.positions())
    again = GatewayState.generate(positions=30, accounts=2, seed=3)
    assert again.closes == state.closes and again.prices == state.prices  # seeded


def test_the_first_pnl_message_waits_for_the_delay_and_a_cancel_in_between_voids_it(small_hub: Hub) -> None:
    small_hub.faults.pnl_seconds = 0.5
    small_hub.faults.pnl_seconds_by_account = {"DU2": 0.0}
    session = connect(small_hub)
    session.receive_data(req(In.REQ_PNL_SINGLE, 3, "DU1", "", AAPL.conid))
    session.receive_data(req(In.REQ_PNL_SINGLE, 4, "DU1", "", AAPL_CALL.conid))
    session.receive_data(req(In.REQ_PNL_SINGLE, 5, "DU2", "", MSFT.conid))
    assert [f[1] for f in sent(session)] == ["5"]  # DU2 has no delay of its own
    session.push_refresh(portfolio=False, pnl=True)
    assert [f[1] for f in sent(session)] == ["5"]  # pushes wait for a subscription's first message
    session.receive_data(req(In.CANCEL_PNL_SINGLE, 4))
    small_hub.run_deferred()
    assert [f[1] for f in sent(session)] == ["3"]
    assert [delay for delay, _ in small_hub.deferred] == []


def test_an_account_whose_pnl_stays_unset_or_never_comes(small_hub: Hub) -> None:
    small_hub.faults.pnl_unset_for = {"DU1"}
    small_hub.faults.pnl_silent_for = {"DU2"}
    session = connect(small_hub)
    session.receive_data(req(In.REQ_PNL_SINGLE, 3, "DU1", "", AAPL.conid))
    session.receive_data(req(In.REQ_PNL_SINGLE, 4, "DU2", "", MSFT.conid))
    session.push_refresh(portfolio=False, pnl=True)
    frames = sent(session)
    assert [f[1] for f in frames] == ["3", "3"]
    assert all(f[3:] == [UNSET_DOUBLE_TEXT] * 4 for f in frames)


def test_a_cancel_or_the_connections_close_ends_its_pnl_subscriptions(small_hub: Hub) -> None:
    first, second = connect(small_hub, client_id=1), connect(small_hub, client_id=2)
    first.receive_data(req(In.REQ_PNL_SINGLE, 3, "DU1", "", AAPL.conid))
    first.receive_data(req(In.REQ_PNL_SINGLE, 4, "DU1", "", MSFT.conid))
    second.receive_data(req(In.REQ_PNL_SINGLE, 3, "DU2", "", MSFT.conid))
    first.receive_data(req(In.CANCEL_PNL_SINGLE, 3))
    assert small_hub.open_pnl_subscriptions() == [(1, 4, "DU1", MSFT.conid), (2, 3, "DU2", MSFT.conid)]
    sent(first)
    first.close("client disconnected")
    assert small_hub.open_pnl_subscriptions() == [(2, 3, "DU2", MSFT.conid)]
    small_hub.refresh(portfolio=False, pnl=True)
    assert sent(first) == []  # nothing more for a closed connection
