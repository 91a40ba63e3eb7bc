"""The position queue on real Delta tables under tmp_path: input checks (accounts included), ordering, claims across
processes (PENDING and retryable FAILED items), marks, retries with exponential backoff, the claims counter, releasing
dead runs' claims, the legacy import, and a table past the 8,192-row MERGE threshold (delta-io/delta-rs#4471)."""

from __future__ import annotations

import multiprocessing
import queue as stdlib_queue
import time
import traceback
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from position_pipeline.core import lake
from position_pipeline.core.queue import (
    PositionQueue,
    QueuedPosition,
    QueueInputError,
    QueueStatus,
    retry_delay,
)
from position_pipeline.core.queue import inputs as queue_inputs

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return lake.table_uri(str(tmp_path / "lake"), lake.QUEUE_TABLE)


@pytest.fixture
def queue(uri: str) -> PositionQueue:
    return PositionQueue(uri)


def version(uri: str) -> int:
    return DeltaTable(uri).version()


# Table and lake basics


def test_table_is_created_lazily_with_the_declared_schema(uri: str) -> None:
    q = PositionQueue(uri)
    assert not DeltaTable.is_deltatable(uri), "constructing a queue must not touch storage"

    assert q.counts() == dict.fromkeys(QueueStatus, 0)

    assert q.read().schema == lake.QUEUE_SCHEMA
    fields = {f.name: f for f in DeltaTable(uri).schema().fields}
    assert [name for name, f in fields.items() if f.nullable] == [
        "account",
        "error_message",
        "retry_after",
        "claimed_by",
        "claimed_at",
    ]
    assert fields["created_at"].type.type == "timestamp"  # Delta's UTC timestamp, not timestamp_ntz
    assert fields["retry_after"].type.type == "timestamp"
    assert (fields["claims"].type.type, fields["claims"].nullable) == ("integer", False)


def test_refuses_a_table_with_another_schema(tmp_path: Path) -> None:
    other = str(tmp_path / "other")
    write_deltalake(other, pl.DataFrame({"x": [1]}).to_arrow())
    with pytest.raises(ValueError, match="not a position queue table"):
        PositionQueue(other).counts()


