"""Nothing stuck: bad settings are refused before any claim, and a failure at any step between the claim and the
write-back gives the batch back in the same run, with the cause in the step's error. Real Dagster runs against the
simulated gateway on a temp lake."""

from __future__ import annotations

import errno
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.defs.give_back import cause_of
from position_pipeline.defs.partitions import hour_key, partition_range_tags
from position_pipeline.defs.resources import IBResource, LakeResource, build_resources, ib_resource
from position_pipeline.ib_gateway_sim import GatewayThread
from position_pipeline_tests.support.sync_runs import ASSETS, SYNC, sim_resources

pytestmark = pytest.mark.timeout(120)


def run_sync(resources: dict[str, Any], instance: dg.DagsterInstance) -> dg.ExecuteInJobResult:
    return dg.materialize(
        ASSETS,
        selection=SYNC,
        resources=resources,
        instance=instance,
        run_config=dg.RunConfig({"queued_positions": {"config": {"batch_size": 50}}}),
        tags=partition_range_tags(hour_key(datetime.now(UTC) - timedelta(hours=1)), hour_key(datetime.now(UTC))),
        raise_on_error=False,
    )


def queue_of(root: str) -> PositionQueue:
    return PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))


def enqueue_held(root: str, sim: GatewayThread, count: int = 5) -> list[str]:
    holdings = list(sim.call(lambda gw: gw.state).positions())[:count]
    return queue_of(root).insert_many(
        [{"conid": h.contract.conid, "symbol": h.contract.symbol, "account": h.account} for h in holdings]
    )


def failure_text(result: dg.ExecuteInJobResult) -> str:
    """Every error message of the run's failure events (step failures, resource init failures), cause chains too."""
    texts = []
    for event in result.all_events:
        data = event.event_specific_data
        error = getattr(data, "error", None)
        while error is not None:
            texts.append(error.message)
            error = error.cause
    return "\n".join(texts)


def step_error_message(result: dg.ExecuteInJobResult) -> str:
    """The top message of the failed step's error: what the UI shows first."""
    failure = next(e for e in result.all_events if e.is_step_failure)
    return failure.step_failure_data.error.message  # type: ignore[union-attr]


def statuses(root: str, ids: list[str]) -> set[str]:
    return set(queue_of(root).read().filter(pl.col("request_id").is_in(ids))["status"].to_list())


BAD_SETTINGS = [
    ({"port": 70000}, "IBResource.port must be at most 65535, got 70000 (IB_PORT)"),
    ({"port": 0}, "IBResource.port must be at least 1, got 0 (IB_PORT)"),
    ({"client_id": -1}, "IBResource.client_id must be at least 1, got -1 (IB_CLIENT_ID)"),
    ({"client_id": 99999999999}, "IBResource.client_id must be at most 2147483647, got 99999999999"),
    ({"client_id": 2**31 - 50}, "IBResource.client_id_span must be at most 50, got 100 (IB_CLIENT_ID_SPAN)"),
    ({"client_id_span": 0}, "IBResource.client_id_span must be at least 1, got 0"),
    ({"connect_timeout": 0}, "IBResource.connect_timeout must be at least 1, got 0 (IB_CONNECT_TIMEOUT)"),
    ({"request_timeout": -5}, "IBResource.request_timeout must be at least 1, got -5 (IB_REQUEST_TIMEOUT)"),
]


@pytest.mark.parametrize(("setting", "message"), BAD_SETTINGS, ids=[str(s) for s, _ in BAD_SETTINGS])
def test_a_bad_ib_setting_fails_the_run_before_anything_is_claimed(
    root: str, sim: GatewayThread, instance: dg.DagsterInstance, setting: dict[str, int], message: str
) -> None:
    enqueue_held(root, sim)
    before = queue_of(root).read()
    resources = build_resources(root, IBResource(**{"port": sim.port, "connect_timeout": 3, **setting}))
    result = run_sync(resources, instance)
    assert not result.success
    assert message in failure_text(result)
    assert queue_of(root).read().equals(before)  # nothing claimed, nothing written
    assert not sim.requests()  # and the gateway never heard of it


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("IB_CLIENT_ID", "-1", "IBResource.client_id must be at least 1, got -1 (IB_CLIENT_ID)"),
        ("IB_PORT", "70000", "IBResource.port must be at most 65535, got 70000 (IB_PORT)"),
        ("IB_CLIENT_ID_SPAN", "0", "IBResource.client_id_span must be at least 1, got 0 (IB_CLIENT_ID_SPAN)"),
    ],
)
def test_a_bad_environment_variable_is_refused_when_the_run_resolves_it(
    root: str,
    sim: GatewayThread,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    message: str,
) -> None:
    """The deployed path: the value is an EnvVar until the run's process resolves it."""
    monkeypatch.setenv(variable, value)
    enqueue_held(root, sim)
    before = queue_of(root).read()
    result = run_sync(build_resources(root, ib_resource()), instance)
    assert not result.success
    assert message in failure_text(result)
    assert queue_of(root).read().equals(before)


