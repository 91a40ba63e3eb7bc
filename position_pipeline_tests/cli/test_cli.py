"""The producer commands of `position-pipeline` (enqueue, queue import, queue counts) against real Delta tables under
tmp_path: run as the real command in a subprocess where the process boundary matters (exit codes, stdout/stderr,
POSITION_LAKE_URI, the default lake), and through `cli.main` otherwise. After every command the queue itself is read
back with PositionQueue."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from position_pipeline.cli import main as cli
from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus

SUBPROCESS_TIMEOUT_S = 60

Result = tuple[int, str, str]


def queue_uri(lake_root: Path) -> str:
    return lake.table_uri(str(lake_root), lake.QUEUE_TABLE)


@pytest.fixture
def lake_root(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def uri(lake_root: Path) -> str:
    return queue_uri(lake_root)


@pytest.fixture
def queue(uri: str) -> PositionQueue:
    return PositionQueue(uri)


def run_command(*args: str, lake_root: Path | None, cwd: Path | None = None) -> Result:
    """The real command in a fresh interpreter; lake_root None leaves POSITION_LAKE_URI unset."""
    env = {k: v for k, v in os.environ.items() if k != "POSITION_LAKE_URI"}
    if lake_root is not None:
        env["POSITION_LAKE_URI"] = str(lake_root)
    done = subprocess.run(
        [sys.executable, "-m", "position_pipeline", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def steps(command: str, err: str) -> list[str]:
    """The progress lines a long command printed on stderr, without their prefix and seconds."""
    prefix = re.compile(rf"^position-pipeline {re.escape(command)}: +\d+\.\d s  (.*)$")
    lines = err.splitlines()
    matched = [prefix.match(line) for line in lines]
    assert all(matched), f"not a progress line in {lines}"
    return [m.group(1) for m in matched if m]


@pytest.fixture
def call(lake_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """`cli.main(args)` in this process with POSITION_LAKE_URI set to the test's lake; returns (code, out, err)."""
    monkeypatch.setenv("POSITION_LAKE_URI", str(lake_root))

    def invoke(*args: str) -> Result:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            cli.main(list(args))
        out, err = capsys.readouterr()
        code = exited.value.code
        return (code if isinstance(code, int) else (0 if code is None else 1)), out, err

    return invoke


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def assert_nothing_written(lake_root: Path) -> None:
    assert not lake_root.exists(), f"a refused command wrote to the lake: {sorted(lake_root.rglob('*'))}"


# enqueue: one contract


def test_enqueue_one_contract_as_a_real_command(lake_root: Path, queue: PositionQueue, uri: str) -> None:
    code, out, err = run_command("enqueue", "--conid", "265598", "--symbol", "AAPL", lake_root=lake_root)

    assert (code, err) == (0, "")
    rows = queue.read().to_dicts()
    assert len(rows) == 1
    row = rows[0]
    assert row["request_id"] in out and uri in out
    assert (row["conid"], row["symbol"], row["priority"], row["status"]) == (265598, "AAPL", 2, "PENDING")
    assert row["account"] is None


@pytest.mark.parametrize(
    ("priority", "expected"),
    [pytest.param("1", 1, id="number"), pytest.param("active", 1, id="name"), pytest.param("Monitoring", 2, id="Name")],
)
def test_enqueue_one_contract_with_account_and_priority(
    call: Callable[..., Result], queue: PositionQueue, uri: str, priority: str, expected: int
) -> None:
    code, out, err = call(
        "enqueue", "--conid", "265598", "--symbol", "AAPL", "--priority", priority, "--account", "DU1000001", "--json"
    )

    assert (code, err) == (0, "")
    printed = json.loads(out)
    assert printed["table"] == uri
    [row] = queue.read().to_dicts()
    assert row["request_id"] == printed["request_id"]
    assert (row["conid"], row["symbol"], row["priority"], row["account"]) == (265598, "AAPL", expected, "DU1000001")


def test_enqueue_appends_to_an_existing_queue(call: Callable[..., Result], queue: PositionQueue) -> None:
    first = queue.insert(8314, "IBM")

    assert call("enqueue", "--conid", "265598", "--symbol", "AAPL")[0] == 0

    assert queue.read()["request_id"].to_list()[0] == first
    assert queue.read()["symbol"].to_list() == ["IBM", "AAPL"]