def test_table_uri_and_storage_options() -> None:
    assert lake.table_uri("/data/lake/", "position_queue") == "/data/lake/positions/position_queue"
    assert lake.table_uri("s3://bucket/lake/", "position_queue") == "s3://bucket/lake/positions/position_queue"
    with pytest.raises(ValueError):
        lake.table_uri("/data/lake", "a/b")
    with pytest.raises(ValueError, match="atomic"):
        PositionQueue("s3://bucket/lake/q", {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"})
    assert lake.checked_storage_options({"AWS_REGION": "eu-west-1"}) == {"AWS_REGION": "eu-west-1"}


# Producers and ordering


def test_insert_and_get_batch_oldest_first(queue: PositionQueue, uri: str) -> None:
    first = queue.insert(101, "AAPL")
    batch_ids = queue.insert_many(
        [
            {"conid": 102, "symbol": "MSFT"},
            (103, "GOOG", 2),
            (104, "TSLA", 1),
            {"conid": "105", "symbol": " NVDA ", "priority": 2},
        ]
    )
    last = queue.insert(106, "AMZN", priority=2)
    assert len(set([first, *batch_ids, last])) == 6
    assert all(uuid.UUID(hex=i).hex == i and uuid.UUID(hex=i).version == 4 for i in batch_ids)
    before = version(uri)

    monitoring = queue.get_batch()
    assert [p.conid for p in monitoring] == [101, 102, 103, 105, 106]
    assert [p.symbol for p in monitoring][3] == "NVDA"
    assert [p.request_id for p in monitoring] == [first, batch_ids[0], batch_ids[1], batch_ids[3], last]
    assert [p.conid for p in queue.get_batch(priority=1)] == [104]
    assert [p.conid for p in queue.get_batch(limit=2)] == [101, 102]
    assert [p.conid for p in queue.get_batch(priority=None)] == [104, 101, 102, 103, 105, 106]
    assert queue.get_batch(status="SUCCESS") == []

    item = monitoring[0]
    assert isinstance(item, QueuedPosition)
    assert item.status is QueueStatus.PENDING
    assert item.created_at.utcoffset() == timedelta(0) and item.created_at.tzinfo is not None
    assert item.attempts == 0 and item.claimed_by is None and item.error_message is None
    assert version(uri) == before, "get_batch must not write"


def test_insert_many_is_one_commit(queue: PositionQueue, uri: str) -> None:
    queue.insert(1, "A")
    before = version(uri)
    queue.insert_many([(i, f"S{i}") for i in range(2, 52)])
    assert version(uri) == before + 1
    assert queue.insert_many([]) == []
    assert version(uri) == before + 1


BAD_ITEMS = [
    pytest.param({"symbol": "X"}, "conid", "missing", id="conid-missing"),
    pytest.param({"conid": None, "symbol": "X"}, "conid", "missing", id="conid-none"),
    pytest.param({"conid": "abc", "symbol": "X"}, "conid", "integer", id="conid-text"),
    pytest.param({"conid": 1.5, "symbol": "X"}, "conid", "integer", id="conid-float"),
    pytest.param({"conid": True, "symbol": "X"}, "conid", "integer", id="conid-bool"),
    pytest.param({"conid": 0, "symbol": "X"}, "conid", "positive", id="conid-zero"),
    pytest.param((-3, "X"), "conid", "positive", id="conid-negative"),
    pytest.param({"conid": 2**63, "symbol": "X"}, "conid", "int64", id="conid-too-big"),
    pytest.param({"conid": 7, "symbol": ""}, "symbol", "blank", id="symbol-empty"),
    pytest.param((7, "   "), "symbol", "blank", id="symbol-blank"),
    pytest.param({"conid": 7}, "symbol", "missing", id="symbol-missing"),
    pytest.param((7, 123), "symbol", "string", id="symbol-not-text"),
    pytest.param((7, "X", 3), "priority", "1 (active) or 2", id="priority-unknown"),
    pytest.param((7, "X", 0), "priority", "1 (active) or 2", id="priority-zero"),
    pytest.param({"conid": 7, "symbol": "X", "priority": "high"}, "priority", "integer", id="priority-text"),
    pytest.param({"conid": 7, "symbol": "X", "prio": 1}, "prio", "not a queue field", id="unknown-key"),
    pytest.param((7,), "item", "1 values", id="tuple-too-short"),
    pytest.param((7, "X", 2, "DU1", "extra"), "item", "5 values", id="tuple-too-long"),
    pytest.param({"conid": 7, "symbol": "X", "account": ""}, "account", "letters and digits", id="account-empty"),
    pytest.param((7, "X", 2, "DU 1"), "account", "letters and digits", id="account-inner-space"),
    pytest.param((7, "X", 2, " DU1"), "account", "letters and digits", id="account-leading-space"),
    pytest.param((7, "X", 2, "DU-1"), "account", "letters and digits", id="account-punctuation"),
    pytest.param({"conid": 7, "symbol": "X", "account": 1000001}, "account", "string", id="account-not-text"),
    pytest.param(42, "item", "expected a dict", id="not-an-item"),
]


@pytest.mark.parametrize(("bad", "field", "problem"), BAD_ITEMS)
def test_insert_many_refuses_bad_items_and_writes_nothing(
    queue: PositionQueue, uri: str, bad: Any, field: str, problem: str
) -> None:
    queue.insert(1, "KEEP")
    before = version(uri)

    with pytest.raises(QueueInputError) as raised:
        queue.insert_many([(10, "OK"), {"conid": 11, "symbol": "OK"}, bad, (12, "OK")])

    error = raised.value
    assert isinstance(error, ValueError)
    assert (error.row, error.field) == (2, field)
    assert f"row 2: {field}:" in str(error)
    assert problem in str(error)
    assert version(uri) == before
    assert queue.read()["symbol"].to_list() == ["KEEP"]


def test_every_bad_field_is_reported(queue: PositionQueue) -> None:
    with pytest.raises(QueueInputError) as raised:
        queue.insert_many([(1, "A"), (0, " ", 9)])
    assert [(p.row, p.field) for p in raised.value.problems] == [(1, "conid"), (1, "symbol"), (1, "priority")]


def test_insert_refuses_bad_single_item(queue: PositionQueue, uri: str) -> None:
    with pytest.raises(QueueInputError, match=r"row 0: conid: must be positive"):
        queue.insert(-1, "X")
    with pytest.raises(QueueInputError, match=r"row 0: priority"):
        queue.insert(5, "X", priority=7)
    assert queue.counts()[QueueStatus.PENDING] == 0


def test_enqueue_csv(queue: PositionQueue, tmp_path: Path) -> None:
    path = tmp_path / "positions.csv"
    path.write_text("conid,symbol,priority\n201,IBM,1\n202,ORCL,\n\n203,SAP,2\n")
    ids = queue.enqueue_csv(path)
    assert len(ids) == 3
    rows = queue.read()
    assert rows.select("conid", "symbol", "priority").rows() == [(201, "IBM", 1), (202, "ORCL", 2), (203, "SAP", 2)]

    two_columns = tmp_path / "two.csv"
    two_columns.write_text("symbol,conid\nBP,301\n")
    queue.enqueue_csv(two_columns)
    assert queue.get_batch(limit=10)[-1].conid == 301


def test_enqueue_csv_reports_progress(queue: PositionQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_inputs, "PROGRESS_EVERY", 2)
    path = tmp_path / "positions.csv"
    path.write_text("conid,symbol\n1,A\n2,B\n\n3,C\nx,D\n5,E\n")
    heard: list[str] = []

    with pytest.raises(QueueInputError):
        queue.enqueue_csv(path, progress=heard.append)
    assert heard == ["read 2 rows (line 3)", "read 4 rows (line 6), 1 bad"]  # no commit step: nothing written

    path.write_text("conid,symbol\n1,A\n2,B\n3,C\n")
    heard.clear()
    queue.enqueue_csv(path, progress=heard.append)
    assert heard == ["read 2 rows (line 3)", "3 rows valid; writing them in one commit", "committed 3 items"]


@pytest.mark.parametrize(
    ("text", "row", "line", "field"),
    [
        pytest.param("conid,symbol\n1,A\n2,B\nabc,C\n4,D\n", 2, 4, "conid", id="bad-conid"),
        pytest.param("conid,symbol\n1,A\n\n2,\n", 1, 4, "symbol", id="blank-symbol-after-blank-line"),
        pytest.param("conid,symbol,priority\n1,A,1\n2,B,5\n", 1, 3, "priority", id="unknown-priority"),
        pytest.param('conid,symbol\n1,"multi\nline"\n-2,B\n', 1, 4, "conid", id="quoted-newline"),
        pytest.param("conid,symbol\n1,A,extra\n", 0, 2, "row", id="too-many-fields"),
        pytest.param("conid,symbol\n1\n", 0, 2, "symbol", id="too-few-fields"),
        pytest.param("conid,ticker\n1,A\n", None, 1, "symbol", id="missing-column"),
        pytest.param("conid,symbol,venue\n1,A,X\n", None, 1, "venue", id="unknown-column"),
        pytest.param("conid,symbol,conid\n1,A,2\n", None, 1, "conid", id="repeated-column"),
        pytest.param("", None, 1, "header", id="empty-file"),
    ],
)
def test_enqueue_csv_refuses_a_bad_row_and_writes_nothing(
    queue: PositionQueue, uri: str, tmp_path: Path, text: str, row: int | None, line: int, field: str
) -> None:
    queue.insert(1, "KEEP")
    before = version(uri)
    path = tmp_path / "bad.csv"
    path.write_text(text)

    with pytest.raises(QueueInputError) as raised:
        queue.enqueue_csv(path)

    error = raised.value
    assert (error.row, error.line, error.field) == (row, line, field)
    where = f"line {line}" if row is None else f"row {row} (line {line})"
    assert f"{where}: {field}:" in str(error)
    assert version(uri) == before


# Claims and marks in one process


def test_claim_takes_oldest_pending_and_marks_finish_them(queue: PositionQueue, uri: str) -> None:
    ids = queue.insert_many([(i, f"S{i}") for i in range(1, 8)])
    queue.insert(99, "ACTIVE", priority=1)
    now = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    before = version(uri)

    claimed = queue.claim(limit=5, claimed_by="run-1", now=now)

    assert version(uri) == before + 1
    assert claimed.schema == lake.QUEUE_SCHEMA
    assert claimed["request_id"].to_list() == ids[:5]
    assert set(claimed["status"]) == {"PROCESSING"} and set(claimed["claimed_by"]) == {"run-1"}
    assert set(claimed["claimed_at"]) == {now}
    assert queue.counts() == {
        QueueStatus.PENDING: 3,
        QueueStatus.PROCESSING: 5,
        QueueStatus.SUCCESS: 0,
        QueueStatus.FAILED: 0,
    }

    assert queue.mark_success(ids[:3], claimed_by="run-1") == 3
    assert queue.mark_failed_many({ids[3]: "no position", ids[4]: "timeout"}, claimed_by="run-1") == 2
    assert version(uri) == before + 3
    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert [rows[i]["status"] for i in ids[:5]] == ["SUCCESS"] * 3 + ["FAILED"] * 2
    assert (rows[ids[3]]["error_message"], rows[ids[3]]["attempts"]) == ("no position", 1)

    assert queue.release([ids[3]], claimed_by="run-1") == 1
    again = queue.claim(limit=10, claimed_by="run-2")
    assert again["request_id"].to_list() == [ids[3], ids[5], ids[6]]  # the released one is oldest
    assert queue.mark_failed(ids[3], "still no position", claimed_by="run-2") == 1
    assert queue.read().filter(pl.col("request_id") == ids[3])["attempts"].item() == 2

    assert queue.claim(priority=1, limit=10, claimed_by="run-3")["conid"].to_list() == [99]
    assert queue.claim(limit=10, claimed_by="run-4").is_empty()


def test_marks_from_a_stale_run_are_ignored(queue: PositionQueue) -> None:
    ids = queue.insert_many([(i, f"S{i}") for i in range(1, 5)])
    queue.claim(limit=4, claimed_by="run-old")
    assert queue.release(ids) == 4  # e.g. an operator recovering a run that timed out
    assert queue.claim(limit=4, claimed_by="run-new")["request_id"].to_list() == ids

    assert queue.mark_success(ids, claimed_by="run-old") == 0
    assert queue.mark_failed_many(dict.fromkeys(ids, "late"), claimed_by="run-old") == 0
    assert queue.release(ids, claimed_by="run-old") == 0
    rows = queue.read()
    assert set(rows["status"]) == {"PROCESSING"} and set(rows["claimed_by"]) == {"run-new"}
    assert rows["error_message"].null_count() == 4

    assert queue.mark_success(ids[:2], claimed_by="run-new") == 2
    assert queue.mark_failed_many({ids[0]: "after success"}, claimed_by="run-new") == 0  # finished stays finished
    assert queue.release(ids[:2]) == 0  # SUCCESS is never reopened
    assert queue.mark_success(ids[2]) == 1  # the design note's call: a single id, no claim check
    assert queue.counts()[QueueStatus.SUCCESS] == 3


def test_release_stale_recovers_only_old_unchanged_claims(queue: PositionQueue) -> None:
    ids = queue.insert_many([(i, f"S{i}") for i in range(1, 5)])
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    queue.claim(limit=2, claimed_by="run-dead", now=t0)
    queue.claim(limit=1, claimed_by="run-alive", now=t0 + timedelta(minutes=9))

    assert queue.release_stale(timedelta(minutes=5), now=t0 + timedelta(minutes=10)) == 2
    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert [rows[i]["status"] for i in ids] == ["PENDING", "PENDING", "PROCESSING", "PENDING"]
    assert rows[ids[0]]["claimed_by"] is None and rows[ids[2]]["claimed_by"] == "run-alive"
    assert queue.release_stale(timedelta(minutes=5), now=t0 + timedelta(minutes=10)) == 0


def test_marks_validate_ids_and_skip_empty_input(queue: PositionQueue, uri: str) -> None:
    queue.insert(1, "A")
    before = version(uri)
    assert queue.mark_success([]) == 0
    assert queue.mark_failed_many({}) == 0
    assert queue.mark_success(["unknown-id"], claimed_by="run-1") == 0
    assert version(uri) == before  # neither empty input nor a MERGE that matched nothing commits
    with pytest.raises(QueueInputError, match="row 1: request_id"):
        queue.mark_success(["x", ""])
    with pytest.raises(ValueError, match="claimed_by"):
        queue.claim(claimed_by=" ")
    with pytest.raises(ValueError, match="timezone-aware"):
        queue.claim(claimed_by="run-1", now=datetime(2030, 1, 1))


@pytest.mark.timeout(60)
def test_claim_and_mark_on_a_table_past_the_merge_batch_size(queue: PositionQueue) -> None:
    """MERGE in deltalake 1.6.x raised false "multiple source rows" errors past 8,192 target rows (#4471)."""
    queue.insert_many([(i, f"S{i}") for i in range(1, 10_001)])
    queue.insert_many([(i, f"S{i}") for i in range(10_001, 10_501)])

    started = time.perf_counter()
    claimed = queue.claim(limit=50, claimed_by="run-big")
    elapsed = time.perf_counter() - started

    assert claimed["conid"].to_list() == list(range(1, 51))
    ids = claimed["request_id"].to_list()
    assert queue.mark_success(ids[:25], claimed_by="run-big") == 25
    assert queue.mark_failed_many(dict.fromkeys(ids[25:], "boom"), claimed_by="run-big") == 25
    assert queue.release(ids[25:], claimed_by="run-big") == 25
    assert queue.counts() == {
        QueueStatus.PENDING: 10_475,
        QueueStatus.PROCESSING: 0,
        QueueStatus.SUCCESS: 25,
        QueueStatus.FAILED: 0,
    }
    assert queue.read()["request_id"].n_unique() == 10_500
    assert elapsed < 10, f"a 50-item claim on 10,500 rows took {elapsed:.2f} s"

    # A source past the threshold too (#4572): one claim and one mark of 9,000 items.
    many = queue.claim(limit=9_000, claimed_by="run-many")["request_id"]
    assert many.len() == many.n_unique() == 9_000
    assert queue.mark_success(many, claimed_by="run-many") == 9_000
    assert queue.counts()[QueueStatus.SUCCESS] == 9_025


# Claims across processes


def _claim_until_empty(uri: str, run: str, limit: int, start: Any, results: Any) -> None:
    """Child process: claim batches until the queue has no PENDING item left; report every id it got.

    A claim that loses every retry raises CommitFailedError having claimed nothing; like a run on its next tick,
    this worker then simply claims again (on an overloaded machine four claimers can starve one another).
    """
    try:
        q = PositionQueue(uri)
        got: list[str] = []
        start.wait(timeout=30)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                batch = q.claim(limit=limit, claimed_by=run)
            except CommitFailedError:
                continue
            if batch.is_empty():
                break
            got.extend(batch["request_id"].to_list())
        results.put((run, got, None))
    except Exception:
        results.put((run, [], traceback.format_exc()))


def _produce(uri: str, name: str, first_conid: int, batches: int, size: int, results: Any) -> None:
    """Child process: insert `batches` batches (a separate commit each), with conids even and odd."""
    try:
        q = PositionQueue(uri)
        ids: list[str] = []
        for b in range(batches):
            base = first_conid + b * size
            ids.extend(q.insert_many([(base + i + 1, f"{name}-{b}-{i}") for i in range(size)]))
            time.sleep(0.02)
        results.put((name, ids, None))
    except Exception:
        results.put((name, [], traceback.format_exc()))


def _consume(uri: str, run: str, producers_done: Any, results: Any) -> None:
    """Child process: claim and mark (even conid SUCCESS, odd FAILED) until producers are done and nothing is left."""
    try:
        q = PositionQueue(uri)
        seen: list[str] = []
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            finished = producers_done.is_set()
            batch = q.claim(priority=None, limit=15, claimed_by=run)
            if batch.is_empty():
                if finished:
                    break
                time.sleep(0.05)
                continue
            even = batch.filter(pl.col("conid") % 2 == 0)["request_id"].to_list()
            odd = batch.filter(pl.col("conid") % 2 == 1)["request_id"].to_list()
            assert q.mark_success(even, claimed_by=run) == len(even)
            assert q.mark_failed_many(dict.fromkeys(odd, "odd conid"), claimed_by=run) == len(odd)
            seen.extend(batch["request_id"].to_list())
        results.put((run, seen, None))
    except Exception:
        results.put((run, [], traceback.format_exc()))


def _collect(results: Any, expected: int, timeout: float) -> dict[str, list[str]]:
    """Every child's report, failing the test with the child's traceback if one raised."""
    reports: dict[str, list[str]] = {}
    deadline = time.monotonic() + timeout
    for _ in range(expected):
        try:
            name, ids, error = results.get(timeout=max(0.1, deadline - time.monotonic()))
        except stdlib_queue.Empty:
            pytest.fail(f"only {len(reports)} of {expected} child processes reported within {timeout} s")
        assert error is None, f"{name} failed:\n{error}"
        reports[name] = ids
    return reports


def _join(processes: list[Any]) -> None:
    for p in processes:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            pytest.fail(f"{p.name} did not exit")
        assert p.exitcode == 0


@pytest.mark.timeout(90)
def test_concurrent_claimers_never_share_an_item(queue: PositionQueue, uri: str) -> None:
    ids = queue.insert_many([(i, f"S{i}") for i in range(1, 401)])
    start = SPAWN.Event()
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=_claim_until_empty, args=(uri, f"run-{n}", 10, start, results), name=f"claimer-{n}")
        for n in range(4)
    ]
    for p in processes:
        p.start()
    start.set()
    reports = _collect(results, len(processes), timeout=60)
    _join(processes)

    claimed = [i for got in reports.values() for i in got]
    duplicates = [i for i, n in Counter(claimed).items() if n > 1]
    assert duplicates == []
    assert sorted(claimed) == sorted(ids)
    table = queue.read()
    owner = dict(zip(table["request_id"], table["claimed_by"], strict=True))
    assert all(owner[i] == run for run, got in reports.items() for i in got)
    assert set(table["status"]) == {"PROCESSING"}


