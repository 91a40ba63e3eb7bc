"""Seconds, not minutes, after a crash: the real daemon, a sync run in flight, and then its death.

1. The daemon's whole process group dies by SIGKILL (daemon, code server and the run worker it launched) while a
   sync run reads IB; a new daemon starts. The run record still says STARTED and its items PROCESSING.
2. Only the run worker dies by SIGKILL; the daemon lives on.

Each measures the time from the restart (1) or the kill (2) to every item of the batch in flight being SUCCESS
with exactly one row, and asserts it is under 60 s. Before (no worker tag the sensor can check, which
`MEASURE_BEFORE=1` reproduces by renaming the tag's host) the queue waited for run monitoring's 600-s max runtime.
Figures go to stdout and to `crash_resume.json` in the test's temp folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.core.workers import Worker, worker_gone
from position_pipeline.defs.jobs import SYNC_JOB_NAME
from position_pipeline.defs.run_workers import WORKER_TAG
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread, SimulatedGateway
from position_pipeline_tests.support import REPO
from position_pipeline_tests.support.fault_pipeline import invariant, written_keys
from position_pipeline_tests.support.ib_reads import holders_of
from position_pipeline_tests.support.services import (
    dagster_home,
    instance_at,
    pipeline_env,
    terminate_group,
    wait_until_group_gone,
)
from position_pipeline_tests.support.waiting import wait_until

BEFORE = os.environ.get("MEASURE_BEFORE") == "1"
RESUME_LIMIT_S = 700 if BEFORE else 60

pytestmark = pytest.mark.timeout(900 if BEFORE else 300)


class Daemons:
    """`dagster-daemon run` processes on one instance, lake and gateway, each in a process group of its own."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env, self.folder, self.started = env, folder, 0
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        self.started += 1
        log = (self.folder / f"daemon-{self.started}.log").open("wb")
        command = [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", "position_pipeline.definitions"]
        process = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.processes.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL to the whole group, as an OOM killer or a lost machine does: nobody reports anything."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        wait_until_group_gone(process.pid)

    def stop_all(self) -> None:
        for process in self.processes:
            terminate_group(process)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Daemons, GatewayThread, GatewayState, str, Path]]:
    state = GatewayState.generate(positions=120, accounts=3, seed=5)
    home = dagster_home(tmp_path / "dagster_home")
    with GatewayThread(lambda: SimulatedGateway(state, port=0, price_interval=None)) as sim:
        # Timeouts long enough that a slowed gateway keeps the run in flight, never failing it.
        env = pipeline_env(home, tmp_path / "lake", sim.port, IB_CONNECT_TIMEOUT="60", IB_REQUEST_TIMEOUT="60")
        daemons = Daemons(env, tmp_path)
        try:
            yield daemons, sim, state, str(home), tmp_path
        finally:
            daemons.stop_all()


def _run_in_flight(home: str) -> dg.DagsterRun | None:
    """The STARTED sync run that has tagged its worker (it claimed, or is about to), if any."""
    with instance_at(home) as instance:
        records = instance.get_run_records(
            dg.RunsFilter(job_name=SYNC_JOB_NAME, statuses=[dg.DagsterRunStatus.STARTED]), limit=1
        )
    run = records[0].dagster_run if records else None
    return run if run is not None and WORKER_TAG in run.tags else None


def _start_a_slow_run(daemons: Daemons, sim: GatewayThread, queue: PositionQueue, items: list[Any], home: str) -> Any:
    sim.set_faults(reply_delay=1.0)  # every reply a second late: the run stays in its IB read for a while
    ids = queue.insert_many(items)
    daemon = daemons.start()
    run = wait_until(lambda: _run_in_flight(home), 120, "a sync run in flight", process=daemon, poll=0.5)
    wait_until(lambda: queue.claims_by_run().get(run.run_id), 30, "its claim", poll=0.25)
    return daemon, run, ids


