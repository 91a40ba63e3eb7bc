"""A re-execution's take-over of its parent's batch: what the parent held or gave back, never what another run holds
or what finished; counted as a claim; idempotent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline_tests.core.queue_support import version

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_take_over_keeps_to_the_parents_batch_and_leaves_other_runs_alone(queue: PositionQueue, uri: str) -> None:
    held, released, other, done = queue.insert_many([(1, "HELD"), (2, "RELEASED"), (3, "OTHER"), (4, "DONE")])
    assert queue.claim(None, 4, claimed_by="parent", now=NOW).height == 4
    queue.release(other, claimed_by="parent", now=NOW)
    assert queue.claim(None, 1, claimed_by="another-run", now=NOW)["request_id"].to_list() == [other]
    queue.release(released, claimed_by="parent", now=NOW)
    queue.mark_success(done, claimed_by="parent", now=NOW)

    later = NOW + timedelta(minutes=1)
    taken = queue.take_over([held, released, other, done], from_run="parent", claimed_by="reexecution", now=later)

    assert sorted(taken["request_id"].to_list()) == sorted([held, released])
    assert taken.schema == lake.QUEUE_SCHEMA
    assert set(taken["claimed_by"]) == {"reexecution"} and set(taken["claimed_at"]) == {later}
    assert set(taken["claims"]) == {2}  # the write plan then looks for rows the parent committed
    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert (rows[other]["status"], rows[other]["claimed_by"]) == (QueueStatus.PROCESSING.value, "another-run")
    assert rows[done]["status"] == QueueStatus.SUCCESS.value

    before = version(uri)
    again = queue.take_over([held, released], from_run="parent", claimed_by="reexecution", now=later)
    assert sorted(again["request_id"].to_list()) == sorted([held, released]) and version(uri) == before
