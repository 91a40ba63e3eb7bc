"""Table upkeep as Dagster runs it: run_upkeep with the op's config (also racing claimers), the table_upkeep job and
its metadata, and the schedule that keeps it off the sync runs."""

import logging
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pydantic
import pytest
import yaml
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from position_pipeline.core import lake
from position_pipeline.core.maintenance import COMPACT_MIN_SMALL_FILES, run_upkeep, table_state
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.core.queue.archive import archive_succeeded, archive_uri
from position_pipeline.definitions import defs
from position_pipeline.defs.dagster_internals import cron_string_iterator
from position_pipeline.defs.jobs import position_sync_job, table_upkeep
from position_pipeline.defs.resources import LakeResource
from position_pipeline.defs.schedules import FULL_UPKEEP_MINUTE, table_upkeep_schedule
from position_pipeline.defs.upkeep import UpkeepConfig
from position_pipeline_tests.support import REPO
from position_pipeline_tests.support.lake_tables import (
    DAY,
    content_checksum,
    referenced_files,
    succeed_items,
    table_ids,
    table_rows,
    update_batch,
)

pytestmark = pytest.mark.timeout(60)


@pytest.mark.system  # over 2 s: too slow for the fast tier
@pytest.mark.timeout(90)
def test_claims_running_while_upkeep_runs_lose_nothing(root: str, queue: PositionQueue) -> None:
    old = succeed_items(queue, 1_500, datetime.now(UTC) - 3 * DAY)
    live = queue.insert_many([(10_000 + i, "P") for i in range(200)])
    live += [queue.insert(20_000 + i, "P") for i in range(20)]  # small files for compaction to merge
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def claim_and_mark(worker: str) -> None:
        q = PositionQueue(queue.table_uri)
        got: list[str] = []
        deadline = time.monotonic() + 40
        try:
            for batch_number in range(1_000):
                if time.monotonic() > deadline:
                    break
                run = f"{worker}-{batch_number}"
                try:
                    batch = q.claim(None, limit=10, claimed_by=run)
                except CommitFailedError:  # lost every retry: like a run's next tick, claim again
                    continue
                if batch.is_empty():
                    break
                ids = batch["request_id"].to_list()
                got.extend(ids)
                while q.mark_success(ids, claimed_by=run) < len(ids) and time.monotonic() < deadline:
                    ids = list(q.held_by(ids, run))
        except BaseException as exc:
            errors.append(exc)
        claimed[worker] = got

    workers = [threading.Thread(target=claim_and_mark, args=(f"w{n}",), name=f"claimer-{n}") for n in range(2)]
    for w in workers:
        w.start()
    config = UpkeepConfig(success_retention_hours=24, vacuum_retention_hours=1)
    for _ in range(2):
        run_upkeep(logging.getLogger("test_upkeep"), config, root)
    for w in workers:
        w.join(timeout=60)
        assert not w.is_alive(), f"{w.name} did not finish"
    assert errors == []
    # Whatever upkeep skipped while the claimers raced it, a quiet run finishes the move.
    archive_succeeded(root, DAY)

    got = [i for ids in claimed.values() for i in ids]
    assert sorted(got) == sorted(live)  # every live item claimed, none twice
    table = queue.read()
    assert sorted(table["request_id"]) == sorted(live)
    assert set(table["status"]) == {QueueStatus.SUCCESS}
    assert sorted(table_ids(archive_uri(root))) == sorted(old)


