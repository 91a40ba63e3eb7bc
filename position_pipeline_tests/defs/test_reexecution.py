"""Re-execute from failure: a sync run that failed at its IB read is re-executed from `ib_snapshot` against the
simulator; the re-execution continues with its parent's batch, writes each row once, and a second re-execution
after the items finished claims and writes nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.defs.partitions import hour_key
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread
from position_pipeline_tests.support import reexecution_job
from position_pipeline_tests.support.services import free_port


def steps_run(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
    return sorted({e.step_key for e in events if e.step_key})


def rows(root: str) -> pl.DataFrame:
    return pl.from_arrow(DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).to_pyarrow_table())  # type: ignore[return-value]


def test_a_run_that_failed_at_its_ib_read_is_re_executed_from_failure_once(
    root: str,
    sim: GatewayThread,
    sim_state: GatewayState,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    held = list(sim_state.positions())[:3]
    ids = queue.insert_many(
        [{"conid": h.contract.conid, "symbol": h.contract.symbol, "account": h.account} for h in held]
    )
    monkeypatch.setenv("POSITION_LAKE_URI", root)
    tags = {"dagster/partition": hour_key(datetime.now(UTC))}

    monkeypatch.setenv("IB_PORT", str(free_port()))  # the gateway is down
    job = dg.reconstructable(reexecution_job.sync_job)
    with dg.execute_job(job, instance, tags=tags) as failed:
        assert not failed.success
    assert steps_run(instance, failed.run_id) == ["queued_positions"]
    assert queue.counts()[QueueStatus.PENDING] == 3  # given back by the failed IB read

    monkeypatch.setenv("IB_PORT", str(sim.port))  # the gateway is back
    options = dg.ReexecutionOptions.from_failure(failed.run_id, instance)
    # The UI's re-execution keeps the parent's tags, its partition among them.
    with dg.execute_job(job, instance, tags=tags, reexecution_options=options) as again:
        assert again.success
        assert again.dagster_run.parent_run_id == failed.run_id
    assert steps_run(instance, again.run_id) == ["ib_snapshot", "position_updates"]  # the batch came from the parent
    written = rows(root)
    assert sorted(written["request_id"].to_list()) == sorted(ids)
    assert set(written["run_id"].to_list()) == {again.run_id}
    items = queue.read()
    assert set(items["status"].to_list()) == {QueueStatus.SUCCESS.value} and set(items["claims"].to_list()) == {2}

    # The items finished: re-executing the failed run once more takes none over and writes nothing.
    options = dg.ReexecutionOptions.from_failure(failed.run_id, instance)
    with dg.execute_job(job, instance, tags=tags, reexecution_options=options) as late:
        assert late.success
    assert rows(root).height == 3
    assert set(queue.read()["claims"].to_list()) == {2}