@pytest.mark.timeout(90)
def test_producers_and_a_consumer_lose_nothing(uri: str) -> None:
    """Producers append while a run claims and marks, starting from no table at all (creation races too)."""
    results = SPAWN.Queue()
    producers_done = SPAWN.Event()
    producers = [
        SPAWN.Process(
            target=_produce, args=(uri, f"producer-{n}", 100_000 * (n + 1), 8, 10, results), name=f"producer-{n}"
        )
        for n in range(2)
    ]
    consumer = SPAWN.Process(target=_consume, args=(uri, "run-c", producers_done, results), name="consumer")
    for p in [*producers, consumer]:
        p.start()
    for p in producers:
        p.join(timeout=60)
    producers_done.set()
    reports = _collect(results, 3, timeout=60)
    _join([*producers, consumer])

    produced = reports["producer-0"] + reports["producer-1"]
    assert len(produced) == len(set(produced)) == 160
    assert sorted(reports["run-c"]) == sorted(produced)

    table = PositionQueue(uri).read()
    assert table.height == 160 and table["request_id"].n_unique() == 160
    assert set(table["request_id"]) == set(produced)
    expected = pl.when(pl.col("conid") % 2 == 0).then(pl.lit("SUCCESS")).otherwise(pl.lit("FAILED"))
    assert table.filter(pl.col("status") != expected).is_empty()
    assert set(table["claimed_by"]) == {"run-c"}


