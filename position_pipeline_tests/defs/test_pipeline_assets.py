"""The asset graph materialized for real: a temp lake, a real DagsterInstance, the real ib_async client against the
simulated gateway. Checks values, write-back, exactly-once after a crash, and what the UI gets as metadata."""

from __future__ import annotations

import logging

import dagster as dg
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.core.sync import position_update_rows, snapshot_results
from position_pipeline.definitions import defs
from position_pipeline.defs.resources import IBResource
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread
from position_pipeline_tests.support.ib_reads import holders_of
from position_pipeline_tests.support.position_rows import position_update_row
from position_pipeline_tests.support.sync_runs import run_sync, updates

pytestmark = pytest.mark.timeout(120)


def enqueue_held(queue: PositionQueue, state: GatewayState, count: int) -> list[str]:
    holdings = list(state.positions())[:count]
    return queue.insert_many(
        [{"conid": h.contract.conid, "symbol": h.contract.symbol, "account": h.account} for h in holdings]
    )


def test_definitions_load_and_resolve() -> None:
    assert defs.resolve_job_def("position_sync") is not None
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"position_queue", "queued_positions", "ib_snapshot", "position_updates"}
    assert defs.resolve_sensor_def("position_sync_sensor").default_status == dg.DefaultSensorStatus.RUNNING


def test_a_batch_is_written_once_with_the_simulators_values(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance
) -> None:
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids = enqueue_held(queue, sim_state, 40)
    unknown = queue.insert(99_999_999, "NOPE")

    result = run_sync(root, sim, instance)
    assert result.success

    rows = updates(root)
    assert sorted(rows["request_id"].to_list()) == sorted(ids)
    for row in rows.iter_rows(named=True):
        holding = sim_state.holding(row["account"], row["conid"])
        assert holding is not None
        value = sim_state.valuation(holding)
        c = holding.contract
        assert (row["position"], row["average_cost"]) == (holding.quantity, holding.average_cost)
        assert (row["market_price"], row["market_value"]) == (value.market_price, value.market_value)
        assert (row["unrealized_pnl"], row["realized_pnl"]) == (value.unrealized_pnl, value.realized_pnl)
        assert row["sec_type"] == c.sec_type and row["symbol"] == c.symbol
        if c.sec_type == "STK":
            assert (row["right"], row["strike"], row["expiry"]) == (None, None, None)
        if c.sec_type == "OPT":
            assert (row["right"], row["strike"], row["expiry"], row["multiplier"]) == (
                c.right,
                c.strike,
                c.expiry,
                100.0,
            )
        assert row["snapshot_at"].tzinfo is not None and row["queued_at"].tzinfo is not None
        assert row["run_id"] == result.run_id

    statuses = dict(queue.read().select("request_id", "status").iter_rows())
    assert {statuses[i] for i in ids} == {QueueStatus.SUCCESS}
    assert statuses[unknown] == QueueStatus.FAILED
    failed = queue.read().filter(pl.col("request_id") == unknown).row(0, named=True)
    assert "not held" in failed["error_message"] and failed["attempts"] == 1

    materialization = result.asset_materializations_for_node("position_updates")[0]
    metadata = materialization.metadata
    assert metadata["claimed"].value == 41
    assert metadata["succeeded"].value == 40 and metadata["failed"].value == 1
    assert metadata["table_version"].value == DeltaTable(lake.table_uri(root, "position_updates")).version()
    assert "batch_seconds" in metadata and "preview" in metadata
    writeback = [
        e.event_specific_data.materialization  # type: ignore[union-attr]
        for e in result.all_events
        if e.is_step_materialization and e.asset_key == dg.AssetKey("position_queue")
    ]
    assert writeback[0].metadata["marked_success"].value == 40
    assert writeback[0].metadata["marked_failed"].value == 1

    requests = sim.requests()
    assert not any(r.is_order or r.is_market_data for r in requests)


@pytest.mark.system  # over 2 s: too slow for the fast tier
def test_one_commit_per_batch_and_partitioned_by_date(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance
) -> None:
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    enqueue_held(queue, sim_state, 30)
    assert run_sync(root, sim, instance, batch_size=10).success
    assert run_sync(root, sim, instance, batch_size=10).success
    table = DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE))
    writes = [h for h in table.history() if h["operation"] == "WRITE"]
    assert len(writes) == 2  # one append per batch, never one per item
    assert table.metadata().partition_columns == ["snapshot_date"]
    assert updates(root).height == 20


def test_gateway_down_fails_the_run_with_what_to_do_and_loses_nothing(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance
) -> None:
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids = enqueue_held(queue, sim_state, 5)
    sim.call(lambda gw: gw.go_down(30))
    result = run_sync(root, sim, instance)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert f"127.0.0.1:{sim.port}" in message and "refused" in message
    statuses = queue.read().filter(pl.col("request_id").is_in(ids))
    assert set(statuses["status"].to_list()) == {QueueStatus.PENDING}  # released, not lost, not failed
    assert set(statuses["attempts"].to_list()) == {0}


