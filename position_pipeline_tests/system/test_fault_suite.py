"""The fault suite (issue 5): what goes wrong in production, each against the simulated gateway, real Dagster runs on
a real instance, real Delta tables and the real ib_async client, and then the invariant.

The invariant, checked at the end of every scenario over every item it enqueued: the item is in the queue and ends
SUCCESS with exactly one row in position_updates, or FAILED with its reason and no row. Anything else counts as
lost (not in the queue, still PENDING or PROCESSING after recovery, SUCCESS without a row, FAILED without a reason)
or duplicated (two rows, or a row for an item never enqueued). Items whose contract the gateway does not hold are
enqueued on purpose in most scenarios: they end FAILED after their first attempt and wait out their retry backoff,
which counts as FAILED here.

How the scenarios drive the pipeline: the sensor is evaluated with `build_sensor_context` on the scenario's instance
and each RunRequest is executed in process with the resources production would build, pointed at the simulator and a
temp lake. After a failed run the sensor backs off (10 s, 20 s, ...); a scenario checks that it does and then deletes
the failed run records (which hold no claims any more) instead of waiting. Killed or stalled run workers, backfill
runs and producers run in processes of their own (fault_worker.py). Every scenario adds a row (scenario, enqueued,
succeeded, failed, lost, duplicated) to a table printed at the end of the module and written as JSON to
$FAULT_SUITE_REPORT when set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.ib_reader import client_id_for
from position_pipeline.core.leases import CLAIM_LEASE_SECONDS, MAX_RUNTIME_SECONDS
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.definitions import defs
from position_pipeline.defs.jobs import SYNC_JOB_NAME
from position_pipeline.defs.partitions import hour_key
from position_pipeline.defs.resources import IBResource, LakeResource
from position_pipeline.defs.sensors import position_sync_sensor
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread, SimulatedGateway
from position_pipeline_tests.support import REPO
from position_pipeline_tests.support.fault_worker import KILL_POINTS, sync_resources
from position_pipeline_tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

NOT_HELD_CONID = 99_000_000  # the generated gateways hold conids from 101000 and from 700000000, none here
NOT_HELD_SYMBOL = "GONE"
SUBPROCESS_TIMEOUT_S = 90
_REPORT: list[dict[str, Any]] = []
_COLUMNS = (
    "scenario",
    "enqueued",
    "succeeded",
    "failed",
    "lost",
    "duplicated",
    "runs",
    "failed_runs",
    "seconds",
    "note",
)


@pytest.fixture(scope="module", autouse=True)
def fault_report(request: pytest.FixtureRequest) -> Iterator[list[dict[str, Any]]]:
    """Collects one row per scenario; prints the table after the module and writes it to $FAULT_SUITE_REPORT."""
    yield _REPORT
    text = "\n" + "\n".join(_table(_REPORT))
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        print(text)
    else:
        with capture.global_and_fixture_disabled():  # shown with or without -s
            print(text)
    path = os.environ.get("FAULT_SUITE_REPORT")
    if path:
        Path(path).write_text(json.dumps(_REPORT, indent=1) + "\n")


def _table(rows: list[dict[str, Any]]) -> list[str]:
    """The report as aligned text: names and notes left, numbers right."""
    widths = {c: max([len(c), *(len(str(r[c])) for r in rows)]) for c in _COLUMNS}

    def line(cells: dict[str, Any]) -> str:
        text = [
            str(cells[c]).ljust(widths[c]) if c in {"scenario", "note"} else str(cells[c]).rjust(widths[c])
            for c in _COLUMNS
        ]
        return "  ".join(text).rstrip()

    header = line({c: c for c in _COLUMNS})
    title = "fault suite: every item enqueued ends SUCCESS with one row or FAILED with a reason"
    return [title, header, "-" * len(header), *(line(r) for r in rows)]


@dataclass
class Outcome:
    """The invariant's verdict over a set of enqueued items."""

    enqueued: int
    succeeded: int
    failed: int
    lost: int
    duplicated: int
    problems: list[str]