@pytest.mark.parametrize(
    ("options", "field", "problem"),
    [
        pytest.param(["--conid", "0", "--symbol", "AAPL"], "--conid", "must be positive", id="conid-zero"),
        pytest.param(["--conid", "-5", "--symbol", "AAPL"], "--conid", "must be positive", id="conid-negative"),
        pytest.param(["--conid", "abc", "--symbol", "AAPL"], "--conid", "must be an integer", id="conid-text"),
        pytest.param(["--conid", "265598", "--symbol", ""], "--symbol", "blank", id="symbol-empty"),
        pytest.param(["--conid", "265598", "--symbol", "   "], "--symbol", "blank", id="symbol-spaces"),
        pytest.param(["--conid", "1", "--symbol", "A", "--priority", "3"], "--priority", "got 3", id="priority-3"),
        pytest.param(["--conid", "1", "--symbol", "A", "--priority", "urgent"], "--priority", "urgent", id="priority"),
        pytest.param(["--conid", "1", "--symbol", "A", "--account", "DU-1"], "--account", "'DU-1'", id="account"),
        pytest.param(["--conid", "1", "--symbol", "A", "--account", ""], "--account", "letters", id="account-empty"),
    ],
)
def test_enqueue_refuses_a_bad_option_and_writes_nothing(
    call: Callable[..., Result], lake_root: Path, options: list[str], field: str, problem: str
) -> None:
    code, out, err = call("enqueue", *options)

    assert (code, out) == (1, "")
    assert "nothing written" in err
    assert f"  {field}: " in err and problem in err
    assert "Traceback" not in err
    assert_nothing_written(lake_root)


def test_enqueue_reports_every_bad_option_at_once(call: Callable[..., Result], lake_root: Path) -> None:
    code, _, err = call("enqueue", "--conid", "abc", "--symbol", "A", "--priority", "urgent")

    assert code == 1
    assert "--conid: must be an integer" in err and "--priority: must be" in err
    assert_nothing_written(lake_root)


# enqueue: a CSV file


def test_enqueue_from_file_as_a_real_command(tmp_path: Path, lake_root: Path, queue: PositionQueue, uri: str) -> None:
    items = write_csv(
        tmp_path / "items.csv",
        "conid,symbol,priority,account\n265598,AAPL,1,DU1000001\n272093,MSFT,,\n\n8314,IBM,2,DU1000002\n",
    )

    code, out, err = run_command("enqueue", "--from-file", str(items), lake_root=lake_root)

    assert code == 0 and steps("enqueue", err) == ["3 rows valid; writing them in one commit", "committed 3 items"]
    assert "Enqueued 3 items" in out and uri in out
    table = queue.read()
    assert table.select("conid", "symbol", "priority", "account", "status").rows() == [
        (265598, "AAPL", 1, "DU1000001", "PENDING"),
        (272093, "MSFT", 2, None, "PENDING"),
        (8314, "IBM", 2, "DU1000002", "PENDING"),
    ]


def test_enqueue_from_file_without_optional_columns_prints_json(
    call: Callable[..., Result], tmp_path: Path, queue: PositionQueue, uri: str
) -> None:
    items = write_csv(tmp_path / "items.csv", "symbol,conid\nAAPL,265598\nMSFT,272093\n")

    code, out, err = call("enqueue", "--from-file", str(items), "--json")

    assert (code, err) == (0, "")
    printed = json.loads(out)
    table = queue.read()
    assert printed == {"enqueued": 2, "request_ids": table["request_id"].to_list(), "table": uri}
    assert table.select("conid", "symbol", "priority").rows() == [(265598, "AAPL", 2), (272093, "MSFT", 2)]