def test_a_crash_after_the_append_never_writes_a_second_row(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance
) -> None:
    """Simulates a worker killed between the IO manager's append and the write-back, then the retry."""
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids = enqueue_held(queue, sim_state, 6)
    first = queue.claim(2, 50, claimed_by="dead-run")
    resource = IBResource(port=sim.port)
    snapshot = resource.read_snapshot(first["conid"].to_list(), "dead-run")
    rows = position_update_rows(snapshot_results(first, snapshot), "dead-run")
    write_deltalake(lake.ensure_position_updates_table(root), rows.to_arrow(), mode="append")
    assert queue.release_runs(["dead-run"]) == 6  # what the sensor does once Dagster reports the run finished

    result = run_sync(root, sim, instance)
    assert result.success
    table = updates(root)
    assert table.height == 6 and sorted(table["request_id"].to_list()) == sorted(ids)
    assert set(table["run_id"].to_list()) == {"dead-run"}
    assert set(queue.read()["status"].to_list()) == {QueueStatus.SUCCESS}


def test_an_empty_queue_makes_an_empty_run_without_touching_ib(
    root: str, sim: GatewayThread, instance: dg.DagsterInstance
) -> None:
    result = run_sync(root, sim, instance)
    assert result.success
    assert not [r for r in sim.requests() if r.name == "START_API"]


def test_a_position_closed_today_is_a_row_with_quantity_zero(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance
) -> None:
    holding = next(h for h in sim_state.positions() if h.contract.sec_type == "STK")
    sim.call(lambda gw: gw.close_position(holding.account, holding.contract.conid))
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    request_id = queue.insert(holding.contract.conid, holding.contract.symbol, account=holding.account)
    assert run_sync(root, sim, instance).success
    row = updates(root).row(0, named=True)
    assert (row["request_id"], row["position"], row["market_value"]) == (request_id, 0.0, 0.0)


def test_a_run_that_lost_its_claims_writes_nothing(root: str) -> None:
    """What position_updates checks before its append: the claim is still this run's."""
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids = queue.insert_many([(265598, "AAPL"), (101000, "MSFT")])
    queue.claim(None, 10, claimed_by="run-a")
    assert queue.held_by(ids, "run-a") == set(ids)
    queue.release_runs(["run-a"])  # the sensor, after Dagster reported run-a finished
    queue.claim(None, 10, claimed_by="run-b")
    assert queue.held_by(ids, "run-a") == set()
    assert queue.held_by(ids, "run-b") == set(ids)


def test_an_empty_batch_writes_no_commit(root: str, sim: GatewayThread, instance: dg.DagsterInstance) -> None:
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    enqueue_held(queue, sim.call(lambda gw: gw.state), 3)
    assert run_sync(root, sim, instance).success
    version = DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).version()
    result = run_sync(root, sim, instance)
    assert result.success
    assert DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).version() == version
    metadata = result.asset_materializations_for_node("position_updates")[0].metadata
    assert metadata["rows_written"].value == 0 and metadata["table_version"].value == version


