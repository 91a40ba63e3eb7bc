"""A sync run on a desk where one account cannot be read: that account's items are given back (no attempt counted),
the other accounts' rows are written in the same run, and the run's metadata lists each account's outcome."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dagster as dg
import polars as pl
import pytest

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread
from position_pipeline_tests.support.ib_clients import holding_account_updates
from position_pipeline_tests.support.ib_reads import desk_items, held_only_by, holders_of
from position_pipeline_tests.support.sync_runs import run_sync, updates
from position_pipeline_tests.support.waiting import run_bounded, wait_until_async

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def slot_held(sim: GatewayThread, sim_state: GatewayState) -> Iterator[str]:
    """A trading bot's ib_async client holds the account-updates slot for the first account throughout."""
    account = sim_state.accounts[0]
    ready, stop = threading.Event(), threading.Event()

    async def hold() -> None:  # on a thread of its own: the run under test is synchronous
        async with holding_account_updates(sim, account, client_id=1):
            ready.set()
            await wait_until_async(stop.is_set, 50, "the test's end")

    thread = threading.Thread(target=lambda: run_bounded(hold(), 50), daemon=True)
    thread.start()
    assert ready.wait(10), "the bot did not subscribe"
    yield account
    stop.set()
    thread.join(10)


def test_one_unreadable_account_costs_only_its_items(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance, slot_held: str
) -> None:
    first, second, third = sim_state.accounts
    holders = holders_of(sim_state)
    in_first = sorted(held_only_by(sim_state, first))[:3]
    in_second = sorted(held_only_by(sim_state, second))[:3]
    shared = next(c for c, accounts in sorted(holders.items()) if {first, second} <= accounts)
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ok_ids = queue.insert_many([(c, "S") for c in in_first])
    back_ids = queue.insert_many([(c, "S") for c in in_second]) + queue.insert_many([(shared, "S")])
    pinned_ok = queue.insert_many([{"conid": shared, "symbol": "S", "account": first}])

    result = run_sync(root, sim, instance)

    assert result.success
    rows = updates(root)
    assert set(rows.select("request_id", "account").iter_rows()) == {(i, first) for i in ok_ids + pinned_ok}
    items = queue.read()
    assert set(items.filter(pl.col("request_id").is_in(ok_ids + pinned_ok))["status"]) == {QueueStatus.SUCCESS}
    given_back = items.filter(pl.col("request_id").is_in(back_ids))
    assert set(given_back["status"]) == {QueueStatus.PENDING}  # back on the queue, not FAILED
    assert set(given_back["attempts"]) == {0} and given_back["claimed_by"].null_count() == len(back_ids)
    snapshot = result.asset_materializations_for_node("ib_snapshot")[0].metadata
    assert snapshot["given_back"].value == len(back_ids)
    table = snapshot["accounts_read"].value
    assert f"| {first} | read |" in table and f"| {second} | IB at" in table and "2101" in table  # type: ignore[operator]
    assert third not in table  # type: ignore[operator]
    warnings = [
        e.message
        for e in instance.all_logs(result.run_id)
        if f"account {second} not read, its items given back" in e.message
    ]
    assert len(warnings) == 1


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(lambda second: {"suppress_download_end_for": {second}}, id="no-download-end"),
        pytest.param(lambda second: {"unsubscribe_mid_download": {second: 2}}, id="2100-twice"),
    ],
)
def test_an_ib_side_fault_of_one_account_gives_back_its_items_and_marks_nothing_failed(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance, fault: object
) -> None:
    first, second, _ = sim_state.accounts
    sim.set_faults(**fault(second))  # type: ignore[operator]
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids = desk_items(queue, sim_state)

    result = run_sync(root, sim, instance)

    assert result.success
    assert set(updates(root).select("request_id", "account").iter_rows()) == {(i, first) for i in ids["first"]}
    items = queue.read()
    assert set(items.filter(pl.col("request_id").is_in(ids["first"]))["status"]) == {QueueStatus.SUCCESS}
    back = items.filter(pl.col("request_id").is_in(ids["second"] + ids["shared"]))
    assert set(back["status"]) == {QueueStatus.PENDING} and set(back["attempts"]) == {0}
    metadata = result.asset_materializations_for_node("ib_snapshot")[0].metadata
    assert metadata["given_back"].value == 4
    assert metadata["ib_read_seconds"].value < 2 + 3  # the account's 2-s bound, not more  # type: ignore[operator]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"account_updates_held_by": 77}, id="slot-held-outside"),
        pytest.param({"garbage_after_handshake": True}, id="garbage-server"),
    ],
)
def test_an_ib_side_fault_of_the_whole_read_gives_the_batch_back(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance, fault: dict[str, object]
) -> None:
    sim.set_faults(**fault)
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids = [i for group in desk_items(queue, sim_state).values() for i in group]

    result = run_sync(root, sim, instance)

    assert not result.success
    items = queue.read()
    assert set(items["status"]) == {QueueStatus.PENDING} and set(items["attempts"]) == {0} and items.height == len(ids)
    assert lake.open_existing(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)) is None or updates(root).is_empty()


def test_without_reqpositions_items_resolve_from_the_downloads(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance
) -> None:
    first, second, _ = sim_state.accounts
    sim.set_faults(positions_unavailable=True)
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids = desk_items(queue, sim_state)
    [gone] = queue.insert_many([(999_999_999, "GONE")])

    result = run_sync(root, sim, instance)

    assert result.success
    rows = updates(root)
    shared_conid = rows.filter(pl.col("request_id") == ids["shared"][0])["conid"][0]
    assert set(rows.select("request_id", "account").iter_rows()) == (
        {(i, first) for i in ids["first"]}
        | {(i, second) for i in ids["second"]}
        | {(ids["shared"][0], a) for a in holders_of(sim_state)[shared_conid]}
    )
    items = queue.read()
    assert items.filter(pl.col("request_id") == gone)["status"].to_list() == [QueueStatus.FAILED]
    assert set(items.filter(pl.col("request_id") != gone)["status"]) == {QueueStatus.SUCCESS}