def invariant(queue: pl.DataFrame, written: list[str], enqueued: list[str]) -> Outcome:
    """Classify every enqueued item from the queue table and the request_ids of position_updates' rows."""
    rows = Counter(written)
    items = {r["request_id"]: r for r in queue.select("request_id", "status", "error_message").iter_rows(named=True)}
    problems: list[str] = []
    if queue.height != len(items):
        problems.append(f"the queue holds {queue.height - len(items)} request_ids twice")
    succeeded = failed = lost = duplicated = 0
    for request_id in dict.fromkeys(enqueued):
        item, count = items.get(request_id), rows.get(request_id, 0)
        if count > 1:
            duplicated += 1
            problems.append(f"{request_id}: {count} rows in position_updates")
        elif item is None:
            lost += 1
            problems.append(f"{request_id}: not in the queue")
        elif item["status"] == QueueStatus.SUCCESS and count == 1:
            succeeded += 1
        elif item["status"] == QueueStatus.FAILED and (item["error_message"] or "").strip() and count == 0:
            failed += 1
        else:
            lost += 1
            problems.append(f"{request_id}: {item['status']} with {count} rows, error {item['error_message']!r}")
    strays = set(rows) - set(enqueued)
    if strays:
        duplicated += len(strays)
        problems.append(f"rows for {len(strays)} request_ids never enqueued: {sorted(strays)[:5]}")
    return Outcome(len(set(enqueued)), succeeded, failed, lost, duplicated, problems)


def written_ids(root: str) -> list[str]:
    """Every row's request_id in position_updates (none when the table was never written)."""
    uri = lake.table_uri(root, lake.POSITION_UPDATES_TABLE)
    if not (Path(uri) / "_delta_log").exists():
        return []
    return DeltaTable(uri).to_pyarrow_table(columns=["request_id"]).column("request_id").to_pylist()


def worker(command: str, *args: str) -> list[str]:
    """The argv of a fault_worker process."""
    return [sys.executable, "-m", "position_pipeline_tests.support.fault_worker", command, *args]


def step_failure(result: dg.ExecuteInProcessResult) -> str:
    """The message of the run's failed step (what an operator reads in the UI)."""
    failure = next(e for e in result.all_events if e.is_step_failure)
    return failure.step_failure_data.error.message  # type: ignore[union-attr]