def test_an_unsupported_lake_uri_is_refused_when_the_resource_is_built(
    root: str, sim: GatewayThread, instance: dg.DagsterInstance
) -> None:
    resources = {**sim_resources(root, sim), "lake": LakeResource(root_uri="ftp://host/lake")}
    result = run_sync(resources, instance)
    assert not result.success
    assert "LakeResource.root_uri: unsupported lake URI 'ftp://host/lake'" in failure_text(result)


def _raise(message: str) -> Any:
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError(message)

    return fail


INJECTED = {
    "read": ("position_pipeline.defs.resources.read_snapshot", "ib_snapshot", "the IB read failed"),
    "results": ("position_pipeline.defs.assets.snapshot_results", "ib_snapshot", "building the results"),
    "rows": ("position_pipeline.core.write_plan.position_update_rows", "position_updates", "planning the append"),
    "mark": ("position_pipeline.core.queue.PositionQueue.mark_success", "position_updates", "the write-back"),
}


@pytest.mark.parametrize("step", list(INJECTED))
def test_a_non_ib_exception_at_any_step_gives_the_batch_back_with_its_cause(
    root: str, sim: GatewayThread, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    target, failed_step, what = INJECTED[step]
    ids = enqueue_held(root, sim)
    monkeypatch.setattr(target, _raise(f"injected failure in {step}"))
    result = run_sync(sim_resources(root, sim), instance)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == failed_step
    message = step_error_message(result)
    assert what in message and f"RuntimeError: injected failure in {step}" in message
    assert statuses(root, ids) == {QueueStatus.PENDING}  # given back in this run, not after the lease
    assert queue_of(root).claims_by_run() == {}
    logs = [e.message for e in result.all_events if e.event_type == dg.DagsterEventType.ENGINE_EVENT] + [
        r.user_message for r in instance.all_logs(result.run_id)
    ]
    assert any(f"{len(ids)} items given back" in line for line in logs)

    monkeypatch.undo()
    assert run_sync(sim_resources(root, sim), instance).success  # the next run takes them: one row each
    rows = pl.from_arrow(DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).to_pyarrow_table())
    assert sorted(rows["request_id"].to_list()) == sorted(ids)  # type: ignore[union-attr]
    assert statuses(root, ids) == {QueueStatus.SUCCESS}


def test_a_failed_append_gives_the_batch_back_with_the_storage_error(
    root: str, sim: GatewayThread, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a read-only or full position_updates folder does to the IO manager's write (as root, chmod cannot)."""
    ids = enqueue_held(root, sim)

    def read_only(table_or_uri: object, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(table_or_uri))

    monkeypatch.setattr("position_pipeline.defs.io_managers.write_deltalake", read_only)
    result = run_sync(sim_resources(root, sim), instance)
    assert not result.success
    assert "Read-only file system" in failure_text(result)
    assert statuses(root, ids) == {QueueStatus.PENDING}
    assert queue_of(root).claims_by_run() == {}
    logs = [r.user_message for r in instance.all_logs(result.run_id)]
    assert any("position_updates failed (OSError: [Errno 30] Read-only file system" in line for line in logs)


def test_cause_of_is_one_line_and_keeps_a_failures_description() -> None:
    """(Unwrapping Dagster's wrapper is what the failed-append test shows: its log names the OSError.)"""
    assert cause_of(ValueError("bad\nvalue")) == "ValueError: bad value"
    assert cause_of(dg.Failure(description="the IB read failed: X")) == "the IB read failed: X"
    assert cause_of(None) == "no exception recorded"
