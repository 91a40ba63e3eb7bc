"""`position-pipeline positions` on real Delta tables under tmp_path: its formats (table, CSV, JSON), its flags and
their refusals, and that importing it for --help loads neither polars nor deltalake. The shared history is
support/position_history.py."""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from position_pipeline.cli import positions
from position_pipeline.core import lake
from position_pipeline_tests.support.position_history import (
    AAPL,
    AFTER_ALL,
    B4,
    DU1,
    DU2,
    MSFT,
    OUTPUT_COLUMNS,
    SPY_PUT,
    history_lake,
    write_history,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def history_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A lake holding the shared history; tests must not change it."""
    return history_lake(tmp_path_factory)


# The command


def _command() -> argparse.ArgumentParser:
    """`positions` as cli/parser.py registers it: a subcommand whose flags come from add_arguments."""
    parser = argparse.ArgumentParser(prog="position-pipeline")
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("positions")
    positions.add_arguments(sub)
    sub.set_defaults(handler=positions.run)
    return parser


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    args = _command().parse_args(["positions", *argv])
    code = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_command_csv_parses_back(history_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "--lake", history_root, "--as-of", "2030-01-06T12:00:00Z", "--format", "csv")
    assert (code, err) == (0, "")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == OUTPUT_COLUMNS
    assert [(r["account"], int(r["conid"]), float(r["position"])) for r in rows] == [
        (DU1, AAPL, 80.0),
        (DU1, SPY_PUT, 7.0),
        (DU2, AAPL, 0.0),
        (DU2, MSFT, 10.0),
    ]
    assert rows[0]["snapshot_at"] == "2030-01-05T15:00:00.000000Z"
    assert datetime.fromisoformat(rows[0]["snapshot_at"]) == B4
    assert float(rows[0]["age_seconds"]) == (AFTER_ALL - B4).total_seconds()
    assert (rows[0]["right"], rows[0]["strike"], rows[0]["expiry"]) == ("", "", ""), "null is an empty field"
    parsed = pl.read_csv(io.StringIO(out), schema_overrides={"snapshot_at": pl.String})
    assert parsed.height == 4 and parsed["strike"].to_list() == [None, 450.0, None, None]


def test_command_json_loads(history_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--lake", history_root, "--as-of", "2030-01-03T10:00:00-05:00", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert isinstance(rows, list) and [set(r) for r in rows] == [set(OUTPUT_COLUMNS)] * 4
    aapl = rows[0]
    assert (aapl["account"], aapl["conid"], aapl["position"]) == (DU1, AAPL, 150.0)
    assert aapl["snapshot_at"] == "2030-01-03T00:30:00.000000Z" and aapl["right"] is None
    assert aapl["age_seconds"] == 14.5 * 3600  # as of 15:00 UTC
    assert rows[2]["market_price"] is None  # DU2 AAPL closed


def test_command_table_is_aligned_and_shows_the_age(history_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--lake", history_root, "--as-of", "2030-01-05T15:02:05Z")
    assert code == 0
    title, header, *rows = out.splitlines()
    assert title.startswith(f"4 positions as of 2030-01-05T15:02:05Z in {history_root}")
    assert header.split()[:3] == ["ACCOUNT", "CONID", "SYMBOL"] and header.endswith("AGE  VALUES AGE")
    assert len(rows) == 4
    age_end = header.index("  VALUES AGE")
    assert [row[:age_end].rsplit(maxsplit=1)[-1] for row in rows] == ["2m05s", "1d19h", "2d14h", "3d00h"]
    assert [row.rsplit(maxsplit=1)[-1] for row in rows] == ["2m00s"] * 4, "values_as_of: the minute IB stated"
    assert all(len(row) == len(header) for row in rows), "the age column is right-aligned under its header"
    symbol_at = header.index("SYMBOL")
    assert [row[symbol_at : symbol_at + 4] for row in rows] == ["AAPL", "SPY ", "AAPL", "MSFT"]
    assert "450.00" in rows[1] and "P" in rows[1].split()


def test_command_account_and_lake_from_the_environment(
    history_root: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(lake.LAKE_URI_VARIABLE, history_root)
    code, out, _ = _run(capsys, "--account", DU2, "--as-of", "2030-01-06T00:00:00+00:00", "--format", "json")
    assert code == 0
    assert [(r["account"], r["conid"]) for r in json.loads(out)] == [(DU2, AAPL), (DU2, MSFT)]


def test_command_on_a_missing_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "nowhere")
    assert _run(capsys, "--lake", root, "--format", "json")[:2] == (0, "[]\n")
    code, out, _ = _run(capsys, "--lake", root, "--format", "csv")
    assert (code, out) == (0, ",".join(OUTPUT_COLUMNS) + "\n")
    code, out, _ = _run(capsys, "--lake", root)
    assert code == 0 and "0 positions" in out and "(no table yet)" in out
    assert not Path(root).exists()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("2030-01-03T12:00:00", "has no timezone"),
        ("2030-01-03", "has no timezone"),
        ("yesterday", "not an ISO-8601 timestamp"),
        ("", "not an ISO-8601 timestamp"),
    ],
)
def test_command_refuses_an_as_of_without_timezone_or_unparsable(
    value: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _command().parse_args(["positions", "--as-of", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --as-of" in err and problem in err


def test_command_reports_an_unreadable_lake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "lake")
    uri = write_history(root)
    shutil.rmtree(Path(uri) / "snapshot_date=2030-01-05")
    code, out, err = _run(capsys, "--lake", root, "--as-of", "2030-01-06T00:00:00Z")
    assert (code, out) == (1, "")
    assert err.startswith("position-pipeline positions: error: ") and err.count("\n") == 1


@pytest.mark.system
def test_importing_the_module_leaves_polars_and_deltalake_unloaded() -> None:
    """cli/parser.py builds its parser (also for --help) by importing the command modules."""
    code = "import sys, position_pipeline.cli.positions; print(sorted({'polars', 'deltalake'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "[]"