@dataclass
class Pipeline:
    """One scenario's world: the simulated gateway, a temp lake, a Dagster instance, and the sensor's cursor."""

    sim: GatewayThread
    state: GatewayState
    root: str
    instance: dg.DagsterInstance
    home: Path
    cursor: str | None = None
    enqueued: list[str] = field(default_factory=list)
    runs: dict[str, bool] = field(default_factory=dict)  # run id -> succeeded
    started: float = field(default_factory=time.monotonic)

    @property
    def queue(self) -> PositionQueue:
        return PositionQueue(lake.table_uri(self.root, lake.QUEUE_TABLE))

    def items(self, held: int, not_held: int = 0, start: int = 0) -> list[dict[str, Any]]:
        """Items for `held` contracts the gateway holds (with their account) and `not_held` it does not."""
        holdings = list(self.state.positions())[start : start + held]
        assert len(holdings) == held, f"the gateway holds only {len(holdings)} positions from {start}"
        assert not any(NOT_HELD_CONID <= h.contract.conid < NOT_HELD_CONID + not_held for h in self.state.positions())
        return [{"conid": h.contract.conid, "symbol": h.contract.symbol, "account": h.account} for h in holdings] + [
            {"conid": NOT_HELD_CONID + i, "symbol": f"{NOT_HELD_SYMBOL}{i}"} for i in range(not_held)
        ]

    def enqueue(self, held: int, not_held: int = 0, *, start: int = 0, queued_at: datetime | None = None) -> list[str]:
        ids = self.queue.insert_many(self.items(held, not_held, start), queued_at=queued_at)
        self.enqueued += ids
        return ids

    def tick(self) -> dg.SensorResult | dg.SkipReason:
        """One evaluation of the production sensor; its cursor carries over to the next tick."""
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources={"lake": LakeResource(root_uri=self.root)}
        )
        result = position_sync_sensor(context)
        if isinstance(result, dg.SensorResult) and result.cursor is not None:
            self.cursor = result.cursor
        return result  # type: ignore[return-value]

    def request(self) -> dg.RunRequest:
        """A tick that must request a run."""
        result = self.tick()
        assert isinstance(result, dg.SensorResult), f"the sensor skipped: {result.skip_message}"  # type: ignore[union-attr]
        (request,) = result.run_requests or []
        return request

    def execute(
        self, request: dg.RunRequest, *, batch_size: int | None = None, run_id: str | None = None, **ib: Any
    ) -> dg.ExecuteInProcessResult:
        """Run what the sensor requested, as the run worker would (in process, same instance and lake)."""
        run_config = request.run_config
        if batch_size is not None:
            run_config = {"ops": {"queued_positions": {"config": {"batch_size": batch_size}}}}
        result = defs.resolve_job_def(SYNC_JOB_NAME).execute_in_process(
            instance=self.instance,
            partition_key=request.partition_key,
            run_config=run_config,
            tags=request.tags,
            run_id=run_id,
            resources=sync_resources(self.root, self.sim.port, **ib),
            raise_on_error=False,
        )
        self.runs[result.run_id] = result.success
        return result

    def tick_and_run(self, **kwargs: Any) -> dg.ExecuteInProcessResult:
        return self.execute(self.request(), **kwargs)

    def failed_run_gave_items_back(self, result: dg.ExecuteInProcessResult, ids: list[str], says: str) -> None:
        """The run failed saying `says`, and every item of `ids` (those it claimed among them) is PENDING again, with
        no attempt used: an IB failure is not the item's failure."""
        assert not result.success
        assert says in step_failure(result), step_failure(result)
        items = self.queue.read().filter(pl.col("request_id").is_in(ids))
        assert set(items["status"].to_list()) == {QueueStatus.PENDING}, items.group_by("status").len()
        assert set(items["attempts"].to_list()) == {0}

    def skip_backoff(self) -> str:
        """The tick after a failed run: the sensor gives back the claims of finished runs, then backs off. Check
        that, then delete the failed run records (they hold no claims any more) so the next tick need not wait."""
        result = self.tick()
        assert isinstance(result, dg.SkipReason), "the sensor did not back off after a failed run"
        message = result.skip_message or ""
        assert "sync run(s) failed" in message, message
        self.forget_failed_runs()
        return message

    def age_claims(self, run_id: str, seconds: float) -> None:
        """Move a run's claim time `seconds` back: stands for that much waiting, as production would do (run
        monitoring reports a dead run failed only at its max runtime, and the sensor hands a finished run's claims on
        only once they are MAX_RUNTIME_SECONDS old). The sensor reads the wall clock, so the claims move instead."""
        queue = DeltaTable(lake.table_uri(self.root, lake.QUEUE_TABLE))
        queue.update(
            predicate=f"claimed_by = '{run_id}' AND status = 'PROCESSING'",
            updates={"claimed_at": f"claimed_at - INTERVAL '{int(seconds)} seconds'"},
        )

    def forget_failed_runs(self) -> None:
        held = self.queue.claims_by_run()
        records = self.instance.get_run_records(
            dg.RunsFilter(job_name=SYNC_JOB_NAME, statuses=[dg.DagsterRunStatus.FAILURE])
        )
        for record in records:
            assert record.dagster_run.run_id not in held, f"failed run {record.dagster_run.run_id} still holds claims"
            self.instance.delete_run(record.dagster_run.run_id)

    def drain(self, max_ticks: int = 20, **kwargs: Any) -> None:
        """Sensor ticks and their runs until the sensor finds nothing claimable (at most `max_ticks` ticks)."""
        for _ in range(max_ticks):
            result = self.tick()
            if isinstance(result, dg.SkipReason):
                message = result.skip_message or ""
                if "no claimable items" in message:
                    return
                if "sync run(s) failed" in message:
                    self.forget_failed_runs()
                    continue
                raise AssertionError(f"the sensor skipped unexpectedly: {message}")
            for request in result.run_requests or []:
                self.execute(request, **kwargs)
        raise AssertionError(f"the queue was not drained in {max_ticks} ticks: {self.queue.counts()}")

    def check(self, scenario: str, extra_runs: dict[str, bool] | None = None, note: str = "") -> Outcome:
        """Apply the invariant, add the scenario's row to the report, and assert it."""
        outcome = invariant(self.queue.read(), written_ids(self.root), self.enqueued)
        runs = {**self.runs, **(extra_runs or {})}
        _REPORT.append(
            {
                "scenario": scenario,
                "enqueued": outcome.enqueued,
                "succeeded": outcome.succeeded,
                "failed": outcome.failed,
                "lost": outcome.lost,
                "duplicated": outcome.duplicated,
                "runs": len(runs),
                "failed_runs": sum(not ok for ok in runs.values()),
                "seconds": round(time.monotonic() - self.started, 1),
                "note": note,
            }
        )
        assert outcome.lost == 0 and outcome.duplicated == 0, outcome.problems[:20]
        assert outcome.succeeded + outcome.failed == outcome.enqueued, outcome.problems[:20]
        assert not outcome.problems, outcome.problems[:20]
        return outcome


