"""The fault suite, continued (test_fault_suite.py says what it checks): run workers killed by SIGKILL or stalled
in processes of their own, producer processes, and backfill runs while the sensor goes on."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.leases import CLAIM_LEASE_SECONDS, MAX_RUNTIME_SECONDS
from position_pipeline.defs.jobs import SYNC_JOB_NAME
from position_pipeline.defs.partitions import hour_key
from position_pipeline.defs.run_workers import WORKER_TAG
from position_pipeline_tests.support import REPO
from position_pipeline_tests.support.fault_pipeline import (
    NOT_HELD_SYMBOL,
    SUBPROCESS_TIMEOUT_S,
    Pipeline,
    worker,
    written_ids,
)
from position_pipeline_tests.support.fault_worker import KILL_POINTS
from position_pipeline_tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


# --- run worker killed by SIGKILL between claim and write-back -----------------------------------------------------

_POINTS_WRITTEN_BACK = {"after_mark_success", "after_mark_failed", "before_step_success", "before_run_success"}
_POINTS_APPENDED = {"after_delta_commit"} | _POINTS_WRITTEN_BACK
_SENSOR_SEES = ("after_claim", "mid_account_download", "after_delta_commit", "after_mark_success")
"""Kill points where the sensor itself finds the dead worker: before the IB read, in it, after the append, after
the write-back."""


@pytest.mark.parametrize(
    ("point", "recovery"),
    [(name, "run monitoring") for name in KILL_POINTS]
    + [("after_delta_commit", "lease")]
    + [(name, "sensor") for name in _SENSOR_SEES],
    ids=[*KILL_POINTS, "after_delta_commit-lease", *(f"{name}-sensor" for name in _SENSOR_SEES)],
)
def test_run_worker_killed(pipeline: Pipeline, point: str, recovery: str) -> None:
    """The worker dies by SIGKILL at `point` in a process of its own; the run record it leaves says STARTED."""
    p = pipeline
    p.enqueue(20, not_held=3)
    request = p.request()
    run_id = str(uuid.uuid4())
    if point == "after_release_on_ib_error":
        p.sim.call(lambda gw: gw.go_down(60))
    args = p.run_args(request, run_id)
    env = p.worker_env()
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
    assert len(set(rows_of_dead_run)) == (20 if point in _POINTS_APPENDED else 0)
    held = p.queue.claims_by_run().get(run_id, 0)

    if recovery == "sensor":
        # The sensor sees the worker's process is gone (its run tag names it): it reports the run failed through the
        # instance and gives its claims back on the same tick, without waiting for the claims to age.
        assert p.instance.get_run_by_id(run_id).tags.get(WORKER_TAG)  # type: ignore[union-attr]
        p.skip_backoff()
        assert p.instance.get_run_by_id(run_id) is None  # failed, then forgotten by skip_backoff
    elif recovery == "run monitoring":
        # In production run monitoring (dagster.yaml: run_monitoring) sees that the worker is gone, or the run's max
        # runtime pass, and marks the run failed. Reported here directly, as monitoring would, instead of running
        # the monitoring daemon. The next tick gives the dead run's claims back (and backs off after the failure).
        p.age_claims(run_id, MAX_RUNTIME_SECONDS + 1)
        p.instance.report_run_failed(dead, message="run worker killed (fault suite)")
        p.skip_backoff()
    else:
        # A worker the sensor cannot see (another machine: its tag names another host), and nobody reports the run
        # finished (monitoring off or down too). The sensor waits for the STARTED run...
        tag = p.instance.get_run_by_id(run_id).tags[WORKER_TAG]  # type: ignore[union-attr]
        p.instance.add_run_tags(run_id, {WORKER_TAG: "another-host" + tag[tag.index("|") :]})
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
    assert isinstance(rows, pl.DataFrame) and rows["request_id"].n_unique() == 20 and rows.height > 20  # shared: >1 row
    if point in _POINTS_APPENDED:  # the dead run's rows stay; the next run added none for the same items
        assert set(rows["run_id"].to_list()) == {run_id}


def _stall_run_a(p: Pipeline, tmp_path: Path) -> tuple[dg.RunRequest, str, subprocess.Popen[str], Path]:
    """Run A's worker stalls right after position_updates re-checked its claims (held_by) and before its write
    fence and append, as a worker in a slow object-store call or a paused VM does."""
    p.enqueue(20, not_held=3)
    request = p.request()
    run_a = str(uuid.uuid4())
    paused, resume = tmp_path / "paused", tmp_path / "resume"
    args = p.run_args(request, run_a, paused_file=str(paused), resume_file=str(resume), max_wait_s=60)
    env = p.worker_env()
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
    env = p.worker_env()
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
