"""`ib_reader` in the pnl values mode (IB_VALUES_FROM=pnl), with the real ib_async client against the simulated
gateway: rows from reqPnLSingle on a multi-account multi-currency desk, the rates from one account summary, every
subscription ended with the connection, no market-data request, and one account's PnL that stays unset or never
comes costing only that account's positions."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from position_pipeline.core import terms
from position_pipeline.core.ib_reader import IBDisconnected, IBSettings, IBTimeout, read_snapshot
from position_pipeline.core.pnl_values import ib_number
from position_pipeline.ib_gateway_sim import GatewayThread
from position_pipeline.ib_gateway_sim.messages import In
from position_pipeline_tests.support.ib_reads import conids_by_account, held_only_by, pnl_ended, settings_for, state_of
from position_pipeline_tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(30)

PNL = terms.ValuesFrom.PNL


def test_pnl_rows_carry_the_live_values_daily_pnl_and_base_values(sim: GatewayThread) -> None:
    state = state_of(sim)
    conids = {h.contract.conid for h in state.positions()}
    before = datetime.now(UTC)

    snapshot = read_snapshot(settings_for(sim, values_from="pnl"), conids, "pnl-desk")

    after = datetime.now(UTC)
    held = {(h.account, h.contract.conid) for h in state.positions()}
    assert {(p.account, p.conid) for p in snapshot.positions} == held
    assert {state.base_currency(a) for a in state.accounts} == {"USD", "EUR"}
    assert len({p.currency for p in snapshot.positions}) > 2
    dailies = set()
    for p in snapshot.positions:
        holding = state.holding(p.account, p.conid)
        assert holding is not None
        live = state.live_valuation(holding)
        assert p.values_from == PNL and p.account_update_time is None
        assert (p.market_value, p.unrealized_pnl, p.realized_pnl) == (
            live.market_value, live.unrealized_pnl, live.realized_pnl
        )  # fmt: skip
        assert p.daily_pnl == state.daily_pnl(holding)
        dailies.add(p.daily_pnl)
        assert p.position == holding.quantity and not p.moved
        if holding.quantity:
            multiplier = float(holding.contract.multiplier or 1)
            assert p.market_price == pytest.approx(live.market_value / (holding.quantity * multiplier))
            assert p.market_price == pytest.approx(live.market_price, rel=1e-3, abs=0.01)
        assert p.base_currency == state.base_currency(p.account)
        assert p.fx_rate == state.exchange_rate(p.account, p.currency)
        assert p.values_as_of is not None and before <= p.values_as_of <= after  # real time: when it arrived
    assert len(dailies) > 1  # the prior closes make the daily PnL move
    records = sim.requests()
    assert not [r.name for r in records if r.is_order or r.is_market_data]
    assert not [r for r in records if r.msg_id == In.REQ_ACCT_DATA]  # no account download in this mode
    pnl_ended(sim)  # no cancels sent: closing the connection ended the subscriptions
    records = sim.requests()  # the gateway has read all the read sent
    assert not [r for r in records if r.msg_id == In.CANCEL_PNL_SINGLE]
    summaries = [r for r in records if r.msg_id == In.REQ_ACCOUNT_SUMMARY]  # the rates: one summary, cancelled
    assert len(summaries) == 1 and summaries[0].fields[3:] == ("All", "NetLiquidation,$LEDGER:ALL")
    assert sum(r.msg_id == In.CANCEL_ACCOUNT_SUMMARY for r in records) == 1
    assert not [r for r in records if r.msg_id == In.REQ_ACCOUNT_UPDATES_MULTI]
    assert sum(r.msg_id == In.REQ_PNL_SINGLE for r in records) == len(snapshot.positions)


def test_an_account_whose_pnl_value_stays_unset_has_its_positions_unread_with_the_reason(sim: GatewayThread) -> None:
    state = state_of(sim)
    first, second, _ = state.accounts
    sim.set_faults(pnl_unset_for={second})
    conids = held_only_by(state, first) | held_only_by(state, second)

    started = time.monotonic()
    snapshot = read_snapshot(settings_for(sim, values_from="pnl", request_timeout=1.0), conids, "pnl-unset")
    elapsed = time.monotonic() - started

    assert {p.account for p in snapshot.positions} == {first}
    assert snapshot.unread == {(second, c) for c in held_only_by(state, second)}
    why = snapshot.unavailable[second]
    assert "reqPnLSingle sent no value for conid" in why and str(min(held_only_by(state, second))) in why
    assert set(snapshot.unavailable) == {second} and second in snapshot.downloads  # its account values came
    assert 0.5 <= elapsed < 3.0  # it waited for the values, within the 1-s bound (the cancels included)
    assert all(ib_number(p.market_value) is not None for p in snapshot.positions)
    pnl_ended(sim)


def test_one_account_whose_pnl_never_comes_costs_only_its_positions_within_the_timeout(sim: GatewayThread) -> None:
    state = state_of(sim)
    first, second, third = state.accounts
    sim.set_faults(pnl_silent_for={third}, pnl_seconds=0.3)
    conids = {c for account in state.accounts for c in sorted(held_only_by(state, account))[:5]}

    started = time.monotonic()
    snapshot = read_snapshot(settings_for(sim, values_from="pnl", request_timeout=2.0), conids, "pnl-silent")
    elapsed = time.monotonic() - started

    assert {p.account for p in snapshot.positions} == {first, second} and len(snapshot.positions) == 10
    assert snapshot.unread == {(third, c) for c in conids & conids_by_account(state)[third]}
    assert 1.0 <= elapsed < 4.0 and snapshot.seconds[third] >= 1.0  # its bound, not more
    assert 0.3 <= snapshot.seconds[first] < 1.5  # the delay before the first message, then its values
    pnl_ended(sim)


def test_no_value_at_all_is_a_timeout_of_the_read(sim: GatewayThread) -> None:
    state = state_of(sim)
    sim.set_faults(pnl_silent_for=set(state.accounts))
    with pytest.raises(IBTimeout, match="no reqPnLSingle value came"):
        read_snapshot(settings_for(sim, values_from="pnl", request_timeout=1.0), held_only_by(state, state.accounts[0]),
                      "pnl-none")  # fmt: skip
    pnl_ended(sim)


def test_without_a_position_list_pnl_mode_reads_the_downloads(sim: GatewayThread) -> None:
    state = state_of(sim)
    sim.set_faults(positions_unavailable=True)
    conids = held_only_by(state, state.accounts[0])

    snapshot = read_snapshot(settings_for(sim, values_from="pnl"), conids, "pnl-no-positions")

    assert snapshot.positions_from_downloads and snapshot.positions
    assert {p.values_from for p in snapshot.positions} == {terms.ValuesFrom.ACCOUNT_UPDATES}
    assert not [r for r in sim.requests() if r.msg_id == In.REQ_PNL_SINGLE]


def test_an_unknown_values_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="IB_VALUES_FROM must be 'account_updates' or 'pnl', got 'bogus'"):
        IBSettings(values_from="bogus")  # type: ignore[arg-type]


def test_ibs_unset_double_and_nan_are_null() -> None:
    assert ib_number(1.7976931348623157e308) is None and ib_number(float("nan")) is None
    assert ib_number(-12.5) == -12.5 and ib_number(0.0) == 0.0


@pytest.mark.parametrize("asked", ["first", "all"], ids=["while-asking", "while-waiting"])
def test_a_connection_lost_during_the_pnl_read_is_an_ib_disconnect_at_once(sim: GatewayThread, asked: str) -> None:
    """A dropped socket ends its subscriptions: the read raises IBDisconnected (an IB error, so the batch is given
    back), not ib_async's ConnectionError from cancelling over a closed socket, and does not pace cancels first."""
    state = state_of(sim)
    sim.set_faults(pnl_silent_for=set(state.accounts))  # the read waits out its bound unless the connection drops
    conids = {c for account in state.accounts for c in sorted(held_only_by(state, account))[:5]}
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_snapshot(settings_for(sim, values_from="pnl", request_timeout=20.0), conids, "pnl-dropped")
        except BaseException as exc:  # the test inspects whatever the read raised
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    enough = 1 if asked == "first" else len(conids)  # the first of 15 asks comes about 0.4 s before the last
    wait_until(lambda: sum(r.msg_id == In.REQ_PNL_SINGLE for r in sim.requests()) >= enough, 10, f"{asked} PnL asked")
    dropped = time.monotonic()
    sim.call(lambda gateway: gateway.drop_connections())
    reader.join(10)
    assert not reader.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], IBDisconnected), outcome
    assert time.monotonic() - dropped < 2.0  # not the 20-s bound, nor 15 paced cancels' worth of waiting
