"""The pnl mode's rates and its narrowing to pinned accounts, with the real ib_async client against the simulated
gateway: the base currency and ExchangeRates from one account summary, a reqAccountUpdatesMulti per account when
the summary is refused, a currency without a rate left null, and contracts whose items all name an account read in
those accounts only (in either values mode)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from position_pipeline.core import pnl_values
from position_pipeline.core.ib_reader import IBSnapshot, read_snapshot
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread
from position_pipeline.ib_gateway_sim.messages import In
from position_pipeline_tests.support.ib_reads import holders_of, pnl_ended, settings_for, state_of
from position_pipeline_tests.support.sim_contracts import HSBC_HK

pytestmark = pytest.mark.timeout(30)

WINDOW = timedelta(seconds=1.05)  # a 1-s IB_REQUEST_TIMEOUT, with room for the loopback's delivery


def test_a_refused_account_summary_costs_one_request_per_account_and_the_same_rates(sim: GatewayThread) -> None:
    state = state_of(sim)
    sim.set_faults(account_summary_refused=True)
    conids = {h.contract.conid for h in state.positions()}

    snapshot = read_snapshot(settings_for(sim, values_from="pnl"), conids, "summary-refused")

    assert len(snapshot.positions) == len(list(state.positions())) and not snapshot.unavailable
    for p in snapshot.positions:
        assert p.base_currency == state.base_currency(p.account)
        assert p.fx_rate == state.exchange_rate(p.account, p.currency)
    pnl_ended(sim)
    records = sim.requests()
    multi = sorted(r.fields[3] for r in records if r.msg_id == In.REQ_ACCOUNT_UPDATES_MULTI)
    assert multi == sorted(state.accounts)  # one each, after the refusal
    assert sum(r.msg_id == In.REQ_ACCOUNT_SUMMARY for r in records) == 1


def test_a_currency_without_an_exchange_rate_has_no_rate_in_the_pnl_mode(sim: GatewayThread) -> None:
    state = state_of(sim)
    first = state.accounts[0]
    sim.call(lambda gw: gw.state.set_position(first, HSBC_HK, 400, market_price=62.5))

    snapshot = read_snapshot(settings_for(sim, values_from="pnl"), {HSBC_HK.conid}, "no-rate")

    (row,) = snapshot.positions
    assert (row.account, row.currency, row.position) == (first, "HKD", 400)
    assert row.market_value == pytest.approx(400 * 62.5)
    assert row.base_currency == state.base_currency(first) and row.fx_rate is None  # never a guessed 1.0


@pytest.mark.parametrize("values_from", ["pnl", "account_updates"])
def test_a_contract_whose_items_all_name_an_account_is_read_in_those_accounts_only(
    sim: GatewayThread, values_from: str
) -> None:
    state = state_of(sim)
    shared = sorted(c for c, holders in holders_of(state).items() if len(holders) >= 2)[:3]
    assert shared, "the simulated desk holds contracts in several accounts"
    chosen = {c: min(holders_of(state)[c]) for c in shared}
    elsewhere = sorted(holders_of(state)[shared[0]] - {chosen[shared[0]]})

    snapshot = read_snapshot(
        settings_for(sim, values_from=values_from), set(shared), "pinned", pinned={c: {a} for c, a in chosen.items()}
    )

    assert {(p.conid, p.account) for p in snapshot.positions} == set(chosen.items())
    records = sim.requests()
    if values_from == "pnl":
        asked = {(r.fields[2], int(r.fields[4])) for r in records if r.msg_id == In.REQ_PNL_SINGLE}
        assert asked == {(a, c) for c, a in chosen.items()}
    else:
        downloaded = {r.fields[3] for r in records if r.msg_id == In.REQ_ACCT_DATA and r.fields[2] == "1"}
        assert downloaded == set(chosen.values()) and not downloaded & set(elsewhere)

    unpinned = read_snapshot(settings_for(sim, values_from=values_from), {shared[0]}, "unpinned")
    assert {p.account for p in unpinned.positions} == holders_of(state)[shared[0]]  # every holder, as before


def _rates_match(snapshot: IBSnapshot, state: GatewayState) -> list[tuple[str, int, float | None]]:
    """The rows whose base currency or rate is not the gateway's."""
    return [
        (p.account, p.conid, p.fx_rate)
        for p in snapshot.positions
        if (p.base_currency, p.fx_rate) != (state.base_currency(p.account), state.exchange_rate(p.account, p.currency))
    ]


def test_an_account_summary_cut_short_is_not_taken_for_the_accounts_rates(
    sim: GatewayThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A summary that has not ended may hold an account's NetLiquidation without its currencies' ExchangeRates: the
    accounts are asked one by one rather than left without rates."""
    state = state_of(sim)
    monkeypatch.setattr(pnl_values, "SUMMARY_WAIT_S", 0.3)
    sim.set_faults(account_summary_cut_after=2)  # the first account's NetLiquidation and BASE Currency row
    conids = {h.contract.conid for h in state.positions()}

    snapshot = read_snapshot(settings_for(sim, values_from="pnl"), conids, "summary-cut")

    assert len(snapshot.positions) == len(list(state.positions())) and not snapshot.unavailable
    assert not _rates_match(snapshot, state)
    multi = {r.fields[3] for r in sim.requests() if r.msg_id == In.REQ_ACCOUNT_UPDATES_MULTI}
    assert multi == set(state.accounts)


@pytest.mark.parametrize("summary", ["refused", "stalled"])
def test_the_fallback_account_requests_fit_in_a_window_the_pnl_requests_fill(sim: GatewayThread, summary: str) -> None:
    """60 pairs at 40 a second fill a 1-s IB_REQUEST_TIMEOUT: the reqAccountUpdatesMulti that replace a refused or
    stalled summary are still sent within the window, in time for their rates, and the read keeps to its bound."""
    state = state_of(sim)
    sim.set_faults(**({"account_summary_refused": True} if summary == "refused" else {"account_summary_cut_after": 0}))
    conids = {h.contract.conid for h in state.positions()}

    started = time.monotonic()
    snapshot = read_snapshot(settings_for(sim, values_from="pnl", request_timeout=1.0), conids, f"full-{summary}")
    elapsed = time.monotonic() - started

    assert snapshot.positions and snapshot.unread  # the window was full: some pairs not asked for
    if summary == "refused":  # known at once: the accounts are asked while the PnL is (stalled: at the end)
        assert not _rates_match(snapshot, state)
    records = sim.requests()
    first = next(r.received_at for r in records if r.msg_id == In.REQ_ACCOUNT_SUMMARY)
    late = [(r.name, (r.received_at - first).total_seconds()) for r in records if r.received_at - first > WINDOW]
    assert not late, late  # nothing sent after the 1-s window
    assert {r.fields[3] for r in records if r.msg_id == In.REQ_ACCOUNT_UPDATES_MULTI} == set(state.accounts)
    assert elapsed < 2.0
