"""One IB read at a time and one backfill run at a time: the instance settings of dagster.yaml (and the PostgreSQL
one) and a real sync run whose IB read waits for the pool's one slot."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue
from position_pipeline.definitions import defs
from position_pipeline.defs.assets import IB_READ_POOL
from position_pipeline.defs.partitions import hour_key
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread
from position_pipeline_tests.support.sync_runs import ASSETS, SYNC, sim_resources
from position_pipeline_tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
INSTANCE_FILES = [REPO / "dagster.yaml", REPO / "deploy" / "dagster.postgres.yaml"]


def concurrency_settings(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    return {key: config[key] for key in ("run_coordinator", "concurrency")}


@pytest.mark.tables  # an instance in a temp folder
@pytest.mark.parametrize("path", INSTANCE_FILES, ids=lambda p: p.name)
def test_the_instance_limits_ib_reads_sync_runs_and_backfill_runs_to_one(path: Path) -> None:
    with dg.instance_for_test(overrides=concurrency_settings(path)) as instance:
        config = instance.get_concurrency_config()
        assert config.pool_config.default_pool_limit == 1
        limits = config.run_queue_config.tag_concurrency_limits  # type: ignore[union-attr]
        assert {"key": "pipeline", "value": "position_sync", "limit": 1} in limits
        assert {"key": "dagster/backfill", "limit": 1} in limits  # every backfill run, from the UI or the CLI


def test_ib_snapshot_is_the_only_step_in_the_ib_read_pool() -> None:
    job = defs.resolve_job_def("position_sync")
    pools = {node.name: node.definition.pool for node in job.graph.node_dict.values()}  # type: ignore[attr-defined]
    assert pools == {"queued_positions": None, "ib_snapshot": IB_READ_POOL, "position_updates": None}


def test_a_sync_runs_ib_read_waits_while_another_run_holds_the_pool(
    root: str, sim: GatewayThread, sim_state: GatewayState
) -> None:
    with dg.instance_for_test(overrides=concurrency_settings(INSTANCE_FILES[0])) as instance:
        storage = instance.event_log_storage
        assert storage.initialize_concurrency_limit_to_default(IB_READ_POOL)
        assert storage.claim_concurrency_slot(IB_READ_POOL, "a-backfill-run", "ib_snapshot").is_claimed
        held = next(iter(sim_state.positions()))
        PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE)).insert(
            held.contract.conid, held.contract.symbol, account=held.account
        )
        outcome: dict[str, bool] = {}

        def run() -> None:
            result = dg.materialize(
                ASSETS,
                selection=SYNC,
                resources=sim_resources(root, sim),
                instance=instance,
                partition_key=hour_key(datetime.now(UTC)),
                raise_on_error=False,
            )
            outcome["success"] = result.success

        worker = threading.Thread(target=run)
        worker.start()
        info = wait_until(
            lambda: (i := storage.get_concurrency_info(IB_READ_POOL)).pending_step_count and i,
            timeout=30,
            what="the sync run's ib_snapshot step waiting for the pool",
        )
        assert info.slot_count == 1 and info.claimed_slots[0].run_id == "a-backfill-run"
        assert lake.open_existing(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)) is None  # nothing written yet
        storage.free_concurrency_slot_for_step("a-backfill-run", "ib_snapshot")
        worker.join(timeout=60)
        assert outcome == {"success": True}
        rows = DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).to_pyarrow_table().num_rows
        assert rows == 1
        assert storage.get_concurrency_info(IB_READ_POOL).claimed_slots == []