def test_enqueue_from_file_with_a_bad_row_writes_nothing(
    tmp_path: Path, lake_root: Path, queue: PositionQueue, uri: str
) -> None:
    queue.insert(8314, "IBM")
    before = DeltaTable(uri).version()
    items = write_csv(tmp_path / "items.csv", "conid,symbol,priority\n265598,AAPL,1\n272093,MSFT,7\n")

    code, out, err = run_command("enqueue", "--from-file", str(items), lake_root=lake_root)

    assert (code, out) == (1, "")
    assert "nothing written" in err and str(items) in err
    assert "row 1 (line 3): priority:" in err
    assert "Traceback" not in err
    assert DeltaTable(uri).version() == before
    assert queue.read()["symbol"].to_list() == ["IBM"]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param("conid,symbol\n-5,AAPL\n", "row 0 (line 2): conid:", id="conid"),
        pytest.param("conid,symbol\n1,A\n2,B\nabc,C\n", "row 2 (line 4): conid:", id="conid-text"),
        pytest.param("conid,symbol\n265598, \n", "row 0 (line 2): symbol:", id="symbol"),
        pytest.param("conid,symbol,priority\n265598,AAPL,0\n", "row 0 (line 2): priority:", id="priority"),
        pytest.param("conid,symbol,account\n1,A,DU1\n2,B,DU 2\n", "row 1 (line 3): account:", id="account"),
        pytest.param("conid,ticker\n265598,AAPL\n", "line 1: symbol:", id="header"),
        pytest.param("", "header", id="empty-file"),
    ],
)
def test_enqueue_from_file_names_the_line_and_field(
    call: Callable[..., Result], tmp_path: Path, lake_root: Path, text: str, where: str
) -> None:
    items = write_csv(tmp_path / "items.csv", text)

    code, out, err = call("enqueue", "--from-file", str(items))

    assert (code, out) == (1, "")
    assert where in err and "nothing written" in err
    assert_nothing_written(lake_root)


def test_enqueue_from_a_missing_or_binary_file(call: Callable[..., Result], tmp_path: Path, lake_root: Path) -> None:
    code, out, err = call("enqueue", "--from-file", str(tmp_path / "absent.csv"))
    assert (code, out) == (1, "")
    assert "cannot read" in err and "absent.csv" in err

    binary = tmp_path / "items.csv"
    binary.write_bytes(b"conid,symbol\n\xff\xfe1,A\n")
    code, out, err = call("enqueue", "--from-file", str(binary))
    assert (code, out) == (1, "")
    assert "not UTF-8" in err
    assert_nothing_written(lake_root)


# Usage errors: exit 2, nothing written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["enqueue"], "--conid and --symbol required", id="nothing"),
        pytest.param(["enqueue", "--conid", "1"], "--symbol required", id="no-symbol"),
        pytest.param(["enqueue", "--symbol", "A"], "--conid required", id="no-conid"),
        pytest.param(["enqueue", "--from-file", "x.csv", "--conid", "1"], "cannot be combined with --conid", id="both"),
        pytest.param(["enqueue", "--from-file", "x.csv", "--priority", "1"], "--priority", id="file-priority"),
        pytest.param(["enqueue", "--conid", "1", "--symbol", "A", "--lake", ""], "--lake", id="empty-lake"),
        pytest.param(["enqueue", "--conid", "1", "--symbol", "A", "--bogus"], "unrecognized", id="unknown-flag"),
        pytest.param(["queue"], "required", id="queue-alone"),
        pytest.param(["queue", "import"], "PATH", id="import-no-path"),
        pytest.param(["queue", "drop"], "invalid choice", id="queue-unknown"),
    ],
)
def test_usage_errors_exit_2(call: Callable[..., Result], lake_root: Path, args: list[str], message: str) -> None:
    code, out, err = call(*args)

    assert (code, out) == (2, "")
    assert "usage:" in err and message in err
    assert_nothing_written(lake_root)


# queue import: the original design's table


LEGACY_SCHEMA = {
    "request_id": pl.String,
    "conid": pl.Int64,
    "symbol": pl.String,
    "priority": pl.Int64,
    "status": pl.String,
    "created_at": pl.String,
    "updated_at": pl.String,
    "error_message": pl.String,
}

LEGACY_ROWS = [
    ("a1b2c3d4-0000-4000-8000-000000000001", 756733, "SPY", 2, "PENDING", "2025-01-02T03:04:05.123456", None),
    ("a1b2c3d4-0000-4000-8000-000000000002", 320227571, "QQQ", 1, "SUCCESS", "2025-01-02T03:05:00", None),
    ("a1b2c3d4-0000-4000-8000-000000000003", 9579970, "IWM", 2, "FAILED", "2025-01-02T03:06:00.5", "not found in IB"),
]