def test_the_job_archives_compacts_and_reports(root: str, queue: PositionQueue) -> None:
    now = datetime.now(UTC)
    succeed_items(queue, 30, now - 2 * DAY)
    for i in range(10):
        queue.insert(1_000 + i, "P")
    uri = lake.ensure_position_updates_table(root)
    for day in (now.date() - DAY, now.date()):
        for batch in range(12):
            write_deltalake(uri, update_batch(day, batch), mode="append")

    instance = dg.DagsterInstance.ephemeral()
    result = table_upkeep.execute_in_process(
        resources={"lake": LakeResource(root_uri=root)},
        run_config={"ops": {"upkeep_tables": {"config": {"success_retention_hours": 24}}}},
        instance=instance,
    )

    assert result.success
    assert result.dagster_run.tags["pipeline"] == "position_sync"
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    meta: dict[str, Any] = {
        k: getattr(v, "value", v)
        for k, v in output.event_specific_data.metadata.items()  # type: ignore[union-attr]
    }
    assert meta["rows archived"] == 30
    assert (meta["position_queue files before"], meta["position_queue files after"]) == (11, 1)
    assert meta["position_queue rows after"] == 10
    # The closed day into one large file, the open day into one file under the hot target.
    assert (meta["position_updates files before"], meta["position_updates files after"]) == (24, 2)
    assert meta["upkeep"] == "full"
    assert meta["position_updates version after"] > meta["position_updates version before"]
    assert meta["position_queue_archive rows after"] == 30
    assert meta["position_updates vacuum seconds"] >= 0
    assert "nothing" in str(meta["skipped"])
    assert "| position_updates | compact |" in str(meta["steps"])
    assert len(table_ids(archive_uri(root))) == 30
    progress = [e.user_message for e in instance.all_logs(result.run_id) if e.dagster_event is None]
    assert any(m.startswith("archived 30 items in") for m in progress)
    for table in ("position_queue", "position_queue_archive", "position_updates"):
        for step in ("compact", "checkpoint", "vacuum"):
            assert any(m.startswith(f"{table}: {step} in") for m in progress), (table, step, progress)


def test_upkeep_config_refuses_retentions_out_of_range() -> None:
    assert UpkeepConfig().success_retention_hours == 24
    assert UpkeepConfig().vacuum_retention_hours == 168
    cases: list[dict[str, Any]] = [
        {"vacuum_retention_hours": 0},
        {"vacuum_retention_hours": 169},
        {"success_retention_hours": 0},
    ]
    for bad in cases:
        with pytest.raises(pydantic.ValidationError):
            UpkeepConfig(**bad)
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 1"):
        table_upkeep.execute_in_process(
            resources={"lake": LakeResource(root_uri="unused")},
            run_config={"ops": {"upkeep_tables": {"config": {"vacuum_retention_hours": 0}}}},
        )


def test_schedule_and_tags_keep_upkeep_off_the_sync_runs() -> None:
    assert table_upkeep_schedule.execution_timezone == "UTC"
    assert table_upkeep_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert table_upkeep_schedule.job_name == "table_upkeep"
    assert table_upkeep.executor_def is dg.in_process_executor
    # The instance's limit of one run per tag value is what keeps upkeep and sync runs apart.
    limits = yaml.safe_load((REPO / "dagster.yaml").read_text())["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "pipeline", "value": table_upkeep.tags["pipeline"], "limit": 1} in limits
    assert (position_sync_job.tags or {})["pipeline"] == table_upkeep.tags["pipeline"]
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[table_upkeep], schedules=[table_upkeep_schedule]))
    assert merged.get_job_def("table_upkeep").name == "table_upkeep"
    assert defs.resolve_schedule_def("table_upkeep_schedule").required_resource_keys == {"lake"}


def test_the_schedule_ticks_every_3_minutes_and_runs_the_full_upkeep_once_an_hour() -> None:
    start = datetime(2030, 1, 1, 10, 0, tzinfo=UTC)
    ticks = []
    for tick in cron_string_iterator(start.timestamp(), str(table_upkeep_schedule.cron_schedule), "UTC"):
        if tick >= start + timedelta(hours=1):
            break
        ticks.append(tick.astimezone(UTC))
    assert [t.minute for t in ticks if t.minute == FULL_UPKEEP_MINUTE] == [FULL_UPKEEP_MINUTE]
    following = [*ticks[1:], ticks[0] + timedelta(hours=1)]  # the next hour starts the same way
    gaps = {b - a for a, b in zip(ticks, following, strict=True)}
    assert gaps == {timedelta(minutes=3)}  # at most 36 sensor batches (at 5 s) between two compactions

    context = dg.build_schedule_context(
        scheduled_execution_time=start.replace(minute=FULL_UPKEEP_MINUTE),
        resources={"lake": LakeResource(root_uri="/nonexistent/never/read")},
    )
    [request] = table_upkeep_schedule.evaluate_tick(context).run_requests or []
    assert request.run_config == {"ops": {"upkeep_tables": {"config": {"compact_only": False}}}}
    assert request.tags["upkeep"] == "full"