# The original design's queue


def _legacy_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=lake.LEGACY_QUEUE_SCHEMA)


LEGACY_ROWS = [
    {
        "request_id": "0b9e1f4e-1111-4a1e-9c1a-000000000001",
        "conid": 501,
        "symbol": "SPY",
        "priority": 2,
        "status": "PENDING",
        "created_at": "2025-03-01T09:30:00",
        "updated_at": "2025-03-01T09:30:00",
        "error_message": None,
    },
    {
        "request_id": "0b9e1f4e-1111-4a1e-9c1a-000000000002",
        "conid": 502,
        "symbol": "QQQ",
        "priority": 1,
        "status": "PROCESSING",
        "created_at": "2025-03-01 09:31:00.123456",
        "updated_at": "2025-03-01 09:31:05",
        "error_message": None,
    },
    {
        "request_id": "0b9e1f4e-1111-4a1e-9c1a-000000000003",
        "conid": 503,
        "symbol": "IWM",
        "priority": 2,
        "status": "SUCCESS",
        "created_at": "2025-03-01T09:32:00+02:00",
        "updated_at": "2025-03-01T09:33:00+02:00",
        "error_message": None,
    },
    {
        "request_id": "0b9e1f4e-1111-4a1e-9c1a-000000000004",
        "conid": 504,
        "symbol": "DIA",
        "priority": 2,
        "status": "FAILED",
        "created_at": "2025-03-01T09:34:00",
        "updated_at": "2025-03-01T09:35:00",
        "error_message": "Position 504 not found in IB",
    },
]


def test_import_legacy_adopts_every_item_once(queue: PositionQueue, uri: str, tmp_path: Path) -> None:
    legacy = str(tmp_path / "legacy_queue")
    write_deltalake(legacy, _legacy_frame(LEGACY_ROWS[:3]).to_arrow())
    queue.insert(900, "OURS")

    assert queue.import_legacy(legacy) == 3
    after_first = version(uri)
    assert queue.import_legacy(legacy) == 0
    assert version(uri) == after_first, "a re-import must not commit"

    write_deltalake(legacy, _legacy_frame(LEGACY_ROWS[3:]).to_arrow(), mode="append")
    assert queue.import_legacy(legacy) == 1

    table = queue.read()
    assert table.height == 5
    rows = {r["request_id"]: r for r in table.iter_rows(named=True)}
    first, processing, success, failed = (rows[r["request_id"]] for r in LEGACY_ROWS)
    assert first["created_at"] == datetime(2025, 3, 1, 9, 30, tzinfo=UTC)  # naive read as UTC
    assert (first["status"], first["conid"], first["symbol"], first["priority"]) == ("PENDING", 501, "SPY", 2)
    assert processing["status"] == "PENDING" and processing["claimed_by"] is None  # no surviving owner: re-queued
    assert processing["created_at"] == datetime(2025, 3, 1, 9, 31, 0, 123456, tzinfo=UTC)
    assert success["created_at"] == datetime(2025, 3, 1, 7, 32, tzinfo=UTC)  # offsets converted to UTC
    assert (failed["status"], failed["attempts"], failed["error_message"]) == (
        "FAILED",
        1,
        "Position 504 not found in IB",
    )
    imported = table.filter(pl.col("symbol") != "OURS")
    assert imported["account"].null_count() == imported["retry_after"].null_count() == 4
    assert imported["claims"].to_list() == [0] * 4
    # Imported items are ordinary queue items: oldest first, ahead of ours.
    assert queue.claim(limit=1, claimed_by="run-1")["conid"].to_list() == [501]
    # An imported FAILED item has no retry_after: it is not retried by itself (an operator's `release` re-queues it).
    assert queue.claimable_count(priority=None) == 2  # QQQ (was PROCESSING) and OURS
    assert queue.release(failed["request_id"]) == 1
    assert queue.claimable_count(priority=None) == 3


