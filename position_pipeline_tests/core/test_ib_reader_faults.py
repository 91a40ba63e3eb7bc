"""`ib_reader.read_snapshot` when the gateway misbehaves, with the real ib_async client against the simulator: every
fault surfaces as an `IBError` subclass whose message names the gateway, the client id and what IB said, the
connection is closed afterwards, and the next read succeeds."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from position_pipeline.core.ib_reader import (
    GatewayUnreachable,
    HeldPosition,
    IBDisconnected,
    IBError,
    IBSettings,
    IBSnapshot,
    IBTimeout,
    client_id_for,
    read_snapshot,
)
from position_pipeline.ib_gateway_sim import GatewayThread
from position_pipeline_tests.support.ib_clients import holding_account_updates
from position_pipeline_tests.support.ib_reads import (
    MESSAGES_BEFORE_POSITIONS,
    NOT_HELD,
    assert_matches_state,
    assert_no_client_left,
    expect_error,
    held_only_by,
    requests_of,
    settings_for,
    state_of,
)
from position_pipeline_tests.support.waiting import run_bounded, wait_until

pytestmark = pytest.mark.timeout(30)


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
        async with holding_account_updates(sim, held_account, client_id=1):
            started = time.monotonic()
            try:
                await asyncio.to_thread(read_snapshot, settings, held_only_by(state, read_account), "refused")
            except IBError as exc:
                clients = await asyncio.to_thread(sim.call, lambda gw: gw.connected_clients)
                return exc, time.monotonic() - started, clients
            raise AssertionError("the read succeeded although another client holds a different account")

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
        async with holding_account_updates(sim, held_account, client_id=1) as holder:
            started = time.monotonic()
            reading = asyncio.ensure_future(
                asyncio.to_thread(read_snapshot, settings, held_only_by(state, read_account), "waits")
            )
            await asyncio.sleep(1.0)
            holder.client.reqAccountUpdates(False, held_account)
            snapshot = await reading
            return snapshot, time.monotonic() - started

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
        async with holding_account_updates(sim, account, client_id=1):
            snapshot = await asyncio.to_thread(read_snapshot, settings, wanted, "shared-account")
            # the holder's subscription survives the reader's unsubscribe
            assert await asyncio.to_thread(sim.call, lambda gw: gw.hub.account_updates) == account
            return snapshot.positions

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
    # one account: its refused subscription is the whole read (with several, the next could pass once paced)
    error, _ = expect_error(IBTimeout, settings, held_only_by(state, state.accounts[0]), "paced")
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