def write_legacy_table(path: Path, rows: list[tuple] = LEGACY_ROWS, mode: Literal["error", "append"] = "error") -> str:
    """A queue table as the original design wrote it: naive ISO-8601 strings for times."""
    frame = pl.DataFrame(
        [
            {
                "request_id": request_id,
                "conid": conid,
                "symbol": symbol,
                "priority": priority,
                "status": status,
                "created_at": created,
                "updated_at": created,
                "error_message": error,
            }
            for request_id, conid, symbol, priority, status, created, error in rows
        ],
        schema=LEGACY_SCHEMA,
    )
    write_deltalake(str(path), frame.to_arrow(), mode=mode)
    return str(path)


def test_queue_import_adopts_every_item_once(tmp_path: Path, lake_root: Path, queue: PositionQueue, uri: str) -> None:
    legacy = write_legacy_table(tmp_path / "legacy_queue")

    code, out, err = run_command("queue", "import", legacy, lake_root=lake_root)

    assert code == 0 and steps("queue import", err) == [
        f"read 3 rows from {legacy}",
        "3 rows valid; adding those not already here in one commit",
        "committed 3 new items (0 were already here)",
    ]
    assert "Adopted 3 items" in out and "0 were already there" in out and uri in out
    rows = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert set(rows) == {r[0] for r in LEGACY_ROWS}
    pending, success, failed = (rows[r[0]] for r in LEGACY_ROWS)
    assert (pending["conid"], pending["symbol"], pending["priority"], pending["status"]) == (
        756733,
        "SPY",
        2,
        "PENDING",
    )
    assert pending["created_at"] == datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert (success["status"], success["priority"]) == ("SUCCESS", 1)
    assert (failed["status"], failed["error_message"]) == ("FAILED", "not found in IB")
    assert failed["created_at"] == datetime(2025, 1, 2, 3, 6, 0, 500000, tzinfo=UTC)
    version = DeltaTable(uri).version()

    code, out, err = run_command("queue", "import", legacy, lake_root=lake_root)

    assert code == 0 and steps("queue import", err)[-1] == "committed 0 new items (3 were already here)"
    assert "Adopted 0 items" in out and "3 were already there" in out
    assert DeltaTable(uri).version() == version, "a second import must not commit"
    assert queue.read().height == 3


def test_queue_import_next_to_our_items_prints_json(
    call: Callable[..., Result], tmp_path: Path, queue: PositionQueue, uri: str
) -> None:
    legacy = write_legacy_table(tmp_path / "legacy_queue", LEGACY_ROWS[:2])
    queue.insert(8314, "IBM")

    code, out, err = call("queue", "import", legacy, "--json")

    assert (code, err) == (0, "")
    assert json.loads(out) == {"adopted": 2, "already_present": 0, "source": legacy, "table": uri}
    write_legacy_table(tmp_path / "legacy_queue", LEGACY_ROWS[2:], mode="append")  # the legacy table grew
    code, out, _ = call("queue", "import", legacy, "--json")
    assert code == 0 and json.loads(out)["adopted"] == 1 and json.loads(out)["already_present"] == 2
    assert queue.read().height == 4


def test_queue_import_refuses_a_bad_row_and_writes_nothing(
    call: Callable[..., Result], tmp_path: Path, lake_root: Path
) -> None:
    bad = [*LEGACY_ROWS[:1], (*LEGACY_ROWS[1][:5], "yesterday", None), *LEGACY_ROWS[2:]]
    legacy = write_legacy_table(tmp_path / "legacy_queue", bad)

    code, out, err = call("queue", "import", legacy)

    assert (code, out) == (1, "")
    assert "row 1: created_at:" in err and "nothing written" in err and legacy in err
    assert_nothing_written(lake_root)


def test_queue_import_of_a_path_that_is_no_delta_table(
    call: Callable[..., Result], tmp_path: Path, lake_root: Path
) -> None:
    code, out, err = call("queue", "import", str(tmp_path / "nowhere"))

    assert (code, out) == (1, "")
    assert "is not a Delta table" in err
    assert_nothing_written(lake_root)


# queue counts


def test_queue_counts_json_as_a_real_command(lake_root: Path, queue: PositionQueue, uri: str) -> None:
    ids = queue.insert_many([(1, "A"), (2, "B"), (3, "C"), (4, "D")])
    queue.mark_success(ids[0])
    queue.mark_failed(ids[1], "no such contract")

    code, out, err = run_command("queue", "counts", "--json", lake_root=lake_root)

    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "table": uri,
        "exists": True,
        "counts": {"PENDING": 2, "PROCESSING": 0, "SUCCESS": 1, "FAILED": 1},
        "total": 4,
    }
    assert queue.counts() == {
        QueueStatus.PENDING: 2,
        QueueStatus.PROCESSING: 0,
        QueueStatus.SUCCESS: 1,
        QueueStatus.FAILED: 1,
    }


