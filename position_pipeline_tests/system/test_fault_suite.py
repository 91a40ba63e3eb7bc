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
runs and producers run in processes of their own (support/fault_worker.py); those scenarios are in
test_fault_suite_processes.py, the world they share in support/fault_pipeline.py. Every scenario adds a row
(scenario, enqueued, succeeded, failed, lost, duplicated) to a table printed at the end of the session
(system/conftest.py) and written as JSON to $FAULT_SUITE_REPORT when set.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from position_pipeline.core import lake
from position_pipeline.core.ib_reader import client_id_for
from position_pipeline.defs.resources import IBResource
from position_pipeline.defs.sensors import QueueRolledBack
from position_pipeline.ib_gateway_sim import GatewayThread
from position_pipeline_tests.support.fault_pipeline import Pipeline
from position_pipeline_tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


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


# --- Failures that are not IB's, and a queue log that went back (issue 15) ------------------------------------------


INJECTED_FAILURES = {
    "the IB read": "position_pipeline.defs.resources.read_snapshot",
    "building the results": "position_pipeline.defs.assets.snapshot_results",
    "building the rows": "position_pipeline.core.write_plan.position_update_rows",
    "the append": "position_pipeline.defs.io_managers.write_deltalake",
    "the write-back": "position_pipeline.core.queue.PositionQueue.mark_success",
}


@pytest.mark.parametrize("step", list(INJECTED_FAILURES))
def test_a_non_ib_exception_at_any_step_gives_the_batch_back_in_the_same_run(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    p = pipeline
    ids = p.enqueue(30, not_held=3)

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"injected failure in {step}")

    monkeypatch.setattr(INJECTED_FAILURES[step], fail)
    result = p.tick_and_run()
    monkeypatch.undo()
    p.failed_run_gave_items_back(result, ids, "injected failure" if step != "the append" else "handling output")
    assert p.queue.claims_by_run() == {}  # nothing PROCESSING once the failed run is over, not after the lease
    p.skip_backoff()
    p.drain()
    p.check(f"non-IB exception in {step}")


def test_a_rolled_back_queue_log_stops_the_sensor_and_writes_no_second_row(pipeline: Pipeline) -> None:
    """The queue's newest commits (the claim and the write-back of a good run) deleted: its items read PENDING with
    claims 0 again. The sensor refuses to go on; once the operator accepts the table, no item gets a second row."""
    p = pipeline
    p.enqueue(30, not_held=3)
    enqueued_at = p.queue.version()
    p.drain()
    assert p.queue.version() > enqueued_at
    p.tick()  # a tick after the run: the cursor now holds the queue's newest version
    log = Path(lake.table_uri(p.root, lake.QUEUE_TABLE)) / "_delta_log"
    newest = p.queue.version()
    for version in range(enqueued_at + 1, newest + 1):
        (log / f"{version:020d}.json").unlink()
    assert set(p.queue.read()["status"].to_list()) == {"PENDING"} and set(p.queue.read()["claims"].to_list()) == {0}

    with pytest.raises(QueueRolledBack, match=f"went back from version {newest} to {enqueued_at}") as refused:
        p.tick()
    assert "dagster sensor cursor position_sync_sensor --delete" in str(refused.value)
    assert p.queue.claims_by_run() == {} and p.queue.version() == enqueued_at  # nothing claimed or written

    p.cursor = None  # what the operator does once they accept the table as it is
    p.drain()
    p.check("queue log rolled back past a good run")
