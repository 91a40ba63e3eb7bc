"""`position-pipeline status` against real Delta tables under tmp_path: an empty lake, a queue holding items in every
status and both priorities (built with the queue's own calls at fixed times), a position_updates table with several
runs, the text and JSON reports through `run`, and the --lake option."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from position_pipeline.cli import status
from position_pipeline.cli.lake_option import LAKE_ENV, resolve_lake
from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, Priority, QueueStatus

# Fixed claim and mark times, an hour after the items are created (created_at is always the wall clock).
T = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Lake:
    """A lake with a queue in every status and a position_updates table; `ids` maps symbols to request ids."""

    root: str
    ids: dict[str, str]
    items: pl.DataFrame  # the queue as written, indexed by symbol through `created`

    def created(self, symbol: str) -> datetime:
        value = self.items.filter(pl.col("symbol") == symbol)["created_at"].item()
        assert isinstance(value, datetime)
        return value


def claim(queue: PositionQueue, run: str, at: datetime, expected: list[str], limit: int = 10) -> None:
    claimed = queue.claim(None, limit, claimed_by=run, now=at)
    assert sorted(claimed["symbol"].to_list()) == sorted(expected)


def insert(queue: PositionQueue, ids: dict[str, str], *items: tuple[int, str, int]) -> None:
    for (_, symbol, _), request_id in zip(items, queue.insert_many(items), strict=True):
        ids[symbol] = request_id


def update_rows(run_id: str, snapshot_at: datetime, n: int) -> pl.DataFrame:
    """n position_updates rows of run `run_id`, as the pipeline appends them (one snapshot_at per run)."""
    values = {
        "request_id": [f"{run_id}-{i}" for i in range(n)],
        "conid": [1000 + i for i in range(n)],
        "account": ["DU1000001"] * n,
        "symbol": [f"S{i}" for i in range(n)],
        "sec_type": ["STK"] * n,
        "currency": ["USD"] * n,
        "local_symbol": [f"S{i}" for i in range(n)],
        "position": [10.0] * n,
        "average_cost": [100.0] * n,
        "market_price": [101.0] * n,
        "market_value": [1010.0] * n,
        "unrealized_pnl": [10.0] * n,
        "queued_at": [snapshot_at - MINUTE] * n,
        "snapshot_at": [snapshot_at] * n,
        "run_id": [run_id] * n,
        "snapshot_date": [snapshot_at.date()] * n,
    }
    stock = dict.fromkeys(
        ["right", "strike", "expiry", "multiplier", "realized_pnl", "account_update_time"], [None] * n
    )
    return pl.DataFrame({**values, **stock}, schema=lake.POSITION_UPDATES_SCHEMA)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """Final queue (symbol: priority, status, attempts):

    PENDING     N1 1, N4 1 | N2 2, N3 2
    PROCESSING  A1 1 (run-a) | A2 2, A3 2 (run-a), B1 2 (run-b)
    SUCCESS     S1 1 | S2 2, S3 2
    FAILED      F 1 (3 attempts: no more retries), H 1 (1, retry at T+20:30) | G 2 (2, retry at T+21:05)
    """
    root = str(tmp_path_factory.mktemp("status") / "lake")
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids: dict[str, str] = {}

    insert(queue, ids, (101, "F", 1))
    for n, at in enumerate([T, T + MINUTE, T + 3 * MINUTE], start=1):  # retry_after T+30s, then T+2min
        claim(queue, f"run-{n}", at, ["F"])
        assert queue.mark_failed_many({ids["F"]: f"F failed {n}"}, f"run-{n}", now=at) == 1

    insert(queue, ids, (201, "G", 2), (301, "S1", 1), (302, "S2", 2), (303, "S3", 2))
    claim(queue, "run-4", T + 10 * MINUTE, ["G", "S1", "S2", "S3"])  # F has no attempts left
    assert queue.mark_success([ids["S1"], ids["S2"], ids["S3"]], "run-4", now=T + 10 * MINUTE) == 3
    assert queue.mark_failed_many({ids["G"]: "G not held"}, "run-4", now=T + 10 * MINUTE) == 1

    insert(queue, ids, (102, "H", 1))
    claim(queue, "run-5", T + 20 * MINUTE, ["G", "H"])
    assert queue.mark_failed_many({ids["H"]: "H: IB sent\nno values"}, "run-5", now=T + 20 * MINUTE) == 1
    failed_g_at = T + 20 * MINUTE + timedelta(seconds=5)
    assert queue.mark_failed_many({ids["G"]: "G not held again"}, "run-5", now=failed_g_at) == 1

    insert(queue, ids, (401, "A1", 1), (402, "A2", 2), (403, "A3", 2))
    claim(queue, "run-a", T + 20 * MINUTE + timedelta(seconds=10), ["A1", "A2", "A3"], limit=3)
    insert(queue, ids, (404, "B1", 2))
    claim(queue, "run-b", T + 20 * MINUTE + timedelta(seconds=10), ["B1"], limit=1)
    insert(queue, ids, (501, "N1", 1), (502, "N2", 2), (503, "N3", 2), (504, "N4", 1))

    uri = lake.ensure_position_updates_table(root)
    # Committed out of snapshot order: the newest batch is the newest snapshot, not the last commit.
    for run_id, snapshot_at, n in [
        ("run-old", datetime(2025, 1, 1, 23, 59, 59, tzinfo=UTC), 3),
        ("run-late", datetime(2025, 1, 2, 9, 0, tzinfo=UTC), 2),
        ("run-early", datetime(2025, 1, 2, 8, 0, tzinfo=UTC), 4),
    ]:
        rows = update_rows(run_id, snapshot_at, n).to_arrow().cast(lake.POSITION_UPDATES_ARROW_SCHEMA)
        write_deltalake(uri, rows, mode="append")
    return Lake(root, ids, queue.read())


def depth(
    pending: tuple[int, int], processing: tuple[int, int], success: tuple[int, int], failed: tuple[int, int]
) -> dict[str, dict[int, int]]:
    return {
        name: dict(zip((1, 2), counts, strict=True))
        for name, counts in zip(
            ("PENDING", "PROCESSING", "SUCCESS", "FAILED"), (pending, processing, success, failed), strict=True
        )
    }


# collect_status


def test_every_number_of_a_queue_in_every_status(full: Lake) -> None:
    now = T + 25 * MINUTE
    s = status.collect_status(full.root, now=now)
    queue_uri = lake.table_uri(full.root, lake.QUEUE_TABLE)
    dt = DeltaTable(queue_uri)

    assert s.root == full.root
    assert s.now == now
    assert s.depth == depth((2, 2), (1, 3), (1, 2), (2, 1))
    assert s.by_status == {"PENDING": 4, "PROCESSING": 4, "SUCCESS": 3, "FAILED": 3}
    assert s.by_priority == {1: 6, 2: 8}
    assert s.total == 14
    # 1 creation + 6 appends + 7 claims + 7 marks; nothing wrote while status read.
    assert s.queue == status.TableStats(queue_uri, True, 20, len(dt.file_uris()), 14)
    assert s.queue.files >= 1
    assert s.queue_changed is False

    # Past both retry times: H (1 attempt) and G (2) are claimable again, F (3) is not.
    assert s.claimable == 6
    assert s.oldest_pending_at == full.created("N1")
    assert s.oldest_pending_age_s == (now - full.created("N1")).total_seconds()
    assert s.oldest_claimable_at == full.created("G")
    assert s.oldest_claimable_age_s == (now - full.created("G")).total_seconds()

    assert s.max_attempts == 3
    assert s.failed_by_attempts == {1: 1, 2: 1, 3: 1}
    assert s.recent_failures == [
        status.FailedItem(
            full.ids["G"],
            201,
            "G",
            2,
            2,
            T + 20 * MINUTE + timedelta(seconds=5),
            T + 21 * MINUTE + timedelta(seconds=5),
            "G not held again",
        ),
        status.FailedItem(
            full.ids["H"],
            102,
            "H",
            1,
            1,
            T + 20 * MINUTE,
            T + 20 * MINUTE + timedelta(seconds=30),
            "H: IB sent\nno values",
        ),
        status.FailedItem(full.ids["F"], 101, "F", 1, 3, T + 3 * MINUTE, T + 5 * MINUTE, "F failed 3"),
    ]
    assert s.processing_by_run == {"run-a": 3, "run-b": 1}


@pytest.mark.parametrize(
    ("after", "claimable", "oldest"),
    [
        (timedelta(seconds=10), 4, "N1"),  # neither failed item is due: the oldest claimable is the oldest PENDING
        (timedelta(seconds=30), 5, "H"),  # H's retry_after is exactly now: due
        (timedelta(seconds=65), 6, "G"),  # G's too
    ],
)
def test_claimability_is_the_queues_own(full: Lake, after: timedelta, claimable: int, oldest: str) -> None:
    now = T + 20 * MINUTE + after
    s = status.collect_status(full.root, now=now)

    assert s.claimable == claimable
    assert s.claimable == PositionQueue(lake.table_uri(full.root, lake.QUEUE_TABLE)).claimable_count(None, now=now)
    assert s.oldest_claimable_at == full.created(oldest)
    assert s.oldest_pending_at == full.created("N1")


def test_last_successful_batch_is_the_newest_run(full: Lake) -> None:
    s = status.collect_status(full.root, now=T)
    uri = lake.table_uri(full.root, lake.POSITION_UPDATES_TABLE)

    assert s.position_updates == status.TableStats(uri, True, 3, 3, 9)
    assert s.last_batch == status.Batch("run-late", datetime(2025, 1, 2, 9, 0, tzinfo=UTC), 2)


def test_recent_failures_are_the_five_newest_failed_items(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids = queue.insert_many([(i, f"X{i}", 2) for i in range(1, 9)])
    queue.claim(None, 10, claimed_by="run-x", now=T)
    queue.mark_failed_many(dict.fromkeys(ids[:4], "first"), "run-x", now=T + MINUTE)
    queue.mark_failed_many(dict.fromkeys(ids[4:], "second"), "run-x", now=T + 2 * MINUTE)
    # Re-claimed: PROCESSING again, updated later, still carrying their last error; no longer failures.
    claim(queue, "run-y", T + 3 * MINUTE, ["X1", "X2"], limit=2)

    s = status.collect_status(root, now=T + 4 * MINUTE)

    # Newest failure first; among equal times the newest item first.
    assert [f.request_id for f in s.recent_failures] == [ids[7], ids[6], ids[5], ids[4], ids[3]]
    assert [f.error_message for f in s.recent_failures] == ["second"] * 4 + ["first"]
    assert s.failed_by_attempts == {1: 6}
    assert s.claimable == 6  # every retry (30 s) is due
    assert s.processing_by_run == {"run-y": 2}


def test_a_queue_that_changes_while_read_is_flagged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path / "lake")
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    queue.insert(1, "X")
    claims_by_run = PositionQueue.claims_by_run

    def enqueue_meanwhile(self: PositionQueue) -> dict[str, int]:
        queue.insert(2, "Y")  # a producer commits between the status's reads
        return claims_by_run(self)

    monkeypatch.setattr(PositionQueue, "claims_by_run", enqueue_meanwhile)
    s = status.collect_status(root)

    assert s.queue_changed is True
    assert (s.queue.version, s.total) == (1, 1)  # the figures of the version first read
    assert "  note: the queue changed while it was read (now past version 1)" in status.format_text(s)
    monkeypatch.undo()
    again = status.collect_status(root)
    assert (again.queue_changed, again.queue.version, again.total) == (False, 2, 2)


def test_an_empty_lake_is_all_zeros_and_nothing_is_created(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")

    s = status.collect_status(root)

    assert s.depth == depth((0, 0), (0, 0), (0, 0), (0, 0))
    assert (s.total, s.claimable, s.oldest_pending_at, s.oldest_claimable_at) == (0, 0, None, None)
    assert (s.oldest_pending_age_s, s.oldest_claimable_age_s) == (None, None)
    assert (s.failed_by_attempts, s.recent_failures, s.processing_by_run, s.last_batch) == ({}, [], {}, None)
    assert s.queue == status.TableStats(lake.table_uri(root, lake.QUEUE_TABLE), False, None, 0, 0)
    assert s.position_updates == status.TableStats(lake.table_uri(root, lake.POSITION_UPDATES_TABLE), False, None, 0, 0)
    assert not (tmp_path / "lake").exists()


def test_empty_tables_are_all_zeros(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    assert PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE)).counts() == dict.fromkeys(QueueStatus, 0)  # creates
    lake.ensure_position_updates_table(root)

    s = status.collect_status(root)

    assert s.total == 0 and s.claimable == 0 and s.last_batch is None
    assert (s.queue.exists, s.queue.version, s.queue.files, s.queue.rows) == (True, 0, 0, 0)
    assert (s.position_updates.exists, s.position_updates.version, s.position_updates.files) == (True, 0, 0)


def test_a_naive_now_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        status.collect_status(str(tmp_path), now=datetime(2025, 1, 1))


# JSON


def test_json_round_trips_with_utc_timestamps(full: Lake) -> None:
    now = T + 25 * MINUTE
    data = json.loads(json.dumps(status.collect_status(full.root, now=now).to_json()))

    assert data["lake"] == full.root
    assert datetime.fromisoformat(data["now"]) == now and data["now"].endswith("Z")
    queue = data["queue"]
    assert queue["exists"] is True and queue["version"] == 20 and queue["rows"] == queue["total"] == 14
    assert queue["changed_while_reading"] is False
    assert queue["depth"] == {
        "PENDING": {"1": 2, "2": 2, "total": 4},
        "PROCESSING": {"1": 1, "2": 3, "total": 4},
        "SUCCESS": {"1": 1, "2": 2, "total": 3},
        "FAILED": {"1": 2, "2": 1, "total": 3},
        "total": {"1": 6, "2": 8, "total": 14},
    }
    assert queue["by_status"] == {"PENDING": 4, "PROCESSING": 4, "SUCCESS": 3, "FAILED": 3}
    assert queue["by_priority"] == {"1": 6, "2": 8}
    assert queue["claimable"] == 6
    assert datetime.fromisoformat(queue["oldest_pending"]["at"]) == full.created("N1")
    assert queue["oldest_pending"]["age_seconds"] == (now - full.created("N1")).total_seconds()
    assert datetime.fromisoformat(queue["oldest_claimable"]["at"]) == full.created("G")
    assert queue["failed_by_attempts"] == {"1": 1, "2": 1, "3": 1}
    assert [f["request_id"] for f in queue["recent_failures"]] == [full.ids[s] for s in ("G", "H", "F")]
    assert queue["recent_failures"][1] == {
        "request_id": full.ids["H"],
        "conid": 102,
        "symbol": "H",
        "priority": 1,
        "attempts": 1,
        "failed_at": (T + 20 * MINUTE).isoformat().replace("+00:00", "Z"),
        "retry_after": (T + 20 * MINUTE + timedelta(seconds=30)).isoformat().replace("+00:00", "Z"),
        "error_message": "H: IB sent\nno values",
    }
    assert queue["processing_by_run"] == {"run-a": 3, "run-b": 1}
    updates = data["position_updates"]
    assert (updates["exists"], updates["version"], updates["files"], updates["rows"]) == (True, 3, 3, 9)
    assert updates["last_batch"] == {
        "run_id": "run-late",
        "snapshot_at": "2025-01-02T09:00:00Z",
        "age_seconds": (now - datetime(2025, 1, 2, 9, tzinfo=UTC)).total_seconds(),
        "rows": 2,
    }


# The command


def namespace(root: str | None, as_json: bool) -> argparse.Namespace:
    return argparse.Namespace(lake=root, json=as_json)


def test_run_prints_the_text_report(full: Lake, capsys: pytest.CaptureFixture[str]) -> None:
    assert status.run(namespace(full.root, False)) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()

    assert err == ""
    assert lines[0].startswith(f"Lake {full.root} at ")
    queue_uri = lake.table_uri(full.root, lake.QUEUE_TABLE)
    title = next(i for i, line in enumerate(lines) if line.startswith("position_queue "))
    assert lines[title].startswith(f"position_queue {queue_uri}: version 20, ")
    assert lines[title].endswith(" files, 14 items")
    assert lines[title + 1 : title + 7] == [
        "  status      1 active  2 monitoring  total",
        "  PENDING            2             2      4",
        "  PROCESSING         1             3      4",
        "  SUCCESS            1             2      3",
        "  FAILED             2             1      3",
        "  total              6             8     14",
    ]
    # The wall clock is before T: no failed item is due yet.
    assert "  claimable now     4" in lines
    oldest = status.iso_seconds(full.created("N1"))
    assert any(line.startswith(f"  oldest PENDING    {oldest}  ") and line.endswith(" ago") for line in lines)
    assert any(line.startswith(f"  oldest claimable  {oldest}  ") for line in lines)
    at = lines.index("  FAILED by attempts (retried while under 3)")
    assert lines[at + 1 : at + 5] == [
        "    attempts  items",
        "           1      1",
        "           2      1",
        "           3      1",
    ]
    at = lines.index("  latest failures (newest first, at most 5)")
    assert lines[at + 1] == "    failed at             attempts  conid  symbol  error"
    assert lines[at + 2].split(None, 4) == [
        status.iso_seconds(T + 20 * MINUTE + timedelta(seconds=5)),
        "2",
        "201",
        "G",
        "G not held again",
    ]
    assert lines[at + 3].split(None, 4) == [
        status.iso_seconds(T + 20 * MINUTE),
        "1",
        "102",
        "H",
        "H: IB sent no values",
    ]
    assert lines[at + 4].split(None, 4) == [status.iso_seconds(T + 3 * MINUTE), "3", "101", "F", "F failed 3"]
    at = lines.index("  PROCESSING by run")
    assert lines[at + 1 : at + 4] == ["    run    items", "    run-a      3", "    run-b      1"]
    updates_uri = lake.table_uri(full.root, lake.POSITION_UPDATES_TABLE)
    assert f"position_updates {updates_uri}: version 3, 3 files, 9 rows" in lines
    assert any(line.startswith("  last batch: run run-late, 2 rows, snapshot 2025-01-02T09:00:00Z (") for line in lines)


def test_run_prints_one_json_object(full: Lake, capsys: pytest.CaptureFixture[str]) -> None:
    assert status.run(namespace(full.root, True)) == 0
    out, err = capsys.readouterr()

    assert err == "" and out.endswith("\n") and out.count("\n") == 1
    data = json.loads(out)
    assert data["lake"] == full.root
    assert data["queue"]["total"] == 14 and data["queue"]["claimable"] == 4
    assert data["queue"]["processing_by_run"] == {"run-a": 3, "run-b": 1}
    assert data["position_updates"]["last_batch"]["run_id"] == "run-late"


def test_run_on_an_empty_lake_as_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "lake")

    assert status.run(namespace(root, False)) == 0
    text = capsys.readouterr().out.splitlines()
    assert status.run(namespace(root, True)) == 0
    data = json.loads(capsys.readouterr().out)

    assert f"position_queue {lake.table_uri(root, lake.QUEUE_TABLE)}: no table yet" in text
    assert "  total              0             0      0" in text
    assert "  oldest PENDING    none" in text
    assert ("  FAILED: none" in text) and ("  PROCESSING: none" in text)
    assert "  last batch: none yet" in text
    assert data["queue"]["exists"] is False and data["queue"]["version"] is None
    assert data["queue"]["depth"]["total"] == {"1": 0, "2": 0, "total": 0}
    assert data["queue"]["oldest_pending"] is None and data["queue"]["recent_failures"] == []
    assert data["position_updates"] == {
        "table": lake.table_uri(root, lake.POSITION_UPDATES_TABLE),
        "exists": False,
        "version": None,
        "files": 0,
        "rows": 0,
        "last_batch": None,
    }
    assert not (tmp_path / "lake").exists()


def test_a_table_that_is_not_a_queue_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "lake")
    write_deltalake(lake.table_uri(root, lake.QUEUE_TABLE), pl.DataFrame({"x": [1]}).to_arrow())

    assert status.run(namespace(root, False)) == 1
    out, err = capsys.readouterr()

    assert out == ""
    assert err.startswith("position-pipeline status: error: ") and "is not a position queue table" in err


def test_lake_option_and_its_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    status.add_arguments(parser)
    monkeypatch.chdir(tmp_path)

    assert parser.parse_args(["--lake", "here", "--json"]) == namespace(str(tmp_path / "here"), True)
    assert parser.parse_args(["--lake", "s3://bucket/lake"]) == namespace("s3://bucket/lake", False)
    assert parser.parse_args([]) == namespace(None, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--lake", " "])
    assert "must not be empty" in capsys.readouterr().err

    monkeypatch.setenv(lake.LAKE_URI_VARIABLE, "from-env")
    assert resolve_lake(None) == str(tmp_path / "from-env")
    assert resolve_lake("s3://bucket/lake") == "s3://bucket/lake"
    monkeypatch.delenv(lake.LAKE_URI_VARIABLE)
    assert resolve_lake(None) == str(tmp_path / lake.DEFAULT_LAKE_ROOT)
    assert status.run(namespace(None, True)) == 0
    assert json.loads(capsys.readouterr().out)["lake"] == str(tmp_path / lake.DEFAULT_LAKE_ROOT)


def test_constants_match_the_modules_they_stand_for() -> None:
    assert LAKE_ENV == lake.LAKE_URI_VARIABLE
    assert tuple(s.value for s in QueueStatus) == status.STATUSES
    assert tuple(int(p) for p in Priority) == status.PRIORITIES


def test_importing_status_and_building_its_parser_imports_nothing_heavy() -> None:
    probe = (
        "import argparse, sys\n"
        "from position_pipeline.cli import status\n"
        "status.add_arguments(argparse.ArgumentParser())\n"
        "heavy = ('polars', 'deltalake', 'pyarrow', 'position_pipeline.core.queue')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_ages_read_at_a_glance() -> None:
    assert [status._age(s) for s in (None, 0, 42.9, 307, 3 * 3600 + 4 * 60, 2 * 86400 + 5 * 3600, -5)] == [
        "-",
        "0s",
        "42s",
        "5m07s",
        "3h04m",
        "2d05h",
        "-5s (clock skew)",
    ]
    assert status.iso(None) is None
    assert status.iso(datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "2025-01-02T03:04:05.000006Z"
    assert status.iso_seconds(datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "2025-01-02T03:04:05Z"
