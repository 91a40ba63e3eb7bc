"""The real `dagster-daemon` on a throwaway instance and lake, and what its runs' event logs say: for the
benchmarks that measure the pipeline as production runs it (freshness, backlog drain)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from position_pipeline.cli.demo import stop_process_group
from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread, SimulatedGateway

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Daemon:
    """A running `dagster-daemon` on a throwaway instance and lake, with the simulated gateway it reads."""

    home: Path
    root: str
    env: dict[str, str]
    sim: GatewayThread
    process: subprocess.Popen[bytes]
    log: Path

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))

    def queue(self) -> PositionQueue:
        return PositionQueue(lake.table_uri(self.root, lake.QUEUE_TABLE))

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.25) -> None:
        """Poll until `predicate` holds; fail with the daemon log's tail if it exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not reached in {timeout:g} s; daemon log:\n{self.log.read_text()[-3000:]}")
            time.sleep(every)


@contextmanager
def running_daemon(
    workdir: Path, state: GatewayState, before_start: Callable[[str], object] | None = None
) -> Iterator[Daemon]:
    """The simulated gateway, then `dagster-daemon run` with the repo's dagster.yaml in `workdir`/dagster_home, until
    its first sensor tick. `before_start(lake_root)` runs before the daemon starts (to fill the queue first)."""
    home, root, log = workdir / "dagster_home", str(workdir / "lake"), workdir / "daemon.log"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    with GatewayThread(lambda: SimulatedGateway(state, port=0, price_interval=None)) as sim:
        env = {**os.environ, "DAGSTER_HOME": str(home), lake.LAKE_URI_VARIABLE: root, "IB_PORT": str(sim.port)}
        if before_start is not None:
            before_start(root)
        with dg.DagsterInstance.from_config(str(home)):
            pass  # create the instance's storage here first: two processes creating it at once can collide
        command = [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", "position_pipeline.definitions"]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        daemon = Daemon(home, root, env, sim, process, log)
        try:
            with daemon.instance() as instance:
                daemon.wait_for(lambda: bool(sensor_ticks(instance)), 120, "the first sensor tick", every=0.5)
            yield daemon
        finally:
            stop_process_group(process)


def sensor_ticks(instance: dg.DagsterInstance) -> list[tuple[float, list[str]]]:
    """(start time, run ids requested) of every tick of every sensor on the instance, oldest first."""
    from position_pipeline.defs.dagster_internals import InstigatorType

    ticks: list[tuple[float, list[str]]] = []
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id):
            ticks.append((tick.timestamp, list(tick.run_ids)))
    return sorted(ticks)


@dataclass
class RunEvents:
    """When each phase of one run began, from its event log (run worker clock: time.time())."""

    run_id: str
    at: dict[str, float] = field(default_factory=dict)  # enqueued, dequeued, starting, started, ended
    steps: dict[str, tuple[float, float]] = field(default_factory=dict)  # step key -> (start, end)
    appended: float | None = None  # position_updates handed to its IO manager: the append is committed
    written_back: float | None = None  # the write-back's materialization of position_queue

    @property
    def first_step(self) -> float:
        return min(start for start, _ in self.steps.values())

    def span(self, start: str, end: str) -> float:
        return self.at[end] - self.at[start]


_RUN_PHASES = {
    dg.DagsterEventType.RUN_ENQUEUED: "enqueued",
    dg.DagsterEventType.RUN_DEQUEUED: "dequeued",
    dg.DagsterEventType.RUN_STARTING: "starting",
    dg.DagsterEventType.RUN_START: "started",
    dg.DagsterEventType.RUN_SUCCESS: "ended",
    dg.DagsterEventType.RUN_FAILURE: "ended",
}


def run_events(instance: dg.DagsterInstance, run_id: str) -> RunEvents:
    events = RunEvents(run_id)
    starts: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        kind, step = event.event_type, event.step_key
        if kind in _RUN_PHASES:
            events.at.setdefault(_RUN_PHASES[kind], entry.timestamp)
        elif kind == dg.DagsterEventType.STEP_START and step:
            starts[step] = entry.timestamp
        elif kind in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE) and step in starts:
            events.steps[step] = (starts[step], entry.timestamp)
        elif kind == dg.DagsterEventType.HANDLED_OUTPUT and step == "position_updates":
            events.appended = entry.timestamp
        elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION and event.asset_key == dg.AssetKey("position_queue"):
            events.written_back = entry.timestamp
    return events
