"""What the UI tour (ui_browser.py) runs against: the simulated gateway and `dagster dev` with this code location on
free loopback ports, a throwaway DAGSTER_HOME and lake, the GraphQL API the UI reads, and Debian's Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from position_pipeline.cli.demo import UNKNOWN_CONID, stop_process_group
from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue
from position_pipeline.defs.jobs import SYNC_JOB_NAME
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread, SimulatedGateway
from position_pipeline_tests.support.services import dagster_home, free_port, pipeline_env, wait_until_group_gone
from position_pipeline_tests.support.waiting import wait_until

T = TypeVar("T")
LOCATION = "position_pipeline.definitions"
SENSOR = "position_sync_sensor"
ASSETS = ("position_queue", "queued_positions", "ib_snapshot", "position_updates")
CLIENT_IDS = range(100, 108)
"""The code location's client-id range in the tour (IB_CLIENT_ID, IB_CLIENT_ID_SPAN); the last run finds it taken."""


def chromium_executable() -> str | None:
    """Debian's Chromium (package `chromium`), if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def install_chromium(timeout: float = 300) -> str | None:
    """As root on Debian, install Chromium the way .ci/run does; None where that is impossible (not root, no apt)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=timeout, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
        env=env,
        check=True,
        timeout=timeout,
        capture_output=True,
    )
    return chromium_executable()


@dataclass
class Stack:
    """The simulated gateway and `dagster dev` on loopback, with their lake and Dagster instance folder."""

    url: str
    gateway: GatewayThread
    state: GatewayState
    queue: PositionQueue
    process: subprocess.Popen[bytes]
    log_path: Path

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """One GraphQL request, as the UI sends it; errors in the answer raise."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=15) as response:
            answer = json.load(response)
        if answer.get("errors"):
            raise RuntimeError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]  # type: ignore[no-any-return]

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        """Poll until `predicate` returns something truthy (an OSError means the webserver is not answering yet);
        fail at once if dagster dev exits, and with the dagster log's tail."""
        return wait_until(
            predicate,
            timeout,
            what,
            process=self.process,
            explain=lambda: "dagster dev log tail:\n" + self.log_tail(),
            ignoring=(OSError,),
            poll=0.5,
        )

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def enqueue(self, held: int, unheld: int, offset: int) -> list[str]:
        """Contracts the gateway holds (with their account) and `unheld` ones it does not."""
        holdings = list(self.state.positions())[offset : offset + held]
        items: list[dict[str, object]] = [
            {"conid": h.contract.conid, "symbol": h.contract.symbol, "account": h.account} for h in holdings
        ]
        items += [{"conid": UNKNOWN_CONID + offset + i, "symbol": f"UNHELD{i}"} for i in range(unheld)]
        return self.queue.insert_many(items)

    def sync_runs(self, status: str) -> list[dict[str, Any]]:
        data = self.graphql(
            "query Runs($filter: RunsFilter) { runsOrError(filter: $filter) { ... on Runs { results { runId } } } }",
            {"filter": {"pipelineName": SYNC_JOB_NAME, "statuses": [status]}},
        )
        return data["runsOrError"]["results"]  # type: ignore[no-any-return]

    def has_sync_runs(self, status: str, count: int) -> bool:
        return len(self.sync_runs(status)) >= count


@contextmanager
def running_stack(workdir: Path, startup_timeout: float = 60) -> Iterator[Stack]:
    """The gateway on a free port, then `dagster dev` on another; both stopped on exit (dagster's whole group)."""
    home = dagster_home(workdir / "dagster_home")
    root = str(workdir / "lake")
    state = GatewayState.generate(positions=90, accounts=3, seed=7)
    log_path = workdir / "dagster.log"
    with GatewayThread(lambda: SimulatedGateway(state, port=0, price_interval=None)) as gateway:
        port = free_port()
        env = pipeline_env(home, root, gateway.port, IB_HOST=gateway.host, IB_CLIENT_ID=str(CLIENT_IDS.start),
                           IB_CLIENT_ID_SPAN=str(len(CLIENT_IDS)))  # fmt: skip
        command = [str(Path(sys.executable).parent / "dagster"), "dev", "-m", LOCATION, "-h", "127.0.0.1",
                   "-p", str(port)]  # fmt: skip
        with log_path.open("wb") as output:
            process = subprocess.Popen(
                command, cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            stack = Stack(
                url=f"http://127.0.0.1:{port}",
                gateway=gateway,
                state=state,
                queue=PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE)),
                process=process,
                log_path=log_path,
            )
            stack.wait_for(
                lambda: len(stack.graphql("{ assetNodes { id } }")["assetNodes"]) >= len(ASSETS),
                startup_timeout,
                "the code location loaded in the webserver",
            )
            # The first visit from loopback opens a newsletter dialog over every page; say it was seen.
            stack.graphql("mutation { setNuxSeen }")
            yield stack
        finally:
            stop_process_group(process)
            wait_until_group_gone(process.pid)


def ticks(stack: Stack, limit: int = 200) -> list[dict[str, Any]]:
    data = stack.graphql(
        """query Ticks($selector: SensorSelector!, $limit: Int) {
             sensorOrError(sensorSelector: $selector) {
               ... on Sensor { sensorState { ticks(limit: $limit) { status skipReason runIds timestamp } } }
             }
           }""",
        {
            "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "sensorName": SENSOR},
            "limit": limit,
        },
    )
    return data["sensorOrError"]["sensorState"]["ticks"]  # type: ignore[no-any-return]


def step_failures(stack: Stack, run_id: str) -> list[str]:
    """The error messages of a run's failed steps, as the run page lists them."""
    events = stack.graphql(
        """query Failure($runId: ID!) { logsForRun(runId: $runId) { ... on EventConnection { events {
             __typename ... on ExecutionStepFailureEvent { stepKey error { message } } } } } }""",
        {"runId": run_id},
    )["logsForRun"]["events"]
    return [e["error"]["message"] for e in events if e["__typename"] == "ExecutionStepFailureEvent" and e.get("error")]


def entry_value(entry: dict[str, Any]) -> Any:
    for key in ("intValue", "floatValue", "text", "mdStr"):
        if key in entry:
            return entry[key]
    return None