@pytest.mark.parametrize(
    ("change", "row", "field"),
    [
        pytest.param({"created_at": "yesterday"}, 1, "created_at", id="bad-timestamp"),
        pytest.param({"status": "DONE"}, 1, "status", id="unknown-status"),
        pytest.param({"conid": -5}, 1, "conid", id="bad-conid"),
        pytest.param({"symbol": " "}, 1, "symbol", id="blank-symbol"),
        pytest.param({"priority": 4}, 1, "priority", id="bad-priority"),
        pytest.param({"request_id": LEGACY_ROWS[0]["request_id"]}, 1, "request_id", id="duplicate-id"),
    ],
)
def test_import_legacy_refuses_bad_rows_and_writes_nothing(
    queue: PositionQueue, uri: str, tmp_path: Path, change: dict[str, Any], row: int, field: str
) -> None:
    legacy = str(tmp_path / "legacy_queue")
    rows = [dict(r) for r in LEGACY_ROWS]
    rows[row].update(change)
    write_deltalake(legacy, _legacy_frame(rows).to_arrow())
    queue.insert(900, "OURS")
    before = version(uri)

    with pytest.raises(QueueInputError) as raised:
        queue.import_legacy(legacy)

    assert (raised.value.row, raised.value.field) == (row, field)
    assert f"row {row}: {field}:" in str(raised.value)
    assert version(uri) == before
    assert queue.read().height == 1


# Accounts


def test_items_carry_an_optional_account(queue: PositionQueue) -> None:
    first = queue.insert(101, "AAPL", account="DU1000001")
    others = queue.insert_many(
        [
            {"conid": 102, "symbol": "MSFT", "account": "U2000002"},
            {"conid": 103, "symbol": "GOOG", "account": None},
            (104, "TSLA", 1, "DU1000001"),
            (105, "NVDA", None, "DU3"),
            (106, "AMZN"),
        ]
    )
    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert [rows[i]["account"] for i in [first, *others]] == ["DU1000001", "U2000002", None, "DU1000001", "DU3", None]
    assert rows[others[3]]["priority"] == 2  # a None priority in a 4-tuple still means monitoring
    assert queue.get_batch(limit=1)[0].account == "DU1000001"
    claimed = queue.claim(priority=None, limit=10, claimed_by="run-1")
    assert claimed.filter(pl.col("conid") == 104)["account"].item() == "DU1000001"


def test_insert_refuses_a_bad_account(queue: PositionQueue, uri: str) -> None:
    queue.insert(1, "KEEP")
    before = version(uri)
    for bad in ["", " ", "DU 1000001", "DU1000001 ", "DU_1"]:
        with pytest.raises(QueueInputError, match=r"row 0: account: must be letters and digits") as raised:
            queue.insert(2, "X", account=bad)
        assert raised.value.field == "account"
    assert version(uri) == before


def test_enqueue_csv_with_an_account_column(queue: PositionQueue, tmp_path: Path) -> None:
    path = tmp_path / "positions.csv"
    path.write_text("conid,symbol,priority,account\n201,IBM,1,DU1000001\n202,ORCL,,\n203,SAP,2,  \n")
    queue.enqueue_csv(path)
    assert queue.read().select("conid", "priority", "account").rows() == [
        (201, 1, "DU1000001"),
        (202, 2, None),
        (203, 2, None),
    ]

    reordered = tmp_path / "reordered.csv"
    reordered.write_text("account,symbol,conid\nU77,BP,301\n,SHEL,302\n")
    queue.enqueue_csv(reordered)
    assert queue.read().filter(pl.col("conid") >= 301).select("conid", "account").rows() == [(301, "U77"), (302, None)]


@pytest.mark.parametrize(
    ("text", "row", "line"),
    [
        pytest.param("conid,symbol,account\n1,A,DU1\n2,B,DU 2\n", 1, 3, id="space"),
        pytest.param("conid,symbol,priority,account\n1,A,1,DU1\n\n2,B,2,DU-2\n", 1, 4, id="punctuation"),
        pytest.param("conid,symbol,account\n1,A, DU1\n", 0, 2, id="padded"),
    ],
)
def test_enqueue_csv_refuses_a_bad_account_row(
    queue: PositionQueue, uri: str, tmp_path: Path, text: str, row: int, line: int
) -> None:
    queue.insert(1, "KEEP")
    before = version(uri)
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(QueueInputError) as raised:
        queue.enqueue_csv(path)
    assert (raised.value.row, raised.value.line, raised.value.field) == (row, line, "account")
    assert f"row {row} (line {line}): account:" in str(raised.value)
    assert version(uri) == before


# Claims counter, retries and eligibility

T0 = datetime(2030, 1, 2, 9, 30, tzinfo=UTC)


def _row(queue: PositionQueue, request_id: str) -> dict[str, Any]:
    return queue.read().filter(pl.col("request_id") == request_id).row(0, named=True)


def test_claims_counts_every_claim_and_attempts_only_failures(queue: PositionQueue) -> None:
    item = queue.insert(1, "A")
    assert (_row(queue, item)["claims"], _row(queue, item)["attempts"]) == (0, 0)

    queue.claim(claimed_by="run-1", now=T0)
    assert (_row(queue, item)["claims"], _row(queue, item)["attempts"]) == (1, 0)
    assert queue.release_runs(["run-1"]) == 1  # a dead run's claim: not a failure
    assert (_row(queue, item)["claims"], _row(queue, item)["attempts"]) == (1, 0)

    again = queue.claim(claimed_by="run-2", now=T0)
    assert again["claims"].to_list() == [2]  # what the pipeline sees: claimed before
    assert queue.release(item, claimed_by="run-2") == 1
    assert (_row(queue, item)["claims"], _row(queue, item)["attempts"]) == (2, 0)

    queue.claim(claimed_by="run-3", now=T0)
    assert queue.mark_failed(item, "timeout", claimed_by="run-3", now=T0) == 1
    assert (_row(queue, item)["claims"], _row(queue, item)["attempts"]) == (3, 1)
    assert queue.claim(claimed_by="run-4", now=T0 + timedelta(minutes=1))["claims"].to_list() == [4]
    assert queue.mark_success(item, claimed_by="run-4") == 1
    final = _row(queue, item)
    assert (final["status"], final["claims"], final["attempts"], final["retry_after"]) == ("SUCCESS", 4, 1, None)