def test_between_full_upkeeps_the_schedule_compacts_only_when_small_files_pile_up(
    root: str, queue: PositionQueue
) -> None:
    def tick() -> dg.RunRequest | None:
        context = dg.build_schedule_context(
            scheduled_execution_time=datetime(2030, 1, 1, 10, 26, tzinfo=UTC),
            resources={"lake": LakeResource(root_uri=root)},
        )
        data = table_upkeep_schedule.evaluate_tick(context)
        requests = data.run_requests or []
        assert len(requests) <= 1
        request = requests[0] if requests else None
        if request is None:
            assert "nothing to compact" in str(data.skip_message)
        return request

    assert tick() is None  # no table yet: no run
    for i in range(COMPACT_MIN_SMALL_FILES - 1):
        queue.insert(i + 1, f"S{i}")
    assert tick() is None
    queue.insert(999, "LAST")
    request = tick()
    assert request is not None
    assert request.run_config == {"ops": {"upkeep_tables": {"config": {"compact_only": True}}}}
    assert request.tags["small_files/position_queue"] == str(COMPACT_MIN_SMALL_FILES)

    result = table_upkeep.execute_in_process(
        resources={"lake": LakeResource(root_uri=root)}, run_config=request.run_config, tags=request.tags
    )
    assert result.success
    assert table_state(queue.table_uri).files == 1  # type: ignore[union-attr]
    assert len(queue.read()) == COMPACT_MIN_SMALL_FILES
    assert tick() is None


def test_compaction_only_merges_what_is_being_written_and_nothing_else(root: str, queue: PositionQueue) -> None:
    old = succeed_items(queue, 5, datetime.now(UTC) - 3 * DAY)
    for i in range(12):
        queue.insert(100 + i, f"P{i}")
    uri = lake.ensure_position_updates_table(root)
    today = datetime.now(UTC).date()
    for day in (today - DAY, today):
        for batch in range(12):
            write_deltalake(uri, update_batch(day, batch), mode="append")
    queue_rows, update_rows = table_rows(queue.table_uri), pl.scan_delta(uri).collect()
    yesterday_files = {f for f in referenced_files(uri) if f.startswith(f"snapshot_date={today - DAY}/")}

    meta = run_upkeep(logging.getLogger("test_upkeep"), UpkeepConfig(compact_only=True), root)

    assert meta["upkeep"] == "compaction only" and "rows archived" not in meta
    assert not os.path.exists(archive_uri(root))  # nothing archived: the old SUCCESS items stay until the full run
    assert set(old) <= set(table_ids(queue.table_uri))
    assert table_state(queue.table_uri).files == 1  # type: ignore[union-attr]
    assert content_checksum(table_rows(queue.table_uri)) == content_checksum(queue_rows)
    files = referenced_files(uri)
    assert yesterday_files <= files  # closed days wait for the full run
    assert len([f for f in files if f.startswith(f"snapshot_date={today}/")]) == 1
    assert content_checksum(pl.scan_delta(uri).collect()) == content_checksum(update_rows)
    assert not list(Path(uri, "_delta_log").glob("*.checkpoint.parquet"))  # no checkpoint, no vacuum
    assert "vacuum" not in str(meta["steps"]) and "checkpoint" not in str(meta["steps"])

    # A few more small files are not worth a commit.
    for batch in range(COMPACT_MIN_SMALL_FILES - 2):
        write_deltalake(uri, update_batch(today, 100 + batch), mode="append")
    versions = DeltaTable(queue.table_uri).version(), DeltaTable(uri).version()
    run_upkeep(logging.getLogger("test_upkeep"), UpkeepConfig(compact_only=True), root)
    assert (DeltaTable(queue.table_uri).version(), DeltaTable(uri).version()) == versions