def _forty_items_in_a_slow_run(
    daemons: Daemons, sim: GatewayThread, state: GatewayState, queue: PositionQueue, home: str
) -> tuple[subprocess.Popen[bytes], dg.DagsterRun, Worker, list[str]]:
    """40 held items queued, a daemon started, and its sync run in flight in a slowed IB read, with its worker."""
    items = [{"conid": h.contract.conid, "symbol": h.contract.symbol, "account": h.account} for h in state.positions()]
    daemon, run, ids = _start_a_slow_run(daemons, sim, queue, items[:40], home)
    worker = Worker.parse(run.tags[WORKER_TAG])
    assert worker is not None
    return daemon, run, worker, ids


def _resumed(queue: PositionQueue, ids: list[str], since: float) -> float:
    """Seconds from `since` until every item of `ids` is SUCCESS (looked at twice a second)."""

    def done() -> bool:
        return set(queue.read().filter(pl.col("request_id").is_in(ids))["status"].to_list()) == {QueueStatus.SUCCESS}

    wait_until(done, RESUME_LIMIT_S + 30, "every item of the dead run SUCCESS", poll=0.5)
    return time.monotonic() - since


def _hide_worker_if_measuring_before(home: str, run: dg.DagsterRun) -> None:
    """MEASURE_BEFORE: the tag names another host, so the sensor cannot tell the worker is gone (the old code)."""
    if BEFORE:
        tag = run.tags[WORKER_TAG]
        with instance_at(home) as instance:
            instance.add_run_tags(run.run_id, {WORKER_TAG: "another-host" + tag[tag.index("|") :]})


def _report(tmp_path: Path, name: str, seconds: float, extra: dict[str, Any]) -> None:
    figures = {"scenario": name, "resume_s": round(seconds, 1), "before_code": BEFORE, **extra}
    print(f"\n{name}: resumed in {seconds:.1f} s {extra}")
    path = tmp_path / "crash_resume.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*rows, figures], indent=1))


def _check_exactly_once(root: str, queue: PositionQueue, ids: list[str], state: GatewayState) -> None:
    outcome = invariant(queue.read(), written_keys(root), ids, holders_of(state))
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome.problems[:10]
    assert outcome.succeeded == len(ids)


def test_the_daemon_killed_with_a_run_in_flight_costs_seconds(world) -> None:  # type: ignore[no-untyped-def]
    daemons, sim, state, home, tmp_path = world
    root = daemons.env["POSITION_LAKE_URI"]
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    daemon, run, worker, ids = _forty_items_in_a_slow_run(daemons, sim, state, queue, home)

    daemons.kill(daemon)
    assert _run_in_flight(home) is not None  # nothing told Dagster: the run says STARTED
    assert queue.claims_by_run().get(run.run_id)  # and its items are PROCESSING
    assert worker_gone(worker)  # its worker died with the code server
    _hide_worker_if_measuring_before(home, run)
    sim.set_faults(reply_delay=0.0)

    restarted = time.monotonic()
    daemons.start()
    seconds = _resumed(queue, ids, restarted)
    _report(tmp_path, "daemon process group SIGKILL, run in flight", seconds, {"items": len(ids)})
    assert seconds < RESUME_LIMIT_S
    _check_exactly_once(root, queue, ids, state)
    with instance_at(home) as instance:
        dead = instance.get_run_by_id(run.run_id)
    assert dead is not None and dead.status == dg.DagsterRunStatus.FAILURE


def test_a_run_worker_killed_alone_costs_seconds(world) -> None:  # type: ignore[no-untyped-def]
    daemons, sim, state, home, tmp_path = world
    root = daemons.env["POSITION_LAKE_URI"]
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    daemon, run, worker, ids = _forty_items_in_a_slow_run(daemons, sim, state, queue, home)

    _hide_worker_if_measuring_before(home, run)
    killed = time.monotonic()
    os.kill(worker.pid, signal.SIGKILL)
    sim.set_faults(reply_delay=0.0)
    seconds = _resumed(queue, ids, killed)
    _report(tmp_path, "run worker SIGKILL, daemon alive", seconds, {"items": len(ids)})
    assert daemon.poll() is None
    assert seconds < RESUME_LIMIT_S
    _check_exactly_once(root, queue, ids, state)