def test_retry_delay_doubles_and_is_capped() -> None:
    assert [retry_delay(n) for n in range(3)] == [timedelta(seconds=s) for s in (30, 60, 120)]
    assert retry_delay(6) == timedelta(seconds=1920)
    assert retry_delay(7) == retry_delay(500) == retry_delay(10**6) == timedelta(hours=1)  # no overflow
    short = {"backoff": timedelta(seconds=10), "max_backoff": timedelta(seconds=25)}
    assert [retry_delay(n, **short) for n in range(4)] == [timedelta(seconds=s) for s in (10, 20, 25, 25)]
    with pytest.raises(ValueError):
        retry_delay(-1)


def test_mark_failed_sets_retry_after_from_the_attempts_before(queue: PositionQueue) -> None:
    item, other = queue.insert_many([(1, "A"), (2, "B")])
    now = T0
    expected = []
    for attempt in range(4):
        claimed = queue.claim(limit=1, claimed_by=f"run-{attempt}", now=now, max_attempts=10)
        assert claimed["request_id"].to_list() == [item]
        assert claimed["retry_after"].to_list() == [None]  # a claim clears it
        assert queue.mark_failed_many({item: f"fail {attempt}"}, claimed_by=f"run-{attempt}", now=now) == 1
        row = _row(queue, item)
        assert (row["status"], row["attempts"], row["error_message"]) == ("FAILED", attempt + 1, f"fail {attempt}")
        expected.append(row["retry_after"] - now)
        now = row["retry_after"]
    assert expected == [timedelta(seconds=s) for s in (30, 60, 120, 240)]

    # The cap, and a batch with different attempts before: each item gets its own delay.
    queue.claim(limit=2, priority=None, claimed_by="run-cap", now=now, max_attempts=10)
    at = now + timedelta(seconds=1)
    marked = queue.mark_failed_many(
        {item: "again", other: "first"}, claimed_by="run-cap", now=at, max_backoff=timedelta(minutes=5)
    )
    assert marked == 2
    assert _row(queue, item)["retry_after"] == at + timedelta(minutes=5)  # 30 s * 2**4 = 8 min, capped at 5
    assert _row(queue, other)["retry_after"] == at + timedelta(seconds=30)
    assert queue.mark_failed(item, "stale", claimed_by="run-gone", now=at) == 0  # the claim guard still holds
    with pytest.raises(ValueError, match="negative"):
        queue.mark_failed_many({item: "x"}, backoff=timedelta(seconds=-1))


def test_failed_items_are_claimable_after_retry_after_while_under_max_attempts(queue: PositionQueue, uri: str) -> None:
    failing, pending = queue.insert_many([(1, "FAILS"), (2, "WAITS")])
    queue.claim(limit=1, claimed_by="run-1", now=T0)
    queue.mark_failed(failing, "no position", claimed_by="run-1", now=T0)  # retry_after = T0 + 30 s
    assert queue.claim(priority=None, limit=1, claimed_by="noop", now=T0, max_attempts=1).height == 1
    queue.release_runs(["noop"])

    early = T0 + timedelta(seconds=29)
    assert queue.claimable_count(now=early) == 1
    before = version(uri)
    assert queue.claim(limit=5, claimed_by="run-early", now=early)["request_id"].to_list() == [pending]
    queue.release(pending, claimed_by="run-early")
    assert version(uri) == before + 2

    due = T0 + timedelta(seconds=30)  # retry_after <= now: due exactly then
    assert queue.claimable_count(now=due) == 2
    assert queue.claimable_count(now=due, max_attempts=1) == 1  # attempts 1 is not < 1
    assert queue.oldest_claimable_at(now=due) == _row(queue, failing)["created_at"]
    claimed = queue.claim(limit=5, claimed_by="run-2", now=due)
    assert claimed["request_id"].to_list() == [failing, pending]  # oldest created_at first, FAILED or PENDING
    assert claimed["status"].to_list() == ["PROCESSING"] * 2
    assert queue.mark_failed(failing, "still none", claimed_by="run-2", now=due) == 1  # attempts 2, + 60 s
    assert queue.mark_success(pending, claimed_by="run-2") == 1

    later = due + timedelta(seconds=60)
    assert queue.claim(limit=5, claimed_by="run-3", now=later, max_attempts=2).is_empty()
    assert queue.claimable_count(now=later, max_attempts=2) == 0
    assert queue.oldest_claimable_at(now=later, max_attempts=2) is None
    assert queue.claim(limit=5, claimed_by="run-3", now=later)["request_id"].to_list() == [failing]
    assert queue.mark_failed(failing, "gone", claimed_by="run-3", now=later) == 1  # attempts 3: done by default

    forever = later + timedelta(days=365)
    assert queue.claimable_count(now=forever) == 0
    assert queue.claim(limit=5, claimed_by="run-4", now=forever).is_empty()
    assert queue.claim(limit=5, claimed_by="run-4", now=forever, max_attempts=4)["request_id"].to_list() == [failing]


def test_max_attempts_must_be_positive(queue: PositionQueue) -> None:
    for bad in [0, -1, True]:
        with pytest.raises(ValueError, match="max_attempts"):
            queue.claim(claimed_by="run-1", max_attempts=bad)
        with pytest.raises(ValueError, match="max_attempts"):
            queue.claimable_count(max_attempts=bad)


def test_claimable_count_is_a_cheap_read(queue: PositionQueue, uri: str) -> None:
    assert queue.claimable_count() == 0 and queue.oldest_claimable_at() is None
    queue.insert_many([(i, f"S{i}") for i in range(1, 6)])
    queue.insert(99, "ACTIVE", priority=1)
    before = version(uri)
    assert queue.claimable_count() == 5
    assert queue.claimable_count(priority=1) == 1
    assert queue.claimable_count(priority=None) == 6
    assert version(uri) == before, "claimable_count must not write"

    # Only the columns the eligibility needs are read, not the whole rows.
    dt = DeltaTable(uri)
    plan = queue._claimable_scan(dt, 2, datetime.now(UTC), 3).select(pl.len()).explain()
    assert "PROJECT 4/14 COLUMNS" in plan, plan