def test_queue_counts_as_text_after_enqueue(call: Callable[..., Result], uri: str) -> None:
    assert call("enqueue", "--conid", "265598", "--symbol", "AAPL")[0] == 0

    code, out, err = call("queue", "counts")

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"Position queue {uri}"
    assert lines[1].split() == ["PENDING", "1"] and lines[-1].split() == ["total", "1"]
    assert [line.split()[0] for line in lines[1:]] == [*(s.value for s in QueueStatus), "total"]


def test_queue_counts_of_a_missing_queue_creates_nothing(call: Callable[..., Result], lake_root: Path) -> None:
    code, out, _ = call("queue", "counts", "--json")

    assert code == 0
    printed = json.loads(out)
    assert printed["exists"] is False and printed["total"] == 0
    assert set(printed["counts"].values()) == {0}
    assert_nothing_written(lake_root)


# Where the lake is


def test_lake_option_overrides_the_environment(call: Callable[..., Result], tmp_path: Path, lake_root: Path) -> None:
    other = tmp_path / "other-lake"

    code, out, _ = call("enqueue", "--conid", "265598", "--symbol", "AAPL", "--lake", str(other), "--json")

    assert code == 0 and json.loads(out)["table"] == queue_uri(other)
    assert PositionQueue(queue_uri(other)).read().height == 1
    assert_nothing_written(lake_root)
    code, out, _ = call("queue", "counts", "--json", "--lake", str(other))
    assert code == 0 and json.loads(out)["total"] == 1


def test_default_lake_is_dot_lake_in_the_current_directory(tmp_path: Path) -> None:
    code, out, err = run_command(
        "enqueue", "--conid", "265598", "--symbol", "AAPL", "--json", lake_root=None, cwd=tmp_path
    )

    assert (code, err) == (0, "")
    expected = queue_uri((tmp_path / ".lake").resolve())
    assert json.loads(out)["table"] == expected
    assert PositionQueue(expected).read()["symbol"].to_list() == ["AAPL"]


# Help


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param([], ["enqueue", "queue", "simulate"], id="top"),
        pytest.param(
            ["enqueue"], ["--conid", "--symbol", "--priority", "--account", "--from-file", "--lake"], id="enq"
        ),
        pytest.param(["queue"], ["import", "counts"], id="queue"),
        pytest.param(["queue", "import"], ["PATH", "--lake", "--json"], id="import"),
        pytest.param(["queue", "counts"], ["--lake", "--json"], id="counts"),
    ],
)
def test_help_of_each_command(call: Callable[..., Result], args: list[str], expected: list[str]) -> None:
    code, out, err = call(*args, "--help")

    assert (code, err) == (0, "")
    assert out.startswith("usage: position-pipeline")
    for word in expected:
        assert word in out
    if "--lake" in expected:
        assert "POSITION_LAKE_URI" in out


def heavy_modules_after_help(*commands: list[str]) -> list[str]:
    """The heavy modules a fresh interpreter has imported after printing each command's help (all must exit 0)."""
    probe = (
        "import json, sys\n"
        "from position_pipeline.cli import main as cli\n"
        f"for args in {list(commands)!r}:\n"
        "    try:\n"
        "        cli.main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "heavy = ('polars', 'deltalake', 'pyarrow', 'position_pipeline.core.queue')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "print(json.dumps(heavy), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stderr)  # nothing else on stderr


def test_help_is_fast_because_nothing_heavy_is_imported() -> None:
    assert heavy_modules_after_help(["--help"], ["enqueue", "--help"], ["queue", "import", "--help"]) == []


def test_the_cli_names_the_same_lake_variable_as_the_lake_module() -> None:
    from position_pipeline.cli import main as cli
    from position_pipeline.core import lake

    assert cli.LAKE_ENV == lake.LAKE_URI_VARIABLE  # the shared lake_option constant, as the CLI uses it


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


def test_requeue_help_is_fast_because_nothing_heavy_is_imported() -> None:
    assert heavy_modules_after_help(["requeue", "--help"]) == []
