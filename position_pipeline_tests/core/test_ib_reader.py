"""`ib_reader.read_snapshot` with the real ib_async client against the simulated gateway: values equal to the
simulator's state, exactly the requests a read-only poller should send, client ids derived from the run id, and
every fault surfacing as an `IBError` subclass whose message names the gateway, the client id and what IB said,
with the connection closed afterwards."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from datetime import UTC, datetime

import pytest
from ib_async import IB

from position_pipeline.core.ib_reader import (
    ClientIdInUse,
    GatewayUnreachable,
    HeldPosition,
    IBConfigError,
    IBDisconnected,
    IBError,
    IBSettings,
    IBSnapshot,
    IBTimeout,
    client_id_for,
    read_snapshot,
)
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread
from position_pipeline.ib_gateway_sim.hub import RequestRecord
from position_pipeline_tests.support.waiting import run_bounded, wait_until

pytestmark = pytest.mark.timeout(30)

NOT_HELD = 999_999_999  # no account holds this conid
# What the gateway sends from startApi until ib_async's connect-time reqPositions: the handshake reply,
# MANAGED_ACCTS, NEXT_VALID_ID and three farm notices.
MESSAGES_BEFORE_POSITIONS = 6


# --- helpers ----------------------------------------------------------------------------------------------------


def settings_for(sim: GatewayThread, **changes: object) -> IBSettings:
    values: dict[str, object] = {"host": sim.host, "port": sim.port, "connect_timeout": 5.0, "request_timeout": 5.0}
    values.update(changes)
    return IBSettings(**values)  # type: ignore[arg-type]


def state_of(sim: GatewayThread) -> GatewayState:
    return sim.call(lambda gw: gw.state)


def conids_by_account(state: GatewayState) -> dict[str, set[int]]:
    held: dict[str, set[int]] = {account: set() for account in state.accounts}
    for holding in state.positions():
        held[holding.account].add(holding.contract.conid)
    return held


def held_only_by(state: GatewayState, account: str) -> set[int]:
    held = conids_by_account(state)
    others = set().union(*(conids for name, conids in held.items() if name != account))
    return held[account] - others


def assert_no_client_left(sim: GatewayThread, timeout: float = 5.0) -> None:
    wait_until(lambda: not sim.call(lambda gw: gw.connected_clients), timeout, "no connected client on the gateway")


def requests_of(sim: GatewayThread, client_id: int) -> list[RequestRecord]:
    return [r for r in sim.requests() if r.client_id == client_id]


def expect_error(kind: type[IBError], settings: IBSettings, conids: set[int], seed: str) -> tuple[IBError, float]:
    started = time.monotonic()
    with pytest.raises(kind) as caught:
        read_snapshot(settings, conids, seed)
    return caught.value, time.monotonic() - started


def assert_matches_state(position: HeldPosition, state: GatewayState) -> None:
    holding = state.holding(position.account, position.conid)
    assert holding is not None, f"{position.account}/{position.conid} is not in the simulator's state"
    c, value = holding.contract, state.valuation(holding)
    got = (
        position.symbol, position.sec_type, position.expiry, position.strike, position.right, position.multiplier,
        position.currency, position.local_symbol, position.trading_class, position.exchange,
        position.position, position.average_cost,
        position.market_price, position.market_value, position.unrealized_pnl, position.realized_pnl,
    )  # fmt: skip
    expected = (
        c.symbol, c.sec_type, c.expiry, c.strike, c.right, c.multiplier,
        c.currency, c.local_symbol, c.trading_class, c.exchange,
        holding.quantity, holding.average_cost,
        value.market_price, value.market_value, value.unrealized_pnl, value.realized_pnl,
    )  # fmt: skip
    assert got == expected, f"{position.account}/{position.conid}"


def hh_mm_between(before: datetime, after: datetime) -> set[str]:
    return {before.strftime("%H:%M"), after.strftime("%H:%M")}


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
        assert position.account_update_time in hh_mm_between(before, after)

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


# --- faults -----------------------------------------------------------------------------------------------------


def test_gateway_down_is_unreachable(sim: GatewayThread) -> None:
    settings = settings_for(sim, connect_timeout=2.0)
    sim.call(lambda gw: gw.go_down(3))
    error, elapsed = expect_error(GatewayUnreachable, settings, {NOT_HELD}, "down")
    assert settings.where in str(error)
    assert str(settings.port) in str(error)
    assert elapsed < 2.0
    assert not sim.call(lambda gw: gw.connected_clients)


@pytest.mark.tables  # opens a socket
def test_a_closed_port_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = IBSettings(host="127.0.0.1", port=port, connect_timeout=2.0, request_timeout=1.0)
    error, elapsed = expect_error(GatewayUnreachable, settings, {1}, "closed")
    assert f"127.0.0.1:{port}" in str(error)
    assert elapsed < 2.0


def test_position_end_never_sent_is_a_timeout_naming_reqpositions(sim: GatewayThread) -> None:
    settings = settings_for(sim, connect_timeout=1.0, request_timeout=1.0)
    sim.set_faults(suppress_position_end=True)
    error, elapsed = expect_error(IBTimeout, settings, {NOT_HELD}, "no-end")
    text = str(error)
    assert "reqPositions" in text
    assert f"client id {client_id_for('no-end', settings)}" in text
    assert settings.where in text
    assert elapsed < 5.0
    assert_no_client_left(sim)


def test_account_download_end_never_sent_is_a_timeout_naming_the_account(sim: GatewayThread) -> None:
    settings = settings_for(sim, request_timeout=1.0)
    state = state_of(sim)
    account = state.accounts[1]
    sim.set_faults(suppress_account_download_end=True)
    error, elapsed = expect_error(IBTimeout, settings, held_only_by(state, account), "no-download-end")
    text = str(error)
    assert f"reqAccountUpdates({account})" in text
    assert f"client id {client_id_for('no-download-end', settings)}" in text
    assert settings.where in text
    assert 1.0 <= elapsed < 4.0
    assert_no_client_left(sim)
    # the account was unsubscribed on the way out
    records = requests_of(sim, client_id_for("no-download-end", settings))
    assert [(r.fields[2], r.fields[3]) for r in records if r.name == "REQ_ACCT_DATA"] == [
        ("1", account),
        ("0", account),
    ]


@pytest.mark.system  # over 2 s: too slow for the fast tier
def test_replies_slower_than_the_request_timeout_are_a_timeout(sim: GatewayThread) -> None:
    settings = settings_for(sim, connect_timeout=5.0, request_timeout=0.5)
    state = state_of(sim)
    account = state.accounts[0]
    sim.set_faults(reply_delay=0.8)  # the connect (with its position read) fits in 5 s; the portfolio not in 0.5 s
    error, elapsed = expect_error(IBTimeout, settings, held_only_by(state, account), "slow")
    text = str(error)
    assert f"reqAccountUpdates({account})" in text
    assert "0.5 s" in text
    assert f"client id {client_id_for('slow', settings)}" in text
    assert settings.where in text
    assert elapsed < 10.0
    sim.set_faults(reply_delay=0.0)
    assert_no_client_left(sim)


def test_replies_slower_than_the_connect_timeout_are_a_timeout(sim: GatewayThread) -> None:
    settings = settings_for(sim, connect_timeout=0.5, request_timeout=0.5)
    sim.set_faults(reply_delay=1.0)
    error, elapsed = expect_error(IBTimeout, settings, {NOT_HELD}, "slow-handshake")
    text = str(error)
    assert settings.where in text
    assert f"client id {client_id_for('slow-handshake', settings)}" in text
    assert elapsed < 3.0
    sim.set_faults(reply_delay=0.0)
    assert_no_client_left(sim)


def test_a_drop_during_reqpositions_is_a_disconnect(sim: GatewayThread) -> None:
    state = state_of(sim)
    count = len(state.holdings)
    # half way through the one position stream (the one ib_async asks for at connect)
    sim.set_faults(drop_after_messages=MESSAGES_BEFORE_POSITIONS + count // 2)
    settings = settings_for(sim)
    error, elapsed = expect_error(IBDisconnected, settings, {h.contract.conid for h in state.positions()}, "drop")
    text = str(error)
    assert "reqPositions" in text
    assert f"client id {client_id_for('drop', settings)}" in text
    assert settings.where in text
    assert elapsed < 2.0
    assert_no_client_left(sim)


def test_a_drop_during_account_updates_is_a_disconnect(sim: GatewayThread) -> None:
    state = state_of(sim)
    count = len(state.holdings)
    account = state.accounts[0]
    # the position stream completes, then the drop comes inside the first account download
    sim.set_faults(drop_after_messages=MESSAGES_BEFORE_POSITIONS + (count + 1) + 5)
    settings = settings_for(sim)
    error, elapsed = expect_error(IBDisconnected, settings, held_only_by(state, account), "drop-account")
    text = str(error)
    assert f"reqAccountUpdates({account})" in text
    assert f"client id {client_id_for('drop-account', settings)}" in text
    assert settings.where in text
    assert elapsed < 2.0
    assert_no_client_left(sim)


def test_connectivity_lost_during_the_read_is_a_timeout_saying_what_ib_said(sim: GatewayThread) -> None:
    settings = settings_for(sim, connect_timeout=1.0, request_timeout=1.5)
    client_id = client_id_for("offline", settings)
    sim.call(lambda gw: gw.connectivity_lost())  # from now on data replies are withheld; startApi still works

    def lose_again_once_the_read_asks_for_positions() -> None:
        # the 1100 of the call above reached no one; say it again to the reader while its reqPositions waits
        wait_until(lambda: sum(r.name == "REQ_POSITIONS" for r in requests_of(sim, client_id)) >= 1, 8.0)
        time.sleep(0.1)
        sim.call(lambda gw: gw.connectivity_lost())

    notifier = threading.Thread(target=lose_again_once_the_read_asks_for_positions, daemon=True)
    notifier.start()
    error, elapsed = expect_error(IBTimeout, settings, {NOT_HELD}, "offline")
    notifier.join(5)
    text = str(error)
    assert "reqPositions" in text
    assert "1100" in text
    assert "Connectivity between IB and Trader Workstation has been lost" in text
    assert f"client id {client_id}" in text
    assert settings.where in text
    assert elapsed < 5.0
    assert_no_client_left(sim)


def test_account_updates_held_by_another_client_throughout_fail_with_2101_after_the_request_timeout(
    sim: GatewayThread,
) -> None:
    state = state_of(sim)
    held_account, read_account = state.accounts[0], state.accounts[1]
    settings = settings_for(sim, request_timeout=2.0)

    async def main() -> tuple[IBError, float, list[int]]:
        holder = IB()
        await holder.connectAsync(sim.host, sim.port, clientId=1, readonly=True, timeout=5)
        try:
            await asyncio.wait_for(holder.reqAccountUpdatesAsync(held_account), 5)
            started = time.monotonic()
            try:
                await asyncio.to_thread(read_snapshot, settings, held_only_by(state, read_account), "refused")
            except IBError as exc:
                clients = await asyncio.to_thread(sim.call, lambda gw: gw.connected_clients)
                return exc, time.monotonic() - started, clients
            raise AssertionError("the read succeeded although another client holds a different account")
        finally:
            holder.disconnect()

    error, elapsed, clients_meanwhile = run_bounded(main(), 25)
    assert type(error) is IBError
    text = str(error)
    assert "2101" in text
    assert read_account in text
    assert settings.where in text
    assert "refused" in text and "times in 2 s" in text
    assert 1.0 < elapsed < 6.0, f"took {elapsed:.2f} s; 2101 is retried within the 2 s request timeout, then fails"
    refused = [r for r in sim.requests() if r.name == "REQ_ACCT_DATA" and r.fields[-2:] == ("1", read_account)]
    assert len(refused) >= 3  # it retried rather than giving up at the first refusal
    # the reader's connection is closed; only the holder was still there
    wait_until(lambda: sim.call(lambda gw: gw.connected_clients) in ([], [1]), 5.0)
    assert client_id_for("refused", settings) not in sim.call(lambda gw: gw.connected_clients)
    assert clients_meanwhile in ([1], [1, client_id_for("refused", settings)])
    assert_no_client_left(sim)


def test_a_read_refused_with_2101_succeeds_once_the_other_client_lets_go(sim: GatewayThread) -> None:
    """A backfill run next to a sensor run: the second reader waits for the first instead of failing."""
    state = state_of(sim)
    held_account, read_account = state.accounts[0], state.accounts[1]
    settings = settings_for(sim, request_timeout=10.0)

    async def main() -> tuple[IBSnapshot, float]:
        holder = IB()
        await holder.connectAsync(sim.host, sim.port, clientId=1, readonly=True, timeout=5)
        try:
            await asyncio.wait_for(holder.reqAccountUpdatesAsync(held_account), 5)
            started = time.monotonic()
            reading = asyncio.ensure_future(
                asyncio.to_thread(read_snapshot, settings, held_only_by(state, read_account), "waits")
            )
            await asyncio.sleep(1.0)
            holder.client.reqAccountUpdates(False, held_account)
            snapshot = await reading
            return snapshot, time.monotonic() - started
        finally:
            holder.disconnect()

    snapshot, elapsed = run_bounded(main(), 25)
    assert {p.account for p in snapshot.positions} == {read_account}
    assert len(snapshot.positions) == len(held_only_by(state, read_account))
    assert elapsed >= 1.0  # it had to wait for the holder
    assert_no_client_left(sim)


def test_the_same_account_held_by_another_client_is_shared(sim: GatewayThread) -> None:
    state = state_of(sim)
    account = state.accounts[2]
    wanted = held_only_by(state, account)
    settings = settings_for(sim, request_timeout=3.0)

    async def main() -> list[HeldPosition]:
        holder = IB()
        await holder.connectAsync(sim.host, sim.port, clientId=1, readonly=True, timeout=5)
        try:
            await asyncio.wait_for(holder.reqAccountUpdatesAsync(account), 5)
            snapshot = await asyncio.to_thread(read_snapshot, settings, wanted, "shared-account")
            # the holder's subscription survives the reader's unsubscribe
            assert await asyncio.to_thread(sim.call, lambda gw: gw.hub.account_updates) == account
            return snapshot.positions
        finally:
            holder.disconnect()

    positions = run_bounded(main(), 20)
    assert {p.conid for p in positions} == wanted
    for position in positions:
        assert_matches_state(position, state)
    assert_no_client_left(sim)


def test_after_a_fault_the_next_read_succeeds(sim: GatewayThread) -> None:
    state = state_of(sim)
    wanted = {h.contract.conid for h in list(state.positions())[:6]}
    settings = settings_for(sim, request_timeout=1.0)
    sim.set_faults(suppress_account_download_end=True)
    expect_error(IBTimeout, settings, wanted, "retry")
    sim.set_faults(suppress_account_download_end=False)
    snapshot = read_snapshot(settings, wanted, "retry")
    assert snapshot.client_id == client_id_for("retry", settings)  # the id was released by the failed read
    assert len(snapshot.positions) == len([h for h in state.positions() if h.contract.conid in wanted])
    for position in snapshot.positions:
        assert_matches_state(position, state)
    assert_no_client_left(sim)


# --- concurrency ------------------------------------------------------------------------------------------------


def test_two_concurrent_reads_of_the_same_account_both_succeed(sim: GatewayThread) -> None:
    state = state_of(sim)
    account = state.accounts[0]
    wanted = held_only_by(state, account)
    settings = settings_for(sim)
    for round_ in range(3):
        seeds = (f"left-{round_}", f"right-{round_}")
        start = threading.Barrier(2)
        results: dict[str, object] = {}

        def read(seed: str, start: threading.Barrier = start, results: dict[str, object] = results) -> None:
            start.wait(5)
            try:
                results[seed] = read_snapshot(settings, wanted, seed)
            except Exception as exc:  # reported by the assertion below
                results[seed] = exc

        threads = [threading.Thread(target=read, args=(seed,), daemon=True) for seed in seeds]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        snapshots = [results[seed] for seed in seeds]
        assert all(not isinstance(s, Exception) for s in snapshots), snapshots
        client_ids = {s.client_id for s in snapshots}  # type: ignore[attr-defined]
        assert len(client_ids) == 2
        for snapshot in snapshots:
            assert {p.conid for p in snapshot.positions} == wanted  # type: ignore[attr-defined]
            for position in snapshot.positions:  # type: ignore[attr-defined]
                assert_matches_state(position, state)
                assert position.market_value is not None
        assert_no_client_left(sim)
    assert sim.call(lambda gw: gw.hub.account_updates) is None


def test_a_drop_mid_position_stream_is_a_disconnect_naming_the_client_id(sim: GatewayThread) -> None:
    sim.set_faults(drop_mid_positions=True)
    settings = settings_for(sim)
    error, elapsed = expect_error(IBDisconnected, settings, {NOT_HELD}, "mid-stream")
    assert "reqPositions" in str(error) and f"client id {client_id_for('mid-stream', settings)}" in str(error)
    assert elapsed < 2.0
    assert_no_client_left(sim)
    assert read_snapshot(settings, {NOT_HELD}, "mid-stream").positions == []  # the fault was one stream only


def test_a_pacing_violation_is_a_timeout_that_reports_error_100(sim: GatewayThread) -> None:
    state = state_of(sim)
    sim.set_faults(pacing_limit=2)  # startApi and the connect-time reqPositions pass; the rest is refused
    settings = settings_for(sim, request_timeout=1.0)
    error, _ = expect_error(IBTimeout, settings, {h.contract.conid for h in state.positions()}, "paced")
    assert "100 Max rate of messages per second has been exceeded" in str(error)
    sim.set_faults(pacing_limit=50)
    assert_no_client_left(sim)


def test_notices_during_a_read_do_not_fail_it(sim: GatewayThread) -> None:
    """1100 holds the replies, 2110 is informational, 1102 delivers what was held: the read still completes."""
    state = state_of(sim)
    settings = settings_for(sim, connect_timeout=5.0)
    wanted = held_only_by(state, state.accounts[0])
    client_id = client_id_for("notices", settings)
    sim.call(lambda gw: gw.connectivity_lost())  # the connect-time position read will be held

    def interfere() -> None:
        wait_until(lambda: any(r.name == "REQ_POSITIONS" for r in requests_of(sim, client_id)), 8.0)
        sim.call(lambda gw: gw.connectivity_lost())  # now the reader is connected and hears it
        sim.call(lambda gw: gw.send_error(2110))
        time.sleep(0.3)
        sim.call(lambda gw: gw.connectivity_restored())

    helper = threading.Thread(target=interfere, daemon=True)
    helper.start()
    snapshot = read_snapshot(settings, wanted, "notices")
    helper.join(10)
    assert {p.conid for p in snapshot.positions} == wanted
    assert all(p.market_value is not None for p in snapshot.positions)
    codes = [code for _, code, _ in snapshot.notices]
    assert codes.index(1100) < codes.index(2110) < codes.index(1102)
    assert_no_client_left(sim)