def test_claims_by_run_and_release_runs(queue: PositionQueue, uri: str) -> None:
    ids = queue.insert_many([(i, f"S{i}") for i in range(1, 7)])
    assert queue.claims_by_run() == {}
    queue.claim(limit=2, claimed_by="run-dead", now=T0)
    queue.claim(limit=1, claimed_by="run-alive", now=T0)
    queue.claim(limit=2, claimed_by="run-done", now=T0)
    queue.mark_success(ids[3], claimed_by="run-done")
    assert queue.claims_by_run() == {"run-dead": 2, "run-alive": 1, "run-done": 1}

    before = version(uri)
    assert queue.release_runs(["run-dead", "run-done", "run-unknown"]) == 3
    assert version(uri) == before + 1, "one commit for every run"
    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert [rows[i]["status"] for i in ids] == ["PENDING", "PENDING", "PROCESSING", "SUCCESS", "PENDING", "PENDING"]
    assert all(rows[i]["claimed_by"] is None and rows[i]["claimed_at"] is None for i in [ids[0], ids[1], ids[4]])
    assert all(rows[i]["attempts"] == 0 and rows[i]["claims"] == 1 for i in [ids[0], ids[1], ids[4]])
    assert rows[ids[3]]["claimed_by"] == "run-done"  # finished work is never reopened
    assert queue.claims_by_run() == {"run-alive": 1}

    before = version(uri)
    assert queue.release_runs(["run-dead"]) == 0
    assert queue.release_runs([]) == 0
    assert version(uri) == before, "nothing to release: no commit"
    with pytest.raises(ValueError, match="claimed_by"):
        queue.release_runs(["run-1", " "])


def test_release_runs_leaves_another_runs_claim_alone(queue: PositionQueue, uri: str) -> None:
    ids = queue.insert_many([(1, "A"), (2, "B")])
    queue.claim(limit=2, claimed_by="run-old", now=T0)
    stale = DeltaTable(uri)  # what a sensor tick read while run-old still held both items
    assert queue.release(ids[0], claimed_by="run-old") == 1  # e.g. run-old gave one back before it died
    assert queue.claim(limit=1, claimed_by="run-new", now=T0)["request_id"].to_list() == [ids[0]]

    # The first attempt MERGEs on the stale snapshot, where run-old still holds ids[0]: Delta refuses that commit
    # (newer commits rewrote the PROCESSING rows it read), and the retry re-reads and releases only what run-old
    # still holds.
    opened = iter([stale])
    fresh = queue._open
    queue._open = lambda: next(opened, None) or fresh()  # type: ignore[method-assign]
    assert queue.release_runs("run-old") == 1  # a single run id is one id, not its characters
    queue._open = fresh  # type: ignore[method-assign]

    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert (rows[ids[0]]["status"], rows[ids[0]]["claimed_by"]) == ("PROCESSING", "run-new")
    assert (rows[ids[1]]["status"], rows[ids[1]]["claimed_by"]) == ("PENDING", None)
    assert queue.release_runs(["run-old"]) == 0


def _fail_every_other(uri: str, n: int) -> tuple[list[str], list[str]]:
    """n items, every other one FAILED once (retry_after long past) and the rest PENDING, in the same files."""
    q = PositionQueue(uri)
    ids = q.insert_many([(i, f"S{i}") for i in range(1, n + 1)])
    past = datetime.now(UTC) - timedelta(hours=2)
    q.claim(limit=n, claimed_by="run-setup", now=past)
    failed, pending = ids[1::2], ids[0::2]
    assert q.mark_failed_many(dict.fromkeys(failed, "first try"), claimed_by="run-setup", now=past) == len(failed)
    assert q.release(pending, claimed_by="run-setup") == len(pending)
    return failed, pending


@pytest.mark.timeout(90)
def test_concurrent_claimers_never_share_pending_or_retryable_items(queue: PositionQueue, uri: str) -> None:
    failed, pending = _fail_every_other(uri, 240)
    assert queue.claimable_count() == 240
    start = SPAWN.Event()
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=_claim_until_empty, args=(uri, f"run-{n}", 10, start, results), name=f"claimer-{n}")
        for n in range(4)
    ]
    for p in processes:
        p.start()
    start.set()
    reports = _collect(results, len(processes), timeout=60)
    _join(processes)

    claimed = [i for got in reports.values() for i in got]
    assert [i for i, n in Counter(claimed).items() if n > 1] == []
    assert sorted(claimed) == sorted(failed + pending)
    table = queue.read()
    owner = dict(zip(table["request_id"], table["claimed_by"], strict=True))
    assert all(owner[i] == run for run, got in reports.items() for i in got)
    assert set(table["status"]) == {"PROCESSING"}
    assert set(table["claims"]) == {2}
    by_id = {r["request_id"]: r for r in table.iter_rows(named=True)}
    assert {by_id[i]["attempts"] for i in failed} == {1} and {by_id[i]["attempts"] for i in pending} == {0}


# Requeueing FAILED items: the operator's way back


def _one_item_per_status(queue: PositionQueue) -> dict[str, str]:
    """PENDING, PROCESSING (run-1), SUCCESS, FAILED waiting out a backoff, and FAILED with no attempts left (3)."""
    names = ["pending", "processing", "success", "backoff", "exhausted"]
    ids = dict(zip(names, queue.insert_many([(n, name.upper()) for n, name in enumerate(names, 1)]), strict=True))
    queue.claim(priority=None, limit=5, claimed_by="run-1", now=T0)
    assert queue.release(ids["pending"], claimed_by="run-1") == 1
    assert queue.mark_success(ids["success"], claimed_by="run-1") == 1
    assert queue.mark_failed(ids["backoff"], "timeout", claimed_by="run-1", now=T0) == 1
    assert queue.mark_failed(ids["exhausted"], "not held (1)", claimed_by="run-1", now=T0) == 1
    for n in (2, 3):  # the design note's unguarded call: counts attempts the same way
        assert queue.mark_failed(ids["exhausted"], f"not held ({n})", now=T0 + timedelta(minutes=n)) == 1
    return ids


def test_requeue_failed_reopens_only_failed_items_with_attempts_reset(queue: PositionQueue, uri: str) -> None:
    ids = _one_item_per_status(queue)
    before = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert (before[ids["backoff"]]["attempts"], before[ids["exhausted"]]["attempts"]) == (1, 3)
    at = T0 + timedelta(seconds=10)  # the backoff item's retry_after (T0 + 30 s) has not passed
    assert queue.claimable_count(priority=None, now=at) == 1  # only the PENDING one
    start = version(uri)

    assert queue.requeue_failed(now=at) == 2

    assert version(uri) == start + 1, "one commit"
    after = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    for name in ("pending", "processing", "success"):
        assert after[ids[name]] == before[ids[name]], f"{name} item changed"
    for name, error in (("backoff", "timeout"), ("exhausted", "not held (3)")):
        row, old = after[ids[name]], before[ids[name]]
        assert (row["status"], row["attempts"], row["retry_after"]) == ("PENDING", 0, None)
        assert (row["claimed_by"], row["claimed_at"], row["updated_at"]) == (None, None, at)
        assert row["error_message"] == error, "the last error stays visible until the item succeeds"
        assert (row["claims"], row["created_at"]) == (old["claims"], old["created_at"])

    # claim() takes them again at once, with every attempt available.
    assert queue.claimable_count(priority=None, now=at) == 3
    claimed = queue.claim(priority=None, limit=10, claimed_by="run-2", now=at)
    assert claimed["request_id"].to_list() == [ids["pending"], ids["backoff"], ids["exhausted"]]
    assert queue.mark_failed(ids["exhausted"], "still not held", claimed_by="run-2", now=at) == 1
    assert _row(queue, ids["exhausted"])["attempts"] == 1
    assert queue.mark_success(ids["backoff"], claimed_by="run-2") == 1
    assert _row(queue, ids["backoff"])["error_message"] is None  # success clears it, as before

    start = version(uri)
    assert queue.requeue_failed(now=at) == 1  # the one that failed again
    assert queue.requeue_failed(now=at) == 0
    assert version(uri) == start + 1, "nothing left to requeue: no commit"


