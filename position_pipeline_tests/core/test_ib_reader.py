"""`ib_reader.read_snapshot` with the real ib_async client against the simulated gateway: values equal to the
simulator's state, exactly the requests a read-only poller should send, and client ids derived from the run id (its
faults: test_ib_reader_faults.py)."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime

import pytest
from ib_async import IB

from position_pipeline.core.ib_reader import (
    ClientIdInUse,
    IBConfigError,
    IBSettings,
    client_id_for,
    read_snapshot,
)
from position_pipeline.ib_gateway_sim import GatewayThread
from position_pipeline_tests.support.ib_reads import (
    NOT_HELD,
    assert_matches_state,
    assert_no_client_left,
    conids_by_account,
    expect_error,
    held_only_by,
    requests_of,
    settings_for,
    state_of,
)
from position_pipeline_tests.support.waiting import run_bounded

pytestmark = pytest.mark.timeout(30)


# --- values -----------------------------------------------------------------------------------------------------


def test_values_equal_the_simulator_state_across_all_accounts(sim: GatewayThread) -> None:
    state = state_of(sim)
    # a few holdings of every account, covering every sec type, and one conid that nobody holds
    wanted: set[int] = {NOT_HELD}
    for account in state.accounts:
        wanted |= {h.contract.conid for h in list(state.positions(account))[:4]}
    for sec_type in ("STK", "OPT", "FUT", "CASH"):
        wanted.add(next(h.contract.conid for h in state.positions() if h.contract.sec_type == sec_type))

    before = datetime.now(UTC)
    snapshot = read_snapshot(settings_for(sim), wanted, "values")
    after = datetime.now(UTC)

    expected = {(h.account, h.contract.conid) for h in state.positions() if h.contract.conid in wanted}
    assert {(p.account, p.conid) for p in snapshot.positions} == expected
    assert len(snapshot.positions) == len(expected)
    assert {p.account for p in snapshot.positions} == set(state.accounts)
    assert {p.sec_type for p in snapshot.positions} == {"STK", "OPT", "FUT", "CASH"}
    assert NOT_HELD not in snapshot.by_conid()
    for position in snapshot.positions:
        assert_matches_state(position, state)
        assert position.account_update_time is not None
        assert re.fullmatch(r"\d{2}:\d{2}", position.account_update_time)
        # IB's HH:MM is the gateway's local time (New York here); values_as_of is its UTC moment, to the minute
        assert position.account_update_time == state.account_update_time(position.account)
        valued_at = state.valued_at(position.account)
        assert position.values_as_of == valued_at.replace(second=0, microsecond=0)
        assert position.base_currency == state.base_currency(position.account)
        assert position.fx_rate == state.exchange_rate(position.account, position.currency)

    assert snapshot.taken_at.tzinfo is not None and snapshot.taken_at.utcoffset().total_seconds() == 0
    assert before <= snapshot.taken_at <= after
    assert snapshot.client_id == client_id_for("values", settings_for(sim))
    assert snapshot.server_version == 178
    assert snapshot.managed_accounts == state.accounts
    assert_no_client_left(sim)


def test_conids_nobody_holds_are_simply_absent(sim: GatewayThread) -> None:
    snapshot = read_snapshot(settings_for(sim), {NOT_HELD, NOT_HELD - 1}, "absent")
    assert snapshot.positions == []
    assert snapshot.by_conid() == {}
    # nothing held the conids, so no account was subscribed
    assert not any(r.name == "REQ_ACCT_DATA" for r in requests_of(sim, snapshot.client_id))
    assert_no_client_left(sim)


def test_no_conids_reads_no_account_updates_and_cancels_the_positions_subscription(sim: GatewayThread) -> None:
    snapshot = read_snapshot(settings_for(sim), [], "empty")
    assert snapshot.positions == []
    assert snapshot.managed_accounts == state_of(sim).accounts
    assert_no_client_left(sim)  # the gateway has processed everything the client sent before closing
    names = [r.name for r in requests_of(sim, snapshot.client_id)]
    assert names == ["START_API", "REQ_POSITIONS", "CANCEL_POSITIONS"]  # ib_async's connect-time read, cancelled


def test_by_conid_groups_the_accounts_holding_a_contract(sim: GatewayThread) -> None:
    state = state_of(sim)
    held = conids_by_account(state)
    shared = next(iter(set.intersection(*held.values()) or (held[state.accounts[0]] & held[state.accounts[1]])))
    snapshot = read_snapshot(settings_for(sim), {shared}, "shared")
    holders = sorted(account for account, conids in held.items() if shared in conids)
    assert len(holders) >= 2
    assert sorted(p.account for p in snapshot.by_conid()[shared]) == holders


# --- accounts ---------------------------------------------------------------------------------------------------


def test_settings_accounts_restricts_the_accounts_read(sim: GatewayThread) -> None:
    state = state_of(sim)
    first, second, third = state.accounts
    every_conid = {h.contract.conid for h in state.positions()}
    settings = settings_for(sim, accounts=(first, third))
    snapshot = read_snapshot(settings, every_conid, "restricted")
    expected = {(h.account, h.contract.conid) for h in state.positions() if h.account in (first, third)}
    assert {(p.account, p.conid) for p in snapshot.positions} == expected
    for position in snapshot.positions:
        assert_matches_state(position, state)
    assert_no_client_left(sim)  # the gateway has processed everything the client sent before closing
    subscribed = [r.fields[3] for r in requests_of(sim, snapshot.client_id) if r.name == "REQ_ACCT_DATA"]
    assert second not in subscribed
    assert set(subscribed) == {first, third}


def test_an_account_the_gateway_does_not_manage_is_a_config_error(sim: GatewayThread) -> None:
    state = state_of(sim)
    settings = settings_for(sim, accounts=(state.accounts[0], "U9999999"))
    error, _ = expect_error(IBConfigError, settings, {h.contract.conid for h in state.positions()}, "unknown")
    text = str(error)
    assert "U9999999" in text
    assert settings.where in text
    for account in state.accounts:
        assert account in text
    # nothing was read
    client_id = client_id_for("unknown", settings)
    assert not any(r.name == "REQ_ACCT_DATA" for r in requests_of(sim, client_id))
    assert_no_client_left(sim)


# --- what is sent -----------------------------------------------------------------------------------------------


def test_only_accounts_holding_wanted_conids_get_account_updates_each_unsubscribed(sim: GatewayThread) -> None:
    state = state_of(sim)
    first, second, third = state.accounts
    wanted = set(list(held_only_by(state, first))[:3]) | set(list(held_only_by(state, third))[:3])
    snapshot = read_snapshot(settings_for(sim), wanted, "only-holders")
    assert {p.account for p in snapshot.positions} == {first, third}

    assert_no_client_left(sim)  # the last unsubscribe goes out just before the close: wait until it is recorded
    records = requests_of(sim, snapshot.client_id)
    account_requests = [(r.fields[2], r.fields[3]) for r in records if r.name == "REQ_ACCT_DATA"]
    # subscribe, unsubscribe, one account after the other; the account that holds none of them is never asked for
    assert account_requests == [("1", first), ("0", first), ("1", third), ("0", third)]
    assert second not in {account for _, account in account_requests}

    names = [r.name for r in records]
    assert names.count("REQ_POSITIONS") == 1  # the one ib_async sends at connect: no second read
    last_positions = names.index("REQ_POSITIONS")
    assert "CANCEL_POSITIONS" in names[last_positions + 1 :]
    assert names.index("CANCEL_POSITIONS") < names.index("REQ_ACCT_DATA")  # positions cancelled once read

    assert not any(r.is_order or r.is_market_data for r in sim.requests())
    assert_no_client_left(sim)
    assert sim.call(lambda gw: gw.hub.account_updates) is None  # no subscription left behind


def test_a_full_read_sends_no_order_and_no_market_data_request(sim: GatewayThread) -> None:
    state = state_of(sim)
    read_snapshot(settings_for(sim), {h.contract.conid for h in state.positions()}, "read-only")
    records = sim.requests()
    assert records
    assert not [r.name for r in records if r.is_order or r.is_market_data]
    allowed = {"START_API", "REQ_POSITIONS", "CANCEL_POSITIONS", "REQ_ACCT_DATA"}
    assert {r.name for r in records} <= allowed
    assert_no_client_left(sim)


# --- client ids -------------------------------------------------------------------------------------------------


def test_client_id_for_is_stable_in_range_and_moves_on_per_attempt() -> None:
    settings = IBSettings(client_id=300, client_id_span=50)
    seeds = [f"run-{i}" for i in range(40)]
    ids = [client_id_for(seed, settings) for seed in seeds]
    assert ids == [client_id_for(seed, settings) for seed in seeds]  # stable
    assert all(300 <= i < 350 for i in ids)
    assert len(set(ids)) >= 25  # different run ids usually get different client ids
    first = client_id_for("run-x", settings)
    attempts = [client_id_for("run-x", settings, attempt) for attempt in range(5)]
    assert attempts[0] == first
    assert len(set(attempts)) == 5
    assert all(300 <= i < 350 for i in attempts)
    assert client_id_for("run-x", IBSettings(client_id=7, client_id_span=1), 3) == 7


def test_two_seeds_read_with_their_own_client_ids(sim: GatewayThread) -> None:
    settings = settings_for(sim)
    seeds = ("run-a", "run-b")
    assert client_id_for(seeds[0], settings) != client_id_for(seeds[1], settings)
    conid = next(iter(conids_by_account(state_of(sim))[state_of(sim).accounts[0]]))
    for seed in seeds:
        snapshot = read_snapshot(settings, {conid}, seed)
        assert snapshot.client_id == client_id_for(seed, settings)
        assert requests_of(sim, snapshot.client_id)[0].name == "START_API"
    assert_no_client_left(sim)


def test_a_locked_client_id_moves_to_the_next_one_quickly(sim: GatewayThread) -> None:
    settings = settings_for(sim, connect_timeout=10.0)
    locked = client_id_for("locked", settings)
    sim.set_faults(locked_client_ids={locked})
    state = state_of(sim)
    wanted = {h.contract.conid for h in list(state.positions())[:5]}

    started = time.monotonic()
    snapshot = read_snapshot(settings, wanted, "locked")
    elapsed = time.monotonic() - started

    assert snapshot.client_id == client_id_for("locked", settings, 1) != locked
    assert elapsed < 2.0, f"took {elapsed:.2f} s; the 326 must be acted on at once, not after the connect timeout"
    assert len(snapshot.positions) == len([h for h in state.positions() if h.contract.conid in wanted])
    starts = [int(r.fields[2]) for r in sim.requests() if r.name == "START_API"]
    assert starts == [locked, snapshot.client_id]
    assert_no_client_left(sim)


def test_every_candidate_client_id_locked_is_client_id_in_use(sim: GatewayThread) -> None:
    settings = settings_for(sim, connect_timeout=10.0, client_id_attempts=4)
    candidates = [client_id_for("all-locked", settings, attempt) for attempt in range(4)]
    sim.set_faults(locked_client_ids=set(candidates))

    error, elapsed = expect_error(ClientIdInUse, settings, {NOT_HELD}, "all-locked")

    text = str(error)
    assert str(candidates) in text
    assert "326" in text
    assert settings.where in text
    assert elapsed < 3.0, f"took {elapsed:.2f} s"
    assert [int(r.fields[2]) for r in sim.requests() if r.name == "START_API"] == candidates
    assert_no_client_left(sim)


def test_a_client_id_held_by_a_live_connection_is_skipped(sim: GatewayThread) -> None:
    settings = settings_for(sim)
    taken = client_id_for("busy", settings)

    async def main() -> int:
        holder = IB()
        await holder.connectAsync(sim.host, sim.port, clientId=taken, readonly=True, timeout=5)
        try:
            snapshot = await asyncio.to_thread(read_snapshot, settings, {NOT_HELD}, "busy")
            return snapshot.client_id
        finally:
            holder.disconnect()

    assert run_bounded(main(), 20) == client_id_for("busy", settings, 1)
    assert_no_client_left(sim)
