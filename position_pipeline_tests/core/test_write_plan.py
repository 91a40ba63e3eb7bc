"""The write plan without Dagster: a real queue and position_updates in a temp lake, a snapshot made by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from deltalake import write_deltalake

from position_pipeline.core import lake
from position_pipeline.core.ib_reader import HeldPosition, IBSnapshot
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.core.sync import snapshot_results
from position_pipeline.core.write_plan import apply_write_back, plan_write

AAPL = HeldPosition(
    "DU1", 265598, "AAPL", "STK", "", 0.0, "", "", "USD", "AAPL", "AAPL", "SMART", 5.0, 10.0, 12.0, 60.0, 10.0, 0.0,
    "14:29", values_as_of=datetime(2030, 1, 2, 14, 29, tzinfo=UTC), base_currency="USD", fx_rate=1.0,
)  # fmt: skip


def claimed_results(queue: PositionQueue, run_id: str) -> pl.DataFrame:
    """Claim everything for `run_id` and judge it against a snapshot that holds only AAPL in DU1."""
    batch = queue.claim(None, 10, claimed_by=run_id)
    return snapshot_results(batch, IBSnapshot(datetime.now(UTC), 7, 178, ["DU1"], ["DU1"], [AAPL]))


def temp_lake(tmp_path: Path) -> tuple[str, PositionQueue]:
    """A lake root in `tmp_path` and its (not yet created) queue."""
    root = str(tmp_path / "lake")
    return root, PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))


def test_a_held_batch_is_planned_then_written_back_after_the_append(tmp_path: Path) -> None:
    root, queue = temp_lake(tmp_path)
    held, unknown = queue.insert_many([(265598, "AAPL"), (99_999_999, "NOPE")])
    plan = plan_write(claimed_results(queue, "run-a"), "run-a", queue, root)
    assert plan.refusal is None and plan.version_before == 0
    assert plan.rows["request_id"].to_list() == [held] and plan.succeeded == [held]
    assert list(plan.failed) == [unknown] and plan.failed[unknown].startswith("not held")
    assert plan.output_metadata()["table_version"] == 1

    write_deltalake(plan.table_uri, plan.rows.to_arrow(), mode="append")  # what the IO manager does
    written = apply_write_back(plan, queue)
    assert (written.marked_success, written.marked_failed, written.version_after) == (1, 1, 1)
    assert not written.other_writer and written.refusal is None
    assert (
        written.summary()
        == "batch of 2: 1 rows appended (position_updates version 1), 1 marked SUCCESS, 1 marked FAILED"
    )
    statuses = dict(queue.read().select("request_id", "status").iter_rows())
    assert statuses == {held: QueueStatus.SUCCESS, unknown: QueueStatus.FAILED}


def test_rows_an_earlier_run_committed_are_not_planned_again_but_marked(tmp_path: Path) -> None:
    root, queue = temp_lake(tmp_path)
    (held,) = queue.insert_many([(265598, "AAPL")])
    first = plan_write(claimed_results(queue, "dead-run"), "dead-run", queue, root)
    write_deltalake(first.table_uri, first.rows.to_arrow(), mode="append")
    queue.release_runs(["dead-run"])

    plan = plan_write(claimed_results(queue, "run-b"), "run-b", queue, root)
    assert plan.already_written == {held} and plan.rows.is_empty() and plan.succeeded == [held]
    assert plan.output_metadata()["rows_written"] == 0


def test_a_run_that_lost_its_claims_is_refused(tmp_path: Path) -> None:
    root, queue = temp_lake(tmp_path)
    queue.insert_many([(265598, "AAPL"), (101000, "MSFT")])
    results = claimed_results(queue, "run-a")
    queue.release_runs(["run-a"])
    queue.claim(None, 10, claimed_by="run-b")
    plan = plan_write(results, "run-a", queue, root)
    assert plan.refusal is not None and plan.version_before is None
    assert plan.refusal.description.startswith("2 of 2 items are no longer claimed by this run")
    assert plan.refusal.metadata == {"lost_claims": 2}


def test_a_claim_past_the_write_fence_is_given_back_and_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, queue = temp_lake(tmp_path)
    queue.insert_many([(265598, "AAPL")])
    results = claimed_results(queue, "run-a")
    monkeypatch.setattr("position_pipeline.core.write_plan.WRITE_FENCE_SECONDS", -1)
    plan = plan_write(results, "run-a", queue, root)
    assert plan.refusal is not None and "write fence" in plan.refusal.description
    assert plan.refusal.metadata["items_released"] == 1
    assert set(queue.read()["status"].to_list()) == {QueueStatus.PENDING}
