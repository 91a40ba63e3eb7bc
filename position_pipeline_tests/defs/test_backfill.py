"""Backfills by queued hour, in process: a range run claims exactly its hours' items, again adds nothing, and the
launch stores a single-run asset backfill in the instance. The daemon path is in test_end_to_end."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.defs.backfill import SYNC_ASSET_KEYS, launch_backfill, partition_range
from position_pipeline.defs.partitions import hour_key, partition_range_tags
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread
from position_pipeline_tests.support.sync_runs import ASSETS, SYNC, sim_resources

NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)


def run_range(
    root: str, sim: GatewayThread, instance: dg.DagsterInstance, first: datetime, last: datetime
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS,
        selection=SYNC,
        resources=sim_resources(root, sim),
        instance=instance,
        tags=partition_range_tags(hour_key(first), hour_key(last)),
    )


def enqueue_hours(queue: PositionQueue, state: GatewayState) -> dict[int, list[str]]:
    """15 held items in each of the hours 4, 3, 2 and 1 before NOW."""
    holdings = list(state.positions())
    ids: dict[int, list[str]] = {}
    for n, hours_ago in enumerate((4, 3, 2, 1)):
        chunk = holdings[n * 15 : n * 15 + 15]
        items = [{"conid": h.contract.conid, "symbol": h.contract.symbol, "account": h.account} for h in chunk]
        ids[hours_ago] = queue.insert_many(items, queued_at=NOW - timedelta(hours=hours_ago))
    return ids


@pytest.mark.system  # over 2 s: too slow for the fast tier
def test_a_range_run_claims_only_its_hours_and_running_it_again_adds_nothing(
    tmp_path: Path, sim: GatewayThread, instance: dg.DagsterInstance
) -> None:
    root = str(tmp_path / "lake")
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids = enqueue_hours(queue, sim.call(lambda gw: gw.state))

    result = run_range(root, sim, instance, NOW - timedelta(hours=3), NOW - timedelta(hours=2))
    claimed = result.asset_materializations_for_node("queued_positions")
    assert len(claimed) == 2  # one materialization per hour partition of the range, from one run
    rows = pl.from_arrow(DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).to_pyarrow_table())
    assert isinstance(rows, pl.DataFrame)
    assert sorted(rows["request_id"].to_list()) == sorted(ids[3] + ids[2])
    statuses = dict(queue.read().select("request_id", "status").iter_rows())
    assert {statuses[i] for i in ids[4] + ids[1]} == {QueueStatus.PENDING.value}  # outside the window: untouched
    assert (rows["snapshot_at"] > rows["queued_at"]).all()  # positions as of the run, and when each was queued

    version = DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).version()
    again = run_range(root, sim, instance, NOW - timedelta(hours=3), NOW - timedelta(hours=2))
    assert again.success
    assert DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).version() == version
    written_before = rows.height
    rows = pl.from_arrow(DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).to_pyarrow_table())
    assert isinstance(rows, pl.DataFrame) and rows.height == written_before

    # A later item of the same hour: the next run of that partition adds its row and keeps every earlier one.
    held = list(sim.call(lambda gw: gw.state).positions())[-1]
    late = queue.insert_many(
        [(held.contract.conid, held.contract.symbol, 2, held.account)], queued_at=NOW - timedelta(hours=3)
    )
    assert run_range(root, sim, instance, NOW - timedelta(hours=3), NOW - timedelta(hours=3)).success
    after = pl.from_arrow(DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).to_pyarrow_table())
    assert isinstance(after, pl.DataFrame)
    assert sorted(after["request_id"].to_list()) == sorted(ids[3] + ids[2] + late)


def test_launch_stores_one_asset_backfill_of_the_three_sync_assets(instance: dg.DagsterInstance) -> None:
    request = launch_backfill(instance, NOW - timedelta(hours=5), NOW - timedelta(hours=1), now=NOW)
    assert request.partitions == 5
    assert (request.first_partition, request.last_partition) == (
        hour_key(NOW - timedelta(hours=5)),
        hour_key(NOW - timedelta(hours=1)),
    )
    assert request.window.start == (NOW - timedelta(hours=5)).replace(minute=0)
    assert request.window.end == NOW.replace(minute=0)
    stored = instance.get_backfill(request.backfill_id)
    assert stored is not None and stored.status.value == "REQUESTED"
    assert set(stored.asset_selection) == set(SYNC_ASSET_KEYS)
    assert stored.tags["pipeline"] == "position_backfill"


def test_a_window_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        partition_range(NOW, NOW - timedelta(hours=2), NOW)


@pytest.mark.system
def test_the_command_needs_dagster_home_and_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    command = [sys.executable, "-m", "position_pipeline", "backfill", "--lake", str(tmp_path / "lake"), "--from", "2h"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "DAGSTER_HOME is not set" in done.stderr


@pytest.mark.system
def test_the_command_with_an_empty_queue_has_nothing_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "position_pipeline", "backfill", "--lake", str(tmp_path / "lake")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "nothing to backfill" in done.stdout
