"""A sync run on a desk where one account cannot be read: that account's items are given back (no attempt counted),
the other accounts' rows are written in the same run, and the run's metadata lists each account's outcome."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import dagster as dg
import polars as pl
import pytest
from ib_async import IB

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread
from position_pipeline_tests.support.ib_reads import held_only_by, holders_of
from position_pipeline_tests.support.sync_runs import run_sync, updates

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def slot_held(sim: GatewayThread, sim_state: GatewayState) -> Iterator[str]:
    """A trading bot's ib_async client holds the account-updates slot for the first account throughout."""
    account = sim_state.accounts[0]
    ready, stop = threading.Event(), threading.Event()

    async def hold() -> None:
        bot = IB()
        await bot.connectAsync(sim.host, sim.port, clientId=1, readonly=True, timeout=5)
        try:
            await asyncio.wait_for(bot.reqAccountUpdatesAsync(account), 5)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
        finally:
            bot.disconnect()

    thread = threading.Thread(target=lambda: asyncio.run(asyncio.wait_for(hold(), 50)), daemon=True)
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