def _pipeline(tmp_path: Path, state: GatewayState) -> Iterator[Pipeline]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    with (
        GatewayThread(lambda: SimulatedGateway(state, port=0, price_interval=None)) as sim,
        dg.instance_for_test(temp_dir=str(home)) as instance,
    ):
        yield Pipeline(sim, state, str(tmp_path / "lake"), instance, home)
        assert not any(r.is_order or r.is_market_data for r in sim.requests())  # read-only, whatever went wrong


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    """60 positions in 3 accounts; frozen prices."""
    yield from _pipeline(tmp_path, GatewayState.generate(positions=60, accounts=3, seed=7))


@pytest.fixture
def big_pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    """300 positions in 3 accounts, for the scenarios that enqueue hundreds or thousands of items."""
    yield from _pipeline(tmp_path, GatewayState.generate(positions=300, accounts=3, seed=11))


# --- IB faults: the run fails, gives its batch back at once, and a later run processes it ---------------------------


def test_gateway_down_for_several_sensor_ticks_then_back(pipeline: Pipeline) -> None:
    p = pipeline
    ids = p.enqueue(30, not_held=3)
    p.sim.call(lambda gw: gw.go_down(120))
    for _ in range(3):  # three ticks find the gateway down; after each failed run the sensor backs off
        p.failed_run_gave_items_back(p.tick_and_run(), ids, "refused")
        p.skip_backoff()
    p.sim.call(lambda gw: gw.go_down(0.05))  # the restart ends now: listening again in 50 ms
    wait_until(lambda: p.sim.call(lambda gw: gw.faults.down_until is None), 5, "the gateway listening again")
    p.drain()
    outcome = p.check("gateway down 3 ticks, then back")
    assert (outcome.succeeded, outcome.failed) == (30, 3)


def test_connection_dropped_in_the_middle_of_the_positions_stream(pipeline: Pipeline) -> None:
    p = pipeline
    ids = p.enqueue(30, not_held=3)
    p.sim.set_faults(drop_mid_positions=True)  # the next position stream stops half-way; the flag then clears
    p.failed_run_gave_items_back(p.tick_and_run(), ids, "dropped")
    p.skip_backoff()
    p.drain()
    p.check("connection dropped mid positions stream")


def test_position_end_never_sent(pipeline: Pipeline) -> None:
    p = pipeline
    ids = p.enqueue(30, not_held=3)
    p.sim.set_faults(suppress_position_end=True)
    p.failed_run_gave_items_back(p.tick_and_run(connect_timeout=1), ids, "reqPositions")
    p.sim.set_faults(suppress_position_end=False)
    p.skip_backoff()
    p.drain()
    p.check("positionEnd never sent")


def test_account_download_end_never_sent(pipeline: Pipeline) -> None:
    p = pipeline
    ids = p.enqueue(30, not_held=3)
    p.sim.set_faults(suppress_account_download_end=True)
    p.failed_run_gave_items_back(p.tick_and_run(request_timeout=1), ids, "reqAccountUpdates")
    p.sim.set_faults(suppress_account_download_end=False)
    p.skip_backoff()
    p.drain()
    p.check("accountDownloadEnd never sent")


def test_replies_slower_than_the_timeouts(pipeline: Pipeline) -> None:
    p = pipeline
    ids = p.enqueue(30, not_held=3)
    p.sim.set_faults(reply_delay=1.3)
    # Slower than the connect timeout: the handshake itself does not arrive in time.
    p.failed_run_gave_items_back(p.tick_and_run(connect_timeout=1), ids, "handshake")
    p.skip_backoff()
    # The connect fits in its timeout, the portfolio download does not fit in the request timeout.
    p.failed_run_gave_items_back(p.tick_and_run(connect_timeout=8, request_timeout=1), ids, "reqAccountUpdates")
    p.sim.set_faults(reply_delay=0.0)
    p.skip_backoff()
    p.drain()
    p.check("replies slower than the timeouts")


