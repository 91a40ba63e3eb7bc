"""`position-pipeline requeue --failed` against real Delta tables under tmp_path: what it requeues (all, or since a
time or age), its dry run, its usage errors and its help. After every command the queue itself is read back."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline_tests.cli.command_runs import (
    Result,
    assert_nothing_written,
    heavy_modules_after_help,
    run_command,
)

# requeue --failed


def fail_items(queue: PositionQueue, failures: list[tuple[str, datetime, str]]) -> list[str]:
    """One item per (symbol, failed at, error): claimed and marked FAILED at that time, so attempts is 1."""
    ids = queue.insert_many([(265598 + n, symbol) for n, (symbol, _, _) in enumerate(failures)])
    for item, (_, at, error) in zip(ids, failures, strict=True):
        # max_attempts=1: the items failed before are not claimable, so the oldest claimable one is `item`
        assert queue.claim(limit=1, claimed_by="run-setup", now=at, max_attempts=1)["request_id"].to_list() == [item]
        assert queue.mark_failed(item, error, claimed_by="run-setup", now=at) == 1
    return ids


def hours_ago(hours: float) -> datetime:
    from datetime import timedelta

    return datetime.now(UTC) - timedelta(hours=hours)


def rows_by_id(queue: PositionQueue) -> dict[str, dict]:
    return {r["request_id"]: r for r in queue.read().iter_rows(named=True)}


@pytest.mark.system
def test_requeue_failed_as_a_real_command(lake_root: Path, queue: PositionQueue, uri: str) -> None:
    [failed] = fail_items(queue, [("AAPL", hours_ago(1), "contract 265598 is not held")])
    pending, done = queue.insert_many([(1, "PEND"), (2, "DONE")])
    assert queue.mark_success(done) == 1
    before = rows_by_id(queue)

    code, out, err = run_command("requeue", "--failed", lake_root=lake_root)

    assert (code, err) == (0, "")
    assert out == f"Requeued 1 FAILED item in {uri}: PENDING again, attempts reset to 0\n"
    after = rows_by_id(queue)
    row = after[failed]
    assert (row["status"], row["attempts"], row["retry_after"], row["claimed_by"]) == ("PENDING", 0, None, None)
    assert row["error_message"] == "contract 265598 is not held"
    assert after[pending] == before[pending] and after[done] == before[done]
    assert queue.claim(limit=5, claimed_by="run-next")["request_id"].to_list() == [failed, pending]

    code, out, err = run_command("requeue", "--failed", lake_root=lake_root)
    assert (code, out, err) == (0, f"Requeued 0 FAILED items in {uri}\n", "")


def test_requeue_dry_run_lists_the_newest_and_writes_nothing(
    call: Callable[..., Result], queue: PositionQueue, uri: str
) -> None:
    long_error = "IB error 200: " + "no security definition has been found " * 5
    failures = [(f"S{n}", hours_ago(10 - n), f"error {n}") for n in range(5)]
    failures += [("WRAP", hours_ago(2), "first line\n  second line"), ("LONG", hours_ago(1), long_error)]
    ids = fail_items(queue, failures)
    queue.insert(1, "PEND")
    start, counts = DeltaTable(uri).version(), queue.counts()

    code, out, err = call("requeue", "--failed", "--dry-run")

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"Would requeue 7 FAILED items in {uri}; dry run, nothing written"
    assert lines[1] == "  newest failures first (at most 5)"
    assert lines[2].split() == ["failed", "at", "attempts", "conid", "symbol", "last", "error"]
    shown = [line.split()[3] for line in lines[3:]]
    assert shown == ["LONG", "WRAP", "S4", "S3", "S2"]
    assert lines[3].endswith("...") and len(lines[3].split("LONG", 1)[1].strip()) == 80
    assert lines[4].endswith("first line second line")
    assert lines[5].split()[1:] == ["1", str(265598 + 4), "S4", "error", "4"]

    code, out, err = call("requeue", "--failed", "--dry-run", "--json")
    assert (code, err) == (0, "")
    printed = json.loads(out)
    assert (printed["dry_run"], printed["would_requeue"], printed["since"], printed["table"]) == (True, 7, None, uri)
    assert [item["request_id"] for item in printed["items"]] == ids[::-1]
    assert printed["items"][0]["error_message"] == long_error and printed["items"][0]["attempts"] == 1
    assert DeltaTable(uri).version() == start and queue.counts() == counts, "a dry run writes nothing"


def test_requeue_since_an_age(call: Callable[..., Result], queue: PositionQueue, uri: str) -> None:
    old, recent = fail_items(queue, [("OLD", hours_ago(3), "old error"), ("NEW", hours_ago(0.5), "new error")])

    code, out, err = call("requeue", "--failed", "--since", "1d", "--dry-run")
    assert (code, err) == (0, "")
    assert out.startswith("Would requeue 2 FAILED items (failed at or after ")

    earliest = hours_ago(1)
    code, out, err = call("requeue", "--failed", "--since", "1h", "--json")

    assert (code, err) == (0, "")
    printed = json.loads(out)
    assert (printed["requeued"], printed["dry_run"], printed["exists"]) == (1, False, True)
    assert earliest <= datetime.fromisoformat(printed["since"]) <= hours_ago(1)
    rows = rows_by_id(queue)
    assert (rows[recent]["status"], rows[recent]["attempts"]) == ("PENDING", 0)
    assert (rows[old]["status"], rows[old]["attempts"]) == ("FAILED", 1)

    code, out, err = call("requeue", "--failed", "--since", "3H10m")  # compound ages, as status prints them
    assert (code, err) == (0, "")
    assert out.startswith("Requeued 1 FAILED item (failed at or after ")
    assert rows_by_id(queue)[old]["status"] == "PENDING"


@pytest.mark.system
def test_requeue_since_a_naive_timestamp_means_utc(
    lake_root: Path, queue: PositionQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    ten, noon = (datetime(2030, 1, 2, hour, tzinfo=UTC) for hour in (10, 12))
    at_ten, at_noon = fail_items(queue, [("TEN", ten, "e10"), ("NOON", noon, "e12")])
    monkeypatch.setenv("TZ", "America/New_York")  # a local-time reading would mean 16:00 UTC and take nothing

    code, out, err = run_command("requeue", "--failed", "--since", "2030-01-02T11:00:00", lake_root=lake_root)

    assert (code, err) == (0, "")
    assert out.startswith("Requeued 1 FAILED item (failed at or after 2030-01-02T11:00:00Z) in ")
    assert [rows_by_id(queue)[i]["status"] for i in (at_ten, at_noon)] == ["FAILED", "PENDING"]

    code, out, err = run_command("requeue", "--failed", "--since", "2030-01-02T05:00:00-05:00", lake_root=lake_root)
    assert (code, err) == (0, "")
    assert out.startswith("Requeued 1 FAILED item (failed at or after 2030-01-02T10:00:00Z) in ")
    assert queue.counts()[QueueStatus.FAILED] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--since", "yesterday"], "argument --since: not an age or an ISO-8601 timestamp", id="word"),
        pytest.param(["--since", ""], "argument --since: not an age", id="empty"),
        pytest.param(["--since", "2h30"], "argument --since: not an age", id="no-unit"),
        pytest.param(["--since=-2h"], "argument --since: not an age", id="negative"),
        pytest.param(["--since", "1w"], "argument --since: not an age", id="weeks"),
        pytest.param(["--since", "2030-13-01"], "argument --since: not an age", id="bad-month"),
        pytest.param(["--since", "99999999999d"], "argument --since: age '99999999999d' reaches back", id="huge"),
        pytest.param(["--since"], "argument --since: expected one argument", id="no-value"),
    ],
)
def test_requeue_refuses_a_bad_since_with_exit_2(
    call: Callable[..., Result], queue: PositionQueue, uri: str, args: list[str], message: str
) -> None:
    fail_items(queue, [("AAPL", hours_ago(1), "error")])
    start = DeltaTable(uri).version()

    code, out, err = call("requeue", "--failed", *args)

    assert (code, out) == (2, "")
    assert "usage: position-pipeline requeue" in err and message in err
    assert "Traceback" not in err
    assert DeltaTable(uri).version() == start


@pytest.mark.system
def test_requeue_without_failed_is_a_usage_error(lake_root: Path) -> None:
    code, out, err = run_command("requeue", "--since", "2h", lake_root=lake_root)

    assert (code, out) == (2, "")
    assert "the following arguments are required: --failed" in err and "Traceback" not in err
    assert_nothing_written(lake_root)


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["requeue", "dry-run"])
def test_requeue_of_a_missing_queue_creates_nothing(
    call: Callable[..., Result], lake_root: Path, uri: str, dry_run: list[str]
) -> None:
    code, out, err = call("requeue", "--failed", *dry_run)

    assert (code, err) == (0, "")
    assert f"0 FAILED items in {uri} (no table yet)" in out
    assert_nothing_written(lake_root)


def test_requeue_of_a_table_that_is_no_queue_exits_1(call: Callable[..., Result], uri: str) -> None:
    write_deltalake(uri, pl.DataFrame({"x": [1]}).to_arrow())

    code, out, err = call("requeue", "--failed")

    assert (code, out) == (1, "")
    assert err.startswith("position-pipeline requeue: error: ") and "not a position queue table" in err
    assert DeltaTable(uri).version() == 0


def test_requeue_help(call: Callable[..., Result]) -> None:
    code, out, err = call("requeue", "--help")

    assert (code, err) == (0, "")
    assert out.startswith("usage: position-pipeline requeue")
    for words in ("--failed", "--since WHEN", "--dry-run", "--lake URI", "--json", "POSITION_LAKE_URI"):
        assert words in out
    flat = " ".join(out.split())
    assert "(required: the only selector for now)" in flat
    assert "(naive means UTC)" in flat and "without a timezone it is read as UTC" in flat
    assert "30m, 2h, 1d" in flat
    assert "requeue" in call("--help")[1]


@pytest.mark.system
def test_requeue_help_is_fast_because_nothing_heavy_is_imported() -> None:
    assert heavy_modules_after_help(["requeue", "--help"]) == []
