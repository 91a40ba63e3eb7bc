"""Table upkeep on real Delta tables: archiving exactly once, compaction, checkpoints, vacuum, and the hourly job."""

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pyarrow as pa
import pydantic
import pytest
import yaml
from dagster._utils.schedules import cron_string_iterator
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.definitions import defs
from position_pipeline.defs import upkeep
from position_pipeline.defs.jobs import position_sync_job
from position_pipeline.defs.resources import LakeResource
from position_pipeline.defs.upkeep import (
    COMPACT_MIN_SMALL_FILES,
    FULL_UPKEEP_MINUTE,
    HOT_TARGET_SIZE,
    UpkeepConfig,
    archive_succeeded,
    archive_uri,
    checkpoint,
    closed_days,
    compact,
    compactions,
    open_days,
    run_upkeep,
    small_files,
    table_state,
    table_upkeep,
    table_upkeep_schedule,
    vacuum,
)
from position_pipeline_tests.support import REPO

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2030, 3, 10, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture
def root(tmp_path: Path) -> str:
    return str(tmp_path / "lake")


@pytest.fixture
def queue(root: str) -> PositionQueue:
    return PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))


@pytest.fixture(scope="module")
def appended_200_times(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A lake whose queue got 200 items in 200 inserts (200 commits, 200 files); built once, copied per test."""
    root = str(tmp_path_factory.mktemp("appended") / "lake")
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    for i in range(200):
        queue.insert(i + 1, f"S{i}")
    return root


@pytest.fixture
def small_files_queue(appended_200_times: str, root: str) -> PositionQueue:
    shutil.copytree(appended_200_times, root)
    return PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))


def _succeeded(queue: PositionQueue, count: int, at: datetime, first_conid: int = 1) -> list[str]:
    """`count` items claimed and marked SUCCESS at `at`, in one insert, one claim and one mark."""
    ids = queue.insert_many([(first_conid + i, f"S{first_conid + i}") for i in range(count)])
    claimed = queue.claim(None, limit=count, claimed_by="run-old", now=at)
    assert claimed.height == count
    assert queue.mark_success(ids, claimed_by="run-old", now=at) == count
    return ids


def _rows(uri: str) -> pl.DataFrame:
    """A table's rows sorted by request_id (empty when there is no table)."""
    if not os.path.exists(os.path.join(uri, "_delta_log")):
        return pl.DataFrame(schema=lake.QUEUE_SCHEMA)
    return pl.scan_delta(DeltaTable(uri)).collect().sort("request_id")


def _ids(uri: str) -> list[str]:
    return _rows(uri)["request_id"].to_list()


def _checksum(frame: pl.DataFrame) -> str:
    """Content checksum independent of row and file order."""
    return hashlib.sha256(frame.sort(frame.columns).write_csv().encode()).hexdigest()


def _data_files(uri: str) -> set[str]:
    """Parquet files on disk, relative to the table (the log excluded)."""
    return {
        str(p.relative_to(uri)) for p in Path(uri).rglob("*.parquet") if "_delta_log" not in p.relative_to(uri).parts
    }


def _referenced(uri: str) -> set[str]:
    return {str(p) for p in DeltaTable(uri).get_add_actions().column("path").to_pylist()}


def _age_removals(uri: str, by: timedelta) -> None:
    """Pretend the files removed so far were removed `by` earlier: the clock vacuum reads is in the log.

    Only for removals committed after the last checkpoint (a checkpoint carries its own copy of them): here the
    compaction's, one commit after the checkpoint delta-rs writes by itself at version 200.
    """
    for path in Path(uri, "_delta_log").glob("*.json"):
        actions = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for action in actions:
            if "remove" in action:
                action["remove"]["deletionTimestamp"] -= int(by.total_seconds() * 1000)
        path.write_text("".join(json.dumps(a) + "\n" for a in actions))


def _update_rows(day: date, batch: int, size: int = 3) -> pa.Table:
    """One small position_updates batch on `day`."""
    at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(minutes=batch)
    rows = [
        {
            "request_id": f"req-{day}-{batch}-{i}",
            "conid": 1000 + i,
            "account": "DU1000001",
            "symbol": f"S{i}",
            "sec_type": "STK",
            "right": None,
            "strike": None,
            "expiry": None,
            "multiplier": None,
            "currency": "USD",
            "local_symbol": f"S{i}",
            "position": float(batch + i),
            "average_cost": 10.0,
            "market_price": 11.0,
            "market_value": 11.0 * (batch + i),
            "unrealized_pnl": 1.0 * (batch + i),
            "realized_pnl": 0.0,
            "account_update_time": f"{at:%H:%M}",
            "queued_at": at - timedelta(seconds=4),
            "snapshot_at": at,
            "run_id": f"run-{batch}",
            "snapshot_date": day,
        }
        for i in range(size)
    ]
    return pa.Table.from_pylist(rows, schema=lake.POSITION_UPDATES_ARROW_SCHEMA)


# Archiving


def test_archive_moves_exactly_the_old_success_items_once(root: str, queue: PositionQueue) -> None:
    old = _succeeded(queue, 5, NOW - 3 * DAY)
    recent = _succeeded(queue, 3, NOW - timedelta(hours=1), first_conid=100)
    pending = queue.insert_many([(200 + i, "P") for i in range(2)])
    failed = queue.insert_many([(300 + i, "F") for i in range(2)])
    queue.claim(None, limit=10, claimed_by="run-f", now=NOW - 3 * DAY)
    queue.mark_failed_many(dict.fromkeys(failed, "boom"), claimed_by="run-f", now=NOW - 3 * DAY)
    processing = set(queue.read().filter(pl.col("status") == "PROCESSING")["request_id"])
    assert processing == set(pending)  # claimed 3 days ago, never finished: not SUCCESS, so never archived
    before = queue.read().sort("request_id")

    assert archive_succeeded(root, DAY, now=NOW) == 5

    archived = _rows(archive_uri(root))
    assert archived.equals(before.filter(pl.col("request_id").is_in(old)))  # whole rows, unchanged
    assert sorted(_ids(queue.table_uri)) == sorted(recent + pending + failed)
    version = DeltaTable(archive_uri(root)).version()

    assert archive_succeeded(root, DAY, now=NOW) == 0
    assert DeltaTable(archive_uri(root)).version() == version  # nothing to do commits nothing
    assert _rows(archive_uri(root)).equals(archived)
    # Later, the recent ones are old enough too.
    assert archive_succeeded(root, DAY, now=NOW + DAY, batch_size=2) == 3  # two rounds
    assert sorted(_ids(archive_uri(root))) == sorted(old + recent)


def test_an_absent_queue_archives_nothing_and_creates_nothing(root: str) -> None:
    assert archive_succeeded(root, DAY, now=NOW) == 0
    assert not os.path.exists(archive_uri(root))
    assert not os.path.exists(lake.table_uri(root, lake.QUEUE_TABLE))
    with pytest.raises(ValueError, match="older_than must be positive"):
        archive_succeeded(root, timedelta(0))


def test_a_crash_between_insert_and_delete_then_a_rerun_keeps_each_item_once(
    root: str, queue: PositionQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """9,000 rows: past delta-rs' 8,192-row MERGE batch, where its row-match check once misfired."""
    old = _succeeded(queue, 9_000, NOW - 3 * DAY)
    live = queue.insert_many([(20_000 + i, "P") for i in range(10)])

    def crash(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("worker died")

    monkeypatch.setattr(upkeep, "_delete_archived", crash)
    with pytest.raises(RuntimeError, match="worker died"):
        archive_succeeded(root, DAY, now=NOW)
    monkeypatch.undo()
    assert len(_ids(archive_uri(root))) == 9_000  # in both tables until the re-run
    assert len(_ids(queue.table_uri)) == 9_010
    archive_version = DeltaTable(archive_uri(root)).version()

    assert archive_succeeded(root, DAY, now=NOW) == 9_000

    in_archive, in_queue = _ids(archive_uri(root)), _ids(queue.table_uri)
    assert sorted(in_archive) == sorted(old)
    assert sorted(in_queue) == sorted(live)
    assert Counter(in_archive + in_queue).most_common(1)[0][1] == 1
    assert DeltaTable(archive_uri(root)).version() == archive_version  # the re-run inserted nothing


def test_an_item_changed_after_a_crashed_round_is_never_lost(
    root: str, queue: PositionQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    requeued, remarked, plain = _succeeded(queue, 3, NOW - 3 * DAY)
    monkeypatch.setattr(upkeep, "_delete_archived", lambda *a, **k: 0)  # the round stops after its insert
    assert archive_succeeded(root, DAY, now=NOW) == 0
    monkeypatch.undo()
    # Meanwhile an operator sets one back to FAILED and another is marked SUCCESS again (still long ago).
    queue.mark_failed(requeued, "recheck", now=NOW - 2 * DAY)
    queue.mark_success(remarked, now=NOW - 2 * DAY)

    assert archive_succeeded(root, DAY, now=NOW) == 2

    table = queue.read()
    assert table["request_id"].to_list() == [requeued]  # not SUCCESS: stays, to be processed again
    assert table["status"].to_list() == [QueueStatus.FAILED]
    archived = _rows(archive_uri(root))
    assert {plain, remarked} <= set(archived["request_id"])
    updated = dict(zip(archived["request_id"], archived["updated_at"], strict=True))
    assert updated[remarked] == NOW - 2 * DAY  # the archive holds the version that left the queue


def test_a_claim_after_archiving_20000_items_reads_only_the_live_rows(root: str, queue: PositionQueue) -> None:
    _succeeded(queue, 20_000, NOW - 3 * DAY)
    queue.insert_many([(50_000 + i, "P") for i in range(50)])
    assert compact(queue.table_uri).after.files == 1  # type: ignore[union-attr]
    # Compacted, the live items share a file with the history: a claim rewrites all of it.
    assert queue.claim(None, limit=10, claimed_by="run-before", now=NOW).height == 10
    before = DeltaTable(queue.table_uri).history(1)[0]["operationMetrics"]
    assert before["num_target_rows_copied"] + before["num_target_rows_updated"] == 20_050

    assert archive_succeeded(root, DAY, now=NOW) == 20_000
    assert compact(queue.table_uri).skipped is None

    state = table_state(queue.table_uri)
    assert state is not None
    assert (state.rows, state.files) == (50, 1)
    assert queue.claim(None, limit=10, claimed_by="run-after", now=NOW).height == 10
    after = DeltaTable(queue.table_uri).history(1)[0]["operationMetrics"]
    assert after["num_target_rows_updated"] == 10
    assert after["num_target_rows_copied"] + after["num_target_rows_updated"] == 50
    assert len(_ids(archive_uri(root))) == 20_000


# Files


def test_compaction_turns_200_appends_into_one_file_with_the_same_rows(small_files_queue: PositionQueue) -> None:
    queue = small_files_queue
    rows = _rows(queue.table_uri)

    step = compact(queue.table_uri)

    assert step.skipped is None
    assert step.before is not None and step.after is not None
    assert (step.before.files, step.after.files) == (200, 1)
    assert step.details["files_removed"] == 200
    assert step.after.version == step.before.version + 1
    compacted = _rows(queue.table_uri)
    assert compacted.height == 200
    assert _checksum(compacted) == _checksum(rows)
    assert compact(queue.table_uri).details["files_removed"] == 0  # nothing left to do


def test_position_updates_compaction_leaves_today_alone(root: str) -> None:
    uri = lake.ensure_position_updates_table(root)
    today = NOW.date()
    days = [today - 3 * DAY, today - 2 * DAY, today - DAY]
    table = DeltaTable(uri)
    for batch in range(30):
        write_deltalake(table, _update_rows(days[batch % 3], batch), mode="append")
    for batch in range(5):
        write_deltalake(table, _update_rows(today, batch), mode="append")
    rows = pl.scan_delta(uri).collect()
    today_files = {f for f in _referenced(uri) if f.startswith(f"snapshot_date={today}/")}
    assert len(today_files) == 5

    step = compact(uri, partition_filters=closed_days(today))

    assert step.skipped is None
    assert step.before is not None and step.after is not None
    assert (step.before.files, step.after.files) == (35, 3 + 5)
    assert step.details["partitions_optimized"] == 3
    files = _referenced(uri)
    assert today_files <= files  # the day being appended is untouched
    assert Counter(f.split("/")[0] for f in files - today_files) == {f"snapshot_date={d}": 1 for d in days}
    after = pl.scan_delta(uri).collect()
    assert after.height == rows.height == 105
    assert _checksum(after) == _checksum(rows)


def test_vacuum_keeps_replaced_files_for_the_retention_then_deletes_them(small_files_queue: PositionQueue) -> None:
    uri = small_files_queue.table_uri
    rows = _rows(uri)
    replaced_version = DeltaTable(uri).version()
    compact(uri)
    assert len(_data_files(uri)) == 201

    fresh = vacuum(uri, timedelta(hours=1))
    assert fresh.details["files_deleted"] == 0  # replaced a moment ago: a reader of the older version needs them
    old_snapshot = DeltaTable(uri)
    old_snapshot.load_as_version(replaced_version)
    assert _checksum(pl.scan_delta(old_snapshot).collect()) == _checksum(rows)

    # Files a writer is still writing are not in the log yet either: only old ones may go.
    some = sorted(_data_files(uri))[0]
    shutil.copy(Path(uri, some), Path(uri, "part-orphan-old.parquet"))
    shutil.copy(Path(uri, some), Path(uri, "part-orphan-new.parquet"))
    two_hours_ago = time.time() - 7_200
    os.utime(Path(uri, "part-orphan-old.parquet"), (two_hours_ago, two_hours_ago))
    _age_removals(uri, timedelta(hours=2))

    step = vacuum(uri, timedelta(hours=1))

    assert step.skipped is None
    assert step.details["files_deleted"] == 201
    assert _data_files(uri) == _referenced(uri) | {"part-orphan-new.parquet"}
    assert _checksum(_rows(uri)) == _checksum(rows)
    for out_of_range in (timedelta(minutes=59), timedelta(days=7, hours=1)):
        with pytest.raises(ValueError, match="from 1:00:00 to 7 days"):
            vacuum(uri, out_of_range)


def test_checkpoint_lets_readers_start_from_one_file(queue: PositionQueue) -> None:
    for i in range(5):
        queue.insert(i + 1, f"S{i}")
    step = checkpoint(queue.table_uri)
    assert step.skipped is None
    version = DeltaTable(queue.table_uri).version()
    assert step.details["checkpoint_version"] == version
    log = Path(queue.table_uri, "_delta_log")
    assert (log / f"{version:020d}.checkpoint.parquet").exists()
    assert json.loads((log / "_last_checkpoint").read_text())["version"] == version
    assert len(_rows(queue.table_uri)) == 5


def test_steps_on_an_absent_table_are_skipped(root: str) -> None:
    uri = archive_uri(root)
    for step in (compact(uri), checkpoint(uri), vacuum(uri)):
        assert step.skipped == "no table"
    assert not os.path.exists(uri)


def test_a_compaction_that_keeps_losing_to_a_writer_is_reported_skipped(
    queue: PositionQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [queue.insert(i + 1, f"S{i}") for i in range(20)]
    real = upkeep._compact_once
    races = {"left": 10}

    def with_a_mark_in_between(dt: DeltaTable, *args: Any) -> dict[str, Any]:
        # The table was read; a producer's mark rewrites a file it holds before the compaction commits.
        if races["left"]:
            races["left"] -= 1
            queue.mark_success(ids[0], now=NOW)
        return real(dt, *args)

    monkeypatch.setattr(upkeep, "_compact_once", with_a_mark_in_between)
    lost = compact(queue.table_uri, attempts=3)
    assert lost.skipped is not None and "lost to concurrent writers 3 times" in lost.skipped
    assert lost.before == lost.after
    assert table_state(queue.table_uri).files == 20  # type: ignore[union-attr]

    races["left"] = 1  # one more race, then it wins its second try
    won = compact(queue.table_uri, attempts=3)
    assert won.skipped is None
    assert won.after is not None and won.after.files == 1
    assert len(_rows(queue.table_uri)) == 20


@pytest.mark.timeout(90)
def test_claims_running_while_upkeep_runs_lose_nothing(root: str, queue: PositionQueue) -> None:
    old = _succeeded(queue, 1_500, datetime.now(UTC) - 3 * DAY)
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
        upkeep.run_upkeep(logging.getLogger("test_upkeep"), config, root)
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
    assert sorted(_ids(archive_uri(root))) == sorted(old)


# Dagster


def test_the_job_archives_compacts_and_reports(root: str, queue: PositionQueue) -> None:
    now = datetime.now(UTC)
    _succeeded(queue, 30, now - 2 * DAY)
    for i in range(10):
        queue.insert(1_000 + i, "P")
    uri = lake.ensure_position_updates_table(root)
    for day in (now.date() - DAY, now.date()):
        for batch in range(12):
            write_deltalake(uri, _update_rows(day, batch), mode="append")

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
    assert len(_ids(archive_uri(root))) == 30
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
    limits = yaml.safe_load((REPO / "dagster.yaml").read_text())["run_coordinator"]["config"]["tag_concurrency_limits"]
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
    old = _succeeded(queue, 5, datetime.now(UTC) - 3 * DAY)
    for i in range(12):
        queue.insert(100 + i, f"P{i}")
    uri = lake.ensure_position_updates_table(root)
    today = datetime.now(UTC).date()
    for day in (today - DAY, today):
        for batch in range(12):
            write_deltalake(uri, _update_rows(day, batch), mode="append")
    queue_rows, update_rows = _rows(queue.table_uri), pl.scan_delta(uri).collect()
    yesterday_files = {f for f in _referenced(uri) if f.startswith(f"snapshot_date={today - DAY}/")}

    meta = run_upkeep(logging.getLogger("test_upkeep"), UpkeepConfig(compact_only=True), root)

    assert meta["upkeep"] == "compaction only" and "rows archived" not in meta
    assert not os.path.exists(archive_uri(root))  # nothing archived: the old SUCCESS items stay until the full run
    assert set(old) <= set(_ids(queue.table_uri))
    assert table_state(queue.table_uri).files == 1  # type: ignore[union-attr]
    assert _checksum(_rows(queue.table_uri)) == _checksum(queue_rows)
    files = _referenced(uri)
    assert yesterday_files <= files  # closed days wait for the full run
    assert len([f for f in files if f.startswith(f"snapshot_date={today}/")]) == 1
    assert _checksum(pl.scan_delta(uri).collect()) == _checksum(update_rows)
    assert not list(Path(uri, "_delta_log").glob("*.checkpoint.parquet"))  # no checkpoint, no vacuum
    assert "vacuum" not in str(meta["steps"]) and "checkpoint" not in str(meta["steps"])

    # A few more small files are not worth a commit.
    for batch in range(COMPACT_MIN_SMALL_FILES - 2):
        write_deltalake(uri, _update_rows(today, 100 + batch), mode="append")
    versions = DeltaTable(queue.table_uri).version(), DeltaTable(uri).version()
    run_upkeep(logging.getLogger("test_upkeep"), UpkeepConfig(compact_only=True), root)
    assert (DeltaTable(queue.table_uri).version(), DeltaTable(uri).version()) == versions


def test_hot_compaction_leaves_files_that_reached_the_target_alone(root: str) -> None:
    uri = lake.ensure_position_updates_table(root)
    today = NOW.date()
    write_deltalake(uri, _update_rows(today, 0, size=5_000), mode="append")
    [big] = _referenced(uri)
    big_size = Path(uri, big).stat().st_size
    for batch in range(1, 13):
        write_deltalake(uri, _update_rows(today, batch), mode="append")
    rows = pl.scan_delta(uri).collect()
    assert small_files(uri, target_size=big_size) == 12

    step = compact(uri, partition_filters=open_days(today), target_size=big_size, min_small_files=10)

    assert step.details["files_removed"] == 12  # the big file is not rewritten again
    assert big in _referenced(uri) and len(_referenced(uri)) == 2
    assert _checksum(pl.scan_delta(uri).collect()) == _checksum(rows)
    assert small_files(uri, target_size=big_size) == 1


def test_small_files_are_counted_per_partition_and_the_plans_use_the_hot_target(root: str) -> None:
    uri = lake.ensure_position_updates_table(root)
    for batch in range(5):
        write_deltalake(uri, _update_rows(NOW.date() - DAY, batch), mode="append")
    for batch in range(3):
        write_deltalake(uri, _update_rows(NOW.date(), batch), mode="append")
    assert small_files(uri) == 5
    assert small_files(uri, partition_filters=open_days(NOW.date())) == 3  # the partitions compaction will touch
    assert small_files(uri, target_size=1) == 0
    assert small_files(lake.table_uri(root, lake.QUEUE_TABLE)) == 0  # no table

    today = NOW.date()
    assert compactions(lake.QUEUE_TABLE, full=False, today=today) == [
        {"target_size": HOT_TARGET_SIZE, "min_small_files": COMPACT_MIN_SMALL_FILES}
    ]
    assert compactions(lake.POSITION_UPDATES_TABLE, full=True, today=today) == [
        {"partition_filters": closed_days(today)},
        {"target_size": HOT_TARGET_SIZE, "min_small_files": None, "partition_filters": open_days(today)},
    ]
    assert compactions(lake.ARCHIVE_TABLE, full=False, today=today) == []
    assert compactions(lake.ARCHIVE_TABLE, full=True, today=today) == [{}]