def _when_reader_asks_for_positions(sim: GatewayThread, then: Callable[[], None]) -> threading.Thread:
    """Run `then` as soon as a new client sends its connect-time reqPositions (the run's read has started)."""
    seen = sum(r.name == "REQ_POSITIONS" for r in sim.requests())

    def watch() -> None:
        wait_until(lambda: sum(r.name == "REQ_POSITIONS" for r in sim.requests()) > seen, 10, "a reqPositions")
        then()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_error_1100_during_a_run_then_1102(pipeline: Pipeline) -> None:
    p = pipeline
    ids = p.enqueue(30, not_held=3)
    p.sim.call(lambda gw: gw.connectivity_lost())  # from now on data replies are held back
    # 1100 while the run reads, and no 1102 within the connect timeout: the run fails and gives its batch back.
    told = _when_reader_asks_for_positions(p.sim, lambda: p.sim.call(lambda gw: gw.connectivity_lost()))
    p.failed_run_gave_items_back(p.tick_and_run(connect_timeout=2), ids, "1100")
    told.join(10)
    p.skip_backoff()

    # 1100 while the run reads, then 1102 (data maintained): the held replies arrive and the run completes.
    def lost_then_restored() -> None:
        p.sim.call(lambda gw: gw.connectivity_lost())
        time.sleep(0.3)  # the outage itself: the run's replies are held back this long
        p.sim.call(lambda gw: gw.connectivity_restored())

    restored = _when_reader_asks_for_positions(p.sim, lost_then_restored)
    result = p.tick_and_run(connect_timeout=5)
    restored.join(10)
    assert result.success
    p.drain()
    p.check("error 1100 during a run, then 1102")


def test_client_id_already_in_use_moves_to_the_next_id(pipeline: Pipeline) -> None:
    p = pipeline
    ids = p.enqueue(30, not_held=3)
    settings = IBResource(port=p.sim.port).settings()
    # Every id the run may try is locked (IB keeps a crashed client's id for a while): the run fails, gives back.
    run_id = str(uuid.uuid4())
    candidates = [client_id_for(run_id, settings, a) for a in range(settings.client_id_attempts)]
    p.sim.set_faults(locked_client_ids=set(candidates))
    p.failed_run_gave_items_back(p.tick_and_run(run_id=run_id), ids, "326")
    p.skip_backoff()
    # Only the run's first two ids are locked: it answers each 326 by moving on and reads with the third.
    run_id = str(uuid.uuid4())
    locked = [client_id_for(run_id, settings, a) for a in range(2)]
    p.sim.set_faults(locked_client_ids=set(locked))
    before = len(p.sim.requests())
    result = p.tick_and_run(run_id=run_id)
    assert result.success
    tried = [int(r.fields[2]) for r in p.sim.requests()[before:] if r.name == "START_API"]
    assert tried == [*locked, client_id_for(run_id, settings, 2)]
    p.sim.set_faults(locked_client_ids=set())
    p.drain()
    p.check("client id in use (326)")


def test_items_queued_before_the_first_partition_or_ahead_of_the_clock_are_not_stranded(pipeline: Pipeline) -> None:
    """Imported history older than the first hour partition, and a producer whose clock runs hours ahead: the
    sensor still runs a partition whose window holds them."""
    p = pipeline
    p.enqueue(10, not_held=1, queued_at=datetime(2025, 6, 1, 12, tzinfo=UTC))
    p.enqueue(10, not_held=1, start=10, queued_at=datetime.now(UTC) + timedelta(hours=3))
    p.enqueue(10, not_held=1, start=20)
    p.drain()
    p.check("queued before the first partition / ahead of the clock")


# --- run worker killed by SIGKILL between claim and write-back -----------------------------------------------------

_POINTS_WRITTEN_BACK = {"after_mark_success", "after_mark_failed", "before_step_success", "before_run_success"}
_POINTS_APPENDED = {"after_delta_commit"} | _POINTS_WRITTEN_BACK


