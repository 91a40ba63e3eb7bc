"""The alerting sensor against a real HTTP receiver on loopback, with real sync runs on a real instance: one message
for an outage of several failed runs, one for the recovery, one for a check that starts failing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dagster as dg
import pytest

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue
from position_pipeline.defs.alerts import AlertResource, sync_alert_sensor
from position_pipeline.defs.jobs import position_sync_job
from position_pipeline.defs.partitions import hour_key
from position_pipeline.defs.resources import IBResource, build_resources
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread
from position_pipeline_tests.support.services import free_port
from position_pipeline_tests.support.sync_runs import ASSETS, sim_resources


class Receiver:
    """An HTTP server on loopback that records each POSTed JSON body."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    hook.thread.start()
    try:
        yield hook
    finally:
        hook.server.shutdown()
        hook.server.server_close()


def sync_run(root: str, ib: IBResource, instance: dg.DagsterInstance) -> bool:
    """One run of the position_sync job itself (the job the sensor watches) over the current hour."""
    defs = dg.Definitions(assets=ASSETS, jobs=[position_sync_job], resources=build_resources(root, ib))
    result = defs.resolve_job_def("position_sync").execute_in_process(
        instance=instance, partition_key=hour_key(datetime.now(UTC)), raise_on_error=False
    )
    return result.success


def tick(instance: dg.DagsterInstance, cursor: str | None, hook: Receiver, **policy: Any) -> str | None:
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"alerts": AlertResource(webhook_url=hook.url, **policy)},
    )
    result = sync_alert_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result.cursor


def test_an_outage_of_several_failed_runs_is_one_message_and_its_recovery_another(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance, receiver: Receiver
) -> None:
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    held = next(iter(sim_state.positions()))
    queue.insert(held.contract.conid, held.contract.symbol, account=held.account)
    down = IBResource(port=free_port(), connect_timeout=1, request_timeout=1)

    cursor = tick(instance, None, receiver, failed_runs=3)
    for _ in range(5):  # the gateway is down: each run fails and gives its item back
        assert not sync_run(root, down, instance)
        cursor = tick(instance, cursor, receiver, failed_runs=3)
    assert [m["text"].split(":")[1].strip() for m in receiver.received] == ["sync failing"]
    assert "refused" in receiver.received[0]["text"] or "connect" in receiver.received[0]["text"]

    assert sync_run(root, sim_resources(root, sim)["ib"], instance)
    cursor = tick(instance, cursor, receiver, failed_runs=3)
    cursor = tick(instance, cursor, receiver, failed_runs=3)
    assert len(receiver.received) == 2
    assert set(receiver.received[1]) == {"text"}  # what Slack and Teams incoming webhooks take
    assert "recovered" in receiver.received[1]["text"] and "after 5 failed runs" in receiver.received[1]["text"]


def test_a_failing_check_is_one_message_in_the_plain_format(instance: dg.DagsterInstance, receiver: Receiver) -> None:
    check = dg.AssetCheckKey(dg.AssetKey("position_updates"), "fresh_while_pending")
    cursor = None
    for _ in range(3):
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=check.asset_key, check_name=check.name, passed=False, description="4 items have waited"
            )
        )
        cursor = tick(instance, cursor, receiver, body_format="plain")
    assert receiver.received == [
        {
            "kind": "check_failed",
            "text": "position_pipeline: check fresh_while_pending failed: 4 items have waited",
            "check": "fresh_while_pending",
            "description": "4 items have waited",
        }
    ]


def test_without_a_webhook_the_sensor_skips_and_says_why(instance: dg.DagsterInstance) -> None:
    context = dg.build_sensor_context(instance=instance, resources={"alerts": AlertResource()})
    result = sync_alert_sensor(context)
    assert isinstance(result, dg.SkipReason) and "POSITION_ALERT_WEBHOOK_URL" in (result.skip_message or "")


@pytest.mark.parametrize(
    ("fields", "named"),
    [({"body_format": "xml"}, "POSITION_ALERT_FORMAT"), ({"failed_runs": 0}, "failed_runs")],
)
def test_a_bad_setting_fails_the_tick_naming_it(
    instance: dg.DagsterInstance, fields: dict[str, Any], named: str
) -> None:
    alerts = AlertResource(webhook_url="http://127.0.0.1:9/unused", **fields)
    context = dg.build_sensor_context(instance=instance, resources={"alerts": alerts})
    with pytest.raises(dg.DagsterInvalidConfigError, match=named):
        sync_alert_sensor(context)
