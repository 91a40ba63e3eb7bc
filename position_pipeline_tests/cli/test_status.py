"""`position-pipeline status` against real Delta tables under tmp_path (support/status_lake.py): the text and JSON
reports through `run`, the --lake option, and that importing the command and building its parser stays light."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from deltalake import write_deltalake

from position_pipeline.cli import status
from position_pipeline.cli.lake_option import LAKE_ENV, resolve_lake
from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, Priority, QueueStatus
from position_pipeline.core.status import collect_status
from position_pipeline.core.time_text import iso_seconds
from position_pipeline_tests.support.status_lake import MINUTE, Lake, T, build_full_lake


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """The lake of `build_full_lake`, shared by this module's tests; they must not change it."""
    return build_full_lake(str(tmp_path_factory.mktemp("status") / "lake"))


def test_a_queue_that_changes_while_read_is_flagged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path / "lake")
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    queue.insert(1, "X")
    claims_by_run = PositionQueue.claims_by_run

    def enqueue_meanwhile(self: PositionQueue) -> dict[str, int]:
        queue.insert(2, "Y")  # a producer commits between the status's reads
        return claims_by_run(self)

    monkeypatch.setattr(PositionQueue, "claims_by_run", enqueue_meanwhile)
    s = collect_status(root)

    assert s.queue_changed is True
    assert (s.queue.version, s.total) == (1, 1)  # the figures of the version first read
    assert "  note: the queue changed while it was read (now past version 1)" in status.format_text(s)
    monkeypatch.undo()
    again = collect_status(root)
    assert (again.queue_changed, again.queue.version, again.total) == (False, 2, 2)


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
    oldest = iso_seconds(full.created("N1"))
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
        iso_seconds(T + 20 * MINUTE + timedelta(seconds=5)),
        "2",
        "201",
        "G",
        "G not held again",
    ]
    assert lines[at + 3].split(None, 4) == [
        iso_seconds(T + 20 * MINUTE),
        "1",
        "102",
        "H",
        "H: IB sent no values",
    ]
    assert lines[at + 4].split(None, 4) == [iso_seconds(T + 3 * MINUTE), "3", "101", "F", "F failed 3"]
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


def test_constants_match_the_modules_they_stand_for(tmp_path: Path) -> None:
    assert LAKE_ENV == lake.LAKE_URI_VARIABLE
    # The report's rows are the queue's statuses in life order, its columns every priority: taken from the enums.
    depth = collect_status(str(tmp_path / "lake")).depth
    assert tuple(depth) == tuple(s.value for s in QueueStatus)
    assert all(tuple(row) == tuple(int(p) for p in Priority) for row in depth.values())


@pytest.mark.system
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