def test_requeue_failed_since_and_failed_items(queue: PositionQueue, uri: str) -> None:
    ids = queue.insert_many([(1, "A"), (2, "B"), (3, "C"), (4, "D")])
    queue.claim(limit=4, claimed_by="run-1", now=T0)
    for n, item in enumerate(ids[:3]):
        assert queue.mark_failed(item, f"error {n}", claimed_by="run-1", now=T0 + timedelta(hours=n)) == 1
    since = T0 + timedelta(hours=1)
    start = version(uri)

    listed = queue.failed_items(since=since)
    assert listed.schema == lake.QUEUE_SCHEMA
    assert listed["request_id"].to_list() == [ids[2], ids[1]]  # newest failure first; since itself included
    assert listed["error_message"].to_list() == ["error 2", "error 1"]
    assert queue.failed_items()["request_id"].to_list() == [ids[2], ids[1], ids[0]]
    assert queue.failed_items(limit=1)["request_id"].to_list() == [ids[2]]
    assert version(uri) == start, "failed_items must not write"

    for bad in ({"since": datetime(2030, 1, 2, 10, 30)}, {"now": datetime(2030, 1, 2, 12)}):
        with pytest.raises(ValueError, match="timezone-aware"):
            queue.requeue_failed(**bad)
    with pytest.raises(ValueError, match="timezone-aware"):
        queue.failed_items(since=datetime(2030, 1, 2, 10, 30))
    with pytest.raises(ValueError, match="limit"):
        queue.failed_items(limit=0)
    assert version(uri) == start, "refused arguments write nothing"

    # The same instant written with another offset selects the same items.
    eastern = datetime.fromisoformat("2030-01-02T05:30:00-05:00")
    assert eastern == since
    assert queue.requeue_failed(since=eastern, now=T0 + timedelta(hours=3)) == 2
    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert [rows[i]["status"] for i in ids] == ["FAILED", "PENDING", "PENDING", "PROCESSING"]
    assert (rows[ids[0]]["attempts"], rows[ids[0]]["error_message"]) == (1, "error 0")
    assert queue.failed_items()["request_id"].to_list() == [ids[0]]


def test_requeue_failed_retries_past_a_claim_that_landed_first(queue: PositionQueue, uri: str) -> None:
    """A run claims retryable FAILED items while the operator requeues: the claim stays the run's."""
    ids = queue.insert_many([(i, f"S{i}") for i in range(1, 5)])
    queue.claim(limit=4, claimed_by="run-1", now=T0)
    assert queue.mark_failed_many(dict.fromkeys(ids, "first try"), claimed_by="run-1", now=T0) == 4
    stale = DeltaTable(uri)  # what the requeue reads before the claim below commits
    taken = queue.claim(limit=2, claimed_by="run-2", now=T0 + timedelta(minutes=1))
    assert taken["request_id"].to_list() == ids[:2]

    # The first attempt MERGEs on the stale snapshot, where all four are FAILED: Delta refuses that commit (the
    # claim rewrote the rows it read), and the retry re-reads and requeues only what is still FAILED.
    opened: list[DeltaTable] = []
    fresh = queue._open

    def open_stale_first() -> DeltaTable:
        opened.append(stale if not opened else fresh())
        return opened[-1]

    queue._open = open_stale_first  # type: ignore[method-assign]
    assert queue.requeue_failed(now=T0 + timedelta(minutes=2)) == 2
    queue._open = fresh  # type: ignore[method-assign]
    assert len(opened) == 2, "the stale attempt must have conflicted and been retried"

    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert [(rows[i]["status"], rows[i]["claimed_by"], rows[i]["attempts"]) for i in ids] == [
        ("PROCESSING", "run-2", 1),
        ("PROCESSING", "run-2", 1),
        ("PENDING", None, 0),
        ("PENDING", None, 0),
    ]
    assert queue.mark_success(ids[:2], claimed_by="run-2") == 2, "run-2 still holds its claim"


def _claim_when_started(uri: str, run: str, ready: Any, start: Any, results: Any) -> None:
    """Child process: say it is ready (imports done), then claim batches of 5 until the queue has nothing claimable."""
    ready.put(run)
    _claim_until_empty(uri, run, 5, start, results)


@pytest.mark.timeout(90)
def test_requeue_during_concurrent_claims_loses_nothing(queue: PositionQueue, uri: str) -> None:
    """Two processes claim PENDING and retryable FAILED items while this one requeues every FAILED item."""
    failed, pending = _fail_every_other(uri, 160)
    ready, start, results = SPAWN.Queue(), SPAWN.Event(), SPAWN.Queue()
    processes = [
        SPAWN.Process(target=_claim_when_started, args=(uri, f"run-{n}", ready, start, results), name=f"claimer-{n}")
        for n in range(2)
    ]
    for p in processes:
        p.start()
    for _ in processes:
        ready.get(timeout=30)
    start.set()
    deadline = time.monotonic() + 30
    while not queue.claims_by_run():  # requeue once the claimers are under way
        assert time.monotonic() < deadline, "no claimer claimed anything"
        time.sleep(0.005)
    while True:  # like a claimer: an operator whose requeue lost every retry runs it again
        try:
            requeued = queue.requeue_failed()
            break
        except CommitFailedError:
            assert time.monotonic() < deadline, "requeue never committed"
    reports = _collect(results, len(processes), timeout=60)
    _join(processes)

    claimed = [i for got in reports.values() for i in got]
    assert [i for i, n in Counter(claimed).items() if n > 1] == []
    table = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert set(table) == set(failed + pending)
    owner = {i: run for run, got in reports.items() for i in got}
    for item, row in table.items():
        if item in owner:
            assert (row["status"], row["claimed_by"]) == ("PROCESSING", owner[item])
        else:  # the claimers stopped when they found nothing; what the requeue gave back after that waits
            assert (row["status"], row["attempts"]) == ("PENDING", 0)
    # A FAILED item was either claimed before the requeue (attempts kept) or requeued (attempts 0): never both.
    claimed_first = [i for i in failed if table[i]["attempts"] == 1]
    assert requeued == len(failed) - len(claimed_first)
    assert claimed_first, "the first claim (oldest first: failed and pending alternate) came before the requeue"
    assert all(table[i]["status"] == "PROCESSING" for i in claimed_first)
    assert {table[i]["attempts"] for i in pending} == {0}