def test_a_batch_claimed_longer_ago_than_the_write_fence_is_given_back_not_written(
    root: str, sim: GatewayThread, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that stalled past its fence may have lost its items to another run: it must not append them."""
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids = enqueue_held(queue, sim.call(lambda gw: gw.state), 3)
    monkeypatch.setattr("position_pipeline.core.write_plan.WRITE_FENCE_SECONDS", -1)  # every claim is already too old
    result = run_sync(root, sim, instance)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "write fence" in str(failure.step_failure_data.error)  # type: ignore[union-attr]
    assert updates(root).is_empty()
    assert set(queue.read().filter(pl.col("request_id").is_in(ids))["status"].to_list()) == {"PENDING"}
    assert queue.claims_by_run() == {}


def test_items_without_an_account_get_a_row_for_every_holding_account_in_one_commit(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance
) -> None:
    holders = holders_of(sim_state)
    shared = sorted(c for c, accounts in holders.items() if len(accounts) >= 2)[:6]
    single = sorted(c for c, accounts in holders.items() if len(accounts) == 1)[:4]
    assert len(shared) == 6 and len(single) == 4
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids = queue.insert_many([(c, "S") for c in shared + single])
    pinned_to = sorted(holders[shared[0]])[-1]
    [pinned] = queue.insert_many([{"conid": shared[0], "symbol": "S", "account": pinned_to}])

    result = run_sync(root, sim, instance)

    assert result.success
    table = updates(root)
    expected = {(rid, a) for rid, c in zip(ids, shared + single, strict=True) for a in holders[c]}
    expected.add((pinned, pinned_to))  # a pinned item covers its account only
    ids.append(pinned)
    assert set(table.select("request_id", "account").iter_rows()) == expected
    assert table.height == len(expected) > len(ids)
    assert DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).version() == 1  # create + one append
    assert set(queue.read()["status"].to_list()) == {QueueStatus.SUCCESS}
    for row in table.iter_rows(named=True):
        holding = sim_state.holding(row["account"], row["conid"])
        assert holding is not None and row["position"] == holding.quantity
        assert row["base_currency"] == sim_state.base_currency(row["account"])
        assert row["fx_rate"] == sim_state.exchange_rate(row["account"], row["currency"])
        assert row["market_value_base"] == pytest.approx(row["market_value"] * row["fx_rate"])
        assert row["values_as_of"] <= row["snapshot_at"]
    metadata = result.asset_materializations_for_node("ib_snapshot")[0].metadata
    assert metadata["rows"].value == len(expected) and metadata["items"].value == len(ids)


def test_a_crash_after_the_append_of_a_multi_account_item_never_writes_another_row(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance
) -> None:
    """Killed between the append and the write-back, then re-claimed: the item's rows are all there already."""
    holders = holders_of(sim_state)
    conid = max(holders, key=lambda c: (len(holders[c]), -c))
    assert len(holders[conid]) == 3
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    [request_id] = queue.insert_many([(conid, "S")])
    first = queue.claim(2, 50, claimed_by="dead-run")
    snapshot = IBResource(port=sim.port).read_snapshot(first["conid"].to_list(), "dead-run")
    rows = position_update_rows(snapshot_results(first, snapshot), "dead-run")
    assert rows.height == 3
    write_deltalake(lake.ensure_position_updates_table(root), rows.to_arrow(), mode="append")
    assert queue.release_runs(["dead-run"]) == 1

    result = run_sync(root, sim, instance)

    assert result.success
    table = updates(root)
    assert sorted(table.select("request_id", "account").iter_rows()) == [
        (request_id, a) for a in sorted(holders[conid])
    ]
    assert set(table["run_id"].to_list()) == {"dead-run"}
    assert queue.read()["status"].to_list() == [QueueStatus.SUCCESS]


def test_a_fill_before_the_download_is_stored_with_the_downloads_quantity_and_logged(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance
) -> None:
    holding = next(h for h in sim_state.positions() if h.contract.sec_type == "STK" and h.quantity)
    account, conid, before = holding.account, holding.contract.conid, holding.quantity
    sim.set_faults(fills_before_download={account: [(conid, before + 40)]})
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    [request_id] = queue.insert_many([{"conid": conid, "symbol": "S", "account": account}])

    result = run_sync(root, sim, instance)

    assert result.success
    row = updates(root).row(0, named=True)
    told = sim_state.valuation(sim_state.holding(account, conid))  # type: ignore[arg-type]
    assert (row["request_id"], row["position"], row["market_value"]) == (request_id, before + 40, told.market_value)
    metadata = result.asset_materializations_for_node("ib_snapshot")[0].metadata
    assert metadata["position_moved"].value == 1
    warnings = [
        e.message
        for e in instance.all_logs(result.run_id)
        if e.level == logging.WARNING and "between reqPositions and the values' message" in e.message
    ]
    assert len(warnings) == 1 and f"{account} conid {conid} " in warnings[0] and f"said {before:g}" in warnings[0]


def test_a_sync_run_on_a_lake_from_before_the_desk_columns_just_works(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance
) -> None:
    """What an existing lake needs: nothing. The run adds the columns (null in old rows) and appends through the
    IO manager."""
    uri = lake.table_uri(root, lake.POSITION_UPDATES_TABLE)
    old_names = [n for n in lake.POSITION_UPDATES_SCHEMA.names() if n not in lake.DESK_VALUES]
    old_schema = pa.schema([lake.POSITION_UPDATES_ARROW_SCHEMA.field(n) for n in old_names])
    DeltaTable.create(uri, old_schema, partition_by=[lake.POSITION_UPDATES_PARTITION])
    old = pl.DataFrame([position_update_row(request_id="old")]).select(old_names)
    write_deltalake(uri, old.to_arrow().cast(old_schema), mode="append")
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids = enqueue_held(queue, sim_state, 4)

    result = run_sync(root, sim, instance)

    assert result.success
    table = updates(root).sort("request_id")
    assert set(table["request_id"].to_list()) == {"old", *ids}
    assert table.filter(pl.col("request_id") == "old")["values_as_of"].to_list() == [None]
    assert table.filter(pl.col("request_id") != "old")["values_as_of"].null_count() == 0
    assert set(queue.read()["status"].to_list()) == {QueueStatus.SUCCESS}