@pytest.mark.parametrize(
    ("point", "recovery"),
    [(name, "run monitoring") for name in KILL_POINTS] + [("after_delta_commit", "lease")],
    ids=[*KILL_POINTS, "after_delta_commit-lease"],
)
def test_run_worker_killed(pipeline: Pipeline, point: str, recovery: str) -> None:
    """The worker dies by SIGKILL at `point` in a process of its own; the run record it leaves says STARTED."""
    p = pipeline
    p.enqueue(20, not_held=3)
    request = p.request()
    run_id = str(uuid.uuid4())
    if point == "after_release_on_ib_error":
        p.sim.call(lambda gw: gw.go_down(60))
    args = {
        "lake_root": p.root,
        "port": p.sim.port,
        "partition_key": request.partition_key,
        "run_config": request.run_config,
        "tags": dict(request.tags),
        "run_id": run_id,
    }
    env = {**os.environ, "DAGSTER_HOME": str(p.home)}
    done = subprocess.run(
        worker("kill", point, json.dumps(args)), cwd=REPO, env=env, capture_output=True, text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, f"exit {done.returncode}:\n{done.stderr[-3000:]}"
    if point == "after_release_on_ib_error":
        p.sim.call(lambda gw: gw.go_down(0.05))
        wait_until(lambda: p.sim.call(lambda gw: gw.faults.down_until is None), 5, "the gateway listening again")
    dead = p.instance.get_run_by_id(run_id)
    assert dead is not None and dead.status == dg.DagsterRunStatus.STARTED  # nothing told Dagster
    p.runs[run_id] = False
    rows_of_dead_run = written_ids(p.root)
    assert len(rows_of_dead_run) == (20 if point in _POINTS_APPENDED else 0)
    held = p.queue.claims_by_run().get(run_id, 0)

    if recovery == "run monitoring":
        # In production run monitoring (dagster.yaml: run_monitoring) sees that the worker is gone, or the run's max
        # runtime pass, and marks the run failed. Reported here directly, as monitoring would, instead of running
        # the monitoring daemon. The next tick gives the dead run's claims back (and backs off after the failure).
        p.age_claims(run_id, MAX_RUNTIME_SECONDS + 1)
        p.instance.report_run_failed(dead, message="run worker killed (fault suite)")
        p.skip_backoff()
    else:
        # Nobody reports the run finished (monitoring off or down too). The sensor waits for the STARTED run...
        skip = p.tick()
        assert isinstance(skip, dg.SkipReason) and run_id in (skip.skip_message or "")
        # ...and the claims come back when the lease expires: as the sensor's release_stale will, lease time later.
        later = datetime.now(UTC) + timedelta(seconds=CLAIM_LEASE_SECONDS + 60)
        assert p.queue.release_stale(timedelta(seconds=CLAIM_LEASE_SECONDS), now=later) == held
        # A run of the same partition (a backfill, or a manual run) processes them meanwhile.
        assert p.execute(request).success
        # Monitoring catches up later: the dead run's finish must give back nothing that is another run's now.
        p.instance.report_run_failed(dead, message="run worker killed (fault suite)")
    assert run_id not in p.queue.claims_by_run()
    p.drain()
    p.check(f"worker SIGKILL {point} ({recovery})")
    rows = pl.from_arrow(DeltaTable(lake.table_uri(p.root, lake.POSITION_UPDATES_TABLE)).to_pyarrow_table())
    assert isinstance(rows, pl.DataFrame) and rows.height == 20
    if point in _POINTS_APPENDED:  # the dead run's rows stay; the next run added none for the same items
        assert set(rows["run_id"].to_list()) == {run_id}


def _stall_run_a(p: Pipeline, tmp_path: Path) -> tuple[dg.RunRequest, str, subprocess.Popen[str], Path]:
    """Run A's worker stalls right after position_updates re-checked its claims (held_by) and before its write
    fence and append, as a worker in a slow object-store call or a paused VM does."""
    p.enqueue(20, not_held=3)
    request = p.request()
    run_a = str(uuid.uuid4())
    paused, resume = tmp_path / "paused", tmp_path / "resume"
    args = {
        "lake_root": p.root,
        "port": p.sim.port,
        "partition_key": request.partition_key,
        "run_config": request.run_config,
        "tags": dict(request.tags),
        "run_id": run_a,
        "paused_file": str(paused),
        "resume_file": str(resume),
        "max_wait_s": 60,
    }
    env = {**os.environ, "DAGSTER_HOME": str(p.home)}
    stalled = subprocess.Popen(
        worker("stall", json.dumps(args)), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_until(paused.exists, 60, "run A between its claim re-check and its append")
    run = p.instance.get_run_by_id(run_a)
    assert run is not None and run.status == dg.DagsterRunStatus.STARTED
    p.instance.report_run_failed(run, message="reported failed (fault suite): the worker did not stop")
    return request, run_a, stalled, resume


def _finish(p: Pipeline, run_a: str, stalled: subprocess.Popen[str], resume: Path) -> bool:
    resume.touch()
    stdout, stderr = stalled.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    assert stalled.returncode == 0 and stdout.strip(), stderr[-3000:]
    success = bool(json.loads(stdout.strip().splitlines()[-1])["success"])
    p.runs[run_a] = success
    return success


def test_a_run_reported_finished_while_its_worker_lives_on_keeps_its_items_until_it_writes(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Reported failed within its write fence: the sensor does not hand A's items on (they are not
    MAX_RUNTIME_SECONDS old), so A's late append is the only one and A still writes them back."""
    p = pipeline
    _, run_a, stalled, resume = _stall_run_a(p, tmp_path)
    try:
        skip = p.tick()
        assert isinstance(skip, dg.SkipReason) and "gave back" not in (skip.skip_message or ""), skip
        assert p.queue.claims_by_run() == {run_a: 23}
    finally:
        success = _finish(p, run_a, stalled, resume)
    assert success  # A appended and marked its own items
    p.forget_failed_runs()
    p.drain()
    p.check("run reported finished, worker lives on, within its fence")


def test_a_run_reported_finished_and_stalled_past_its_fence_writes_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    """Stalled until its claims were MAX_RUNTIME_SECONDS old: the sensor gives them back and run B writes the
    items; when A's worker goes on, its write fence stops it: no second row."""
    p = pipeline
    request, run_a, stalled, resume = _stall_run_a(p, tmp_path)
    try:
        p.age_claims(run_a, MAX_RUNTIME_SECONDS + 1)
        skip = p.tick()  # gives A's claims back, then backs off after A's failure
        assert isinstance(skip, dg.SkipReason) and "gave back 23 items" in (skip.skip_message or ""), skip
        run_b = p.execute(request)  # what the sensor requests once its backoff has passed
        assert run_b.success
    finally:
        success = _finish(p, run_a, stalled, resume)
    assert not success  # stopped by its write fence
    p.forget_failed_runs()
    p.drain()
    p.check("run reported finished, worker stalled past its fence")


# --- producers, backfills and the sensor at once ------------------------------------------------------------------


def test_four_producer_processes_enqueue_5000_items_while_runs_go_on(big_pipeline: Pipeline, tmp_path: Path) -> None:
    p = big_pipeline
    items = [[i["conid"], i["symbol"], i.get("account")] for i in p.items(297, not_held=3)]
    producers = []
    for n in range(4):
        args = {
            "queue_uri": lake.table_uri(p.root, lake.QUEUE_TABLE),
            "items": items,
            "count": 1250,
            "chunk": 125,
            "offset": 75 * n,
            "pause_s": 0.3,
            "out": str(tmp_path / f"producer-{n}.json"),
        }
        producers.append(
            subprocess.Popen(
                worker("produce", json.dumps(args)), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True,
            )
        )  # fmt: skip
    try:

        def producers_done_after_a_tick() -> bool:
            """Whether every producer has exited; otherwise one sensor tick first, and the runs it requests."""
            if all(producer.poll() is not None for producer in producers):
                return True
            result = p.tick()
            for request in [] if isinstance(result, dg.SkipReason) else result.run_requests or []:
                assert p.execute(request, batch_size=1000).success
            return False

        wait_until(producers_done_after_a_tick, 90, "producers finished", poll=0.2)  # poll: the sensor's pace
    finally:
        for producer in producers:
            if producer.poll() is None:
                producer.kill()
            _, stderr = producer.communicate(timeout=30)
            assert producer.returncode == 0, stderr[-3000:]
    runs_while_producing = len(p.runs)
    for n in range(4):
        p.enqueued += json.loads((tmp_path / f"producer-{n}.json").read_text())
    p.drain(batch_size=1000)
    queue = p.queue.read()
    assert queue.height == 5000
    outcome = p.check("4 producer processes, 5000 items", note=f"{runs_while_producing} runs while producing")
    assert outcome.failed == queue.filter(pl.col("symbol").str.starts_with(NOT_HELD_SYMBOL)).height > 0


def _backfill(p: Pipeline, first: str, last: str) -> subprocess.Popen[str]:
    """The daemon's single run of an asset backfill over first..last, in a process of its own."""
    args = {"lake_root": p.root, "port": p.sim.port, "first": first, "last": last}
    env = {**os.environ, "DAGSTER_HOME": str(p.home)}
    return subprocess.Popen(
        worker("backfill", json.dumps(args)), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _overlapping(instance: dg.DagsterInstance, run_id: str) -> int:
    """How many sensor (position_sync) runs were in progress at some time during run `run_id`, by their records."""
    records = instance.get_run_records()
    (run,) = [r for r in records if r.dagster_run.run_id == run_id]
    assert run.start_time is not None and run.end_time is not None
    return sum(
        1
        for r in records
        if r.dagster_run.job_name == SYNC_JOB_NAME
        and r.start_time is not None
        and r.end_time is not None
        and r.start_time < run.end_time
        and r.end_time > run.start_time
    )


def test_a_backfill_over_an_outage_while_the_sensor_runs_then_the_same_backfill_again(big_pipeline: Pipeline) -> None:
    p = big_pipeline
    now = datetime.now(UTC)
    hours = [now - timedelta(hours=h) for h in (3, 2, 1)]
    # IB is down while items are queued over three past hours (and a few now); the sensor's run fails meanwhile.
    p.sim.call(lambda gw: gw.go_down(120))
    for n, hour in enumerate(hours):
        p.enqueue(90, not_held=1, start=90 * n, queued_at=hour.replace(minute=30, second=0, microsecond=0))
    p.enqueue(20, not_held=1, start=270)
    p.failed_run_gave_items_back(p.tick_and_run(), p.enqueued, "refused")
    p.sim.call(lambda gw: gw.go_down(0.05))
    wait_until(lambda: p.sim.call(lambda gw: gw.faults.down_until is None), 5, "the gateway listening again")
    p.skip_backoff()

    first, last = hour_key(hours[0]), hour_key(hours[-1])
    backfill = _backfill(p, first, last)
    try:
        # The sensor keeps going while the backfill runs (the backfill's run is no position_sync job run, so the
        # sensor does not wait for it); both claim from the same hours and the same lake.

        def backfill_done_after_a_tick() -> bool:
            """One sensor tick and the runs it requests; done once a tick requests nothing and the backfill exited."""
            result = p.tick()
            if isinstance(result, dg.SensorResult):
                for request in result.run_requests or []:
                    assert p.execute(request).success
                return False
            return backfill.poll() is not None

        wait_until(backfill_done_after_a_tick, 90, "the backfill and the sensor finished", poll=0.1)
        stdout, stderr = backfill.communicate(timeout=30)
    finally:
        if backfill.poll() is None:
            backfill.kill()
            backfill.communicate(timeout=30)
    assert backfill.returncode == 0, stderr[-3000:]
    first_run = json.loads(stdout.strip().splitlines()[-1])
    p.drain()
    backfill_runs = {first_run["run_id"]: first_run["success"]}
    written = Counter(
        DeltaTable(lake.table_uri(p.root, lake.POSITION_UPDATES_TABLE))
        .to_pyarrow_table(columns=["run_id"])["run_id"]
        .to_pylist()
    )
    note = (
        f"backfill claimed {first_run['claimed']}, wrote {written[first_run['run_id']]} rows; "
        f"{_overlapping(p.instance, first_run['run_id'])} sensor runs overlapped it"
    )
    outcome = p.check("backfill over an outage while the sensor runs", backfill_runs, note)
    assert (outcome.succeeded, outcome.failed) == (290, 4)

    # The same backfill again: nothing left to claim in those hours, so no row is added.
    table = DeltaTable(lake.table_uri(p.root, lake.POSITION_UPDATES_TABLE))
    version, height = table.version(), len(written_ids(p.root))
    again = _backfill(p, first, last)
    stdout, stderr = again.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    assert again.returncode == 0, stderr[-3000:]
    second_run = json.loads(stdout.strip().splitlines()[-1])
    assert second_run["claimed"] == 0
    table = DeltaTable(lake.table_uri(p.root, lake.POSITION_UPDATES_TABLE))
    assert table.version() <= version + 1  # an empty append at most
    assert table.to_pyarrow_table(columns=["request_id"]).num_rows == height
    note = f"claimed 0, rows unchanged, position_updates version {version} -> {table.version()}"
    p.check("the same backfill again", {**backfill_runs, second_run["run_id"]: second_run["success"]}, note)
