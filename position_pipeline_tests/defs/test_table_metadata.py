"""What the UI shows of the lake's tables: the schemas before any run, and each append's row count, size and columns
(the project's own Delta type handler, not dagster-deltalake's failing stats)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue
from position_pipeline.definitions import defs
from position_pipeline.defs.partitions import hour_key, partition_range_tags
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread
from position_pipeline_tests.support.sync_runs import ASSETS, SYNC, sim_resources

STATS_ERROR = "error while computing table stats"


def _definition_metadata(name: str) -> dict[str, object]:
    return dict(defs.resolve_asset_graph().get(dg.AssetKey(name)).metadata)


@pytest.mark.parametrize(
    ("asset", "table", "schema", "nullable"),
    [
        ("position_updates", lake.POSITION_UPDATES_TABLE, lake.POSITION_UPDATES_SCHEMA, lake.POSITION_UPDATES_NULLABLE),
        ("position_queue", lake.QUEUE_TABLE, lake.QUEUE_SCHEMA, lake.QUEUE_NULLABLE),
    ],
)
def test_the_tables_schemas_are_in_their_definitions(asset: str, table: str, schema: object, nullable: object) -> None:
    metadata = _definition_metadata(asset)
    assert metadata["dagster/table_name"] == f"positions.{table}"
    columns = metadata["dagster/column_schema"].schema.columns  # type: ignore[attr-defined]
    assert [c.name for c in columns] == list(schema)  # type: ignore[call-overload]
    assert {c.name for c in columns if c.constraints.nullable} == set(nullable)  # type: ignore[call-overload]


def run_sync(root: str, sim: GatewayThread, instance: dg.DagsterInstance, *, hours: int) -> dg.ExecuteInJobResult:
    """One sync run over the current hour (hours=1) or the last `hours` hour partitions."""
    now = datetime.now(UTC)
    if hours == 1:
        partition = {"partition_key": hour_key(now)}
    else:
        partition = {"tags": partition_range_tags(hour_key(now - timedelta(hours=hours - 1)), hour_key(now))}
    return dg.materialize(
        ASSETS, selection=SYNC, resources=sim_resources(root, sim), instance=instance, raise_on_error=False, **partition
    )


def enqueue_held(root: str, state: GatewayState, count: int) -> list[str]:
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    held = list(state.positions())[:count]
    return queue.insert_many(
        [{"conid": h.contract.conid, "symbol": h.contract.symbol, "account": h.account} for h in held]
    )


def test_a_sync_runs_materialization_has_row_count_size_and_columns_and_no_stats_error(
    root: str,
    sim: GatewayThread,
    sim_state: GatewayState,
    instance: dg.DagsterInstance,
    caplog: pytest.LogCaptureFixture,
) -> None:
    enqueue_held(root, sim_state, 12)
    with caplog.at_level(logging.DEBUG):
        first = run_sync(root, sim, instance, hours=1)
        enqueue_held(root, sim_state, 5)
        second = run_sync(root, sim, instance, hours=1)
    assert first.success and second.success

    table = DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE))
    rows = table.to_pyarrow_table().num_rows
    metadata = second.asset_materializations_for_node("position_updates")[0].metadata
    assert metadata["dagster/row_count"].value == rows == 17
    assert metadata["dagster/partition_row_count"].value == 17  # both runs wrote the current hour's partition
    assert metadata["rows_appended"].value == 5
    assert metadata["dagster/size_bytes"].value == pl.DataFrame(table.get_add_actions(flatten=True))["size_bytes"].sum()
    columns = metadata["dagster/column_schema"].value.columns  # type: ignore[attr-defined]
    assert [c.name for c in columns] == list(lake.POSITION_UPDATES_SCHEMA)
    assert not any(c.constraints.nullable for c in columns if c.name in {"request_id", "account", "queued_at"})

    logs = [record.getMessage() for record in caplog.records]
    for result in (first, second):
        logs += [e.message or "" for e in instance.all_logs(result.run_id)]
    assert not [line for line in logs if STATS_ERROR in line]


def test_a_run_of_many_partitions_has_no_partition_row_count(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance
) -> None:
    enqueue_held(root, sim_state, 3)
    result = run_sync(root, sim, instance, hours=2)
    assert result.success
    metadata = result.asset_materializations_for_node("position_updates")[0].metadata
    assert metadata["dagster/row_count"].value == 3
    assert "dagster/partition_row_count" not in metadata
