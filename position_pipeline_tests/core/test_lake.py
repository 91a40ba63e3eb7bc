"""The lake's layout and the position_updates table on real Delta tables under tmp_path: URIs, the root from the
environment, the declared schemas, creation (also racing), appends the way the Dagster IO manager makes them, and the
request-id lookup that keeps a re-run from writing an item twice."""

from __future__ import annotations

import multiprocessing
import os
import queue as stdlib_queue
import traceback
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from position_pipeline.core import lake
from position_pipeline_tests.support.position_rows import position_update_row

SPAWN = multiprocessing.get_context("spawn")

pytestmark = pytest.mark.timeout(60)


# Layout


def test_tables_live_under_the_positions_schema_folder() -> None:
    assert lake.SCHEMA_NAME == "positions"
    assert lake.table_uri("/data/lake", "position_updates") == "/data/lake/positions/position_updates"
    assert lake.table_uri("/data/lake/", lake.QUEUE_TABLE) == "/data/lake/positions/position_queue"
    assert lake.table_uri(Path("/data/lake"), "t") == "/data/lake/positions/t"
    assert lake.table_uri("s3://bucket/lake", "position_updates") == "s3://bucket/lake/positions/position_updates"
    assert lake.table_uri("s3://bucket/lake/", "t") == "s3://bucket/lake/positions/t"
    assert lake.table_uri("s3://bucket", "t") == "s3://bucket/positions/t"
    for bad in ["", "a/b", "a\\b", ".", ".."]:
        with pytest.raises(ValueError, match="single path segment"):
            lake.table_uri("/data/lake", bad)
    with pytest.raises(ValueError, match="empty"):
        lake.table_uri("", "t")


def test_lake_root_from_the_environment_or_dot_lake_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert lake.DEFAULT_LAKE_ROOT == ".lake"
    assert lake.LAKE_URI_VARIABLE == "POSITION_LAKE_URI"
    monkeypatch.chdir(tmp_path)
    assert lake.lake_root({}) == str(tmp_path / ".lake")
    assert os.path.isabs(lake.lake_root({}))
    assert lake.lake_root({"POSITION_LAKE_URI": "s3://bucket/lake"}) == "s3://bucket/lake"
    assert lake.lake_root({"POSITION_LAKE_URI": "  "}) == str(tmp_path / ".lake")  # blank is unset
    assert lake.lake_root({"OTHER": "x"}) == str(tmp_path / ".lake")

    monkeypatch.delenv("POSITION_LAKE_URI", raising=False)
    assert lake.lake_root() == str(tmp_path / ".lake")
    monkeypatch.setenv("POSITION_LAKE_URI", "/srv/lake")
    assert lake.lake_root() == "/srv/lake"
    assert not (tmp_path / ".lake").exists(), "lake_root only names the folder"


# Schemas


POSITION_VALUES = [
    "account",
    "symbol",
    "sec_type",
    "right",
    "strike",
    "expiry",
    "multiplier",
    "currency",
    "local_symbol",
    "position",
    "average_cost",
    "market_price",
    "market_value",
    "unrealized_pnl",
    "realized_pnl",
    "account_update_time",
]


DESK_VALUES = ["values_as_of", "base_currency", "fx_rate", "market_value_base", "unrealized_pnl_base",
               "realized_pnl_base", "daily_pnl", "values_from"]  # fmt: skip
NULLABLE_IN_ORDER = [
    "right", "strike", "expiry", "multiplier", "market_price", "realized_pnl", "account_update_time", *DESK_VALUES
]  # fmt: skip


def test_snapshot_results_schema() -> None:
    schema = lake.SNAPSHOT_RESULTS_SCHEMA
    assert schema.names() == [
        "request_id",
        "conid",
        "queued_symbol",
        "queued_at",
        "claimed_at",
        "claims",
        "snapshot_at",
        "client_id",
        *POSITION_VALUES,
        *DESK_VALUES,
        "error",
    ]
    assert schema["conid"] == pl.Int64 and schema["client_id"] == pl.Int32 and schema["claims"] == pl.Int32
    for name in ["queued_at", "claimed_at", "snapshot_at"]:
        assert schema[name] == pl.Datetime("us", "UTC")
    for name in ["strike", "multiplier", "position", "average_cost", "market_price", "market_value"]:
        assert schema[name] == pl.Float64
    for name in ["unrealized_pnl", "realized_pnl"]:
        assert schema[name] == pl.Float64
    for name in ["request_id", "queued_symbol", "account", "right", "expiry", "account_update_time", "error"]:
        assert schema[name] == pl.String


def test_position_updates_schema() -> None:
    schema = lake.POSITION_UPDATES_SCHEMA
    assert schema.names() == [
        "request_id",
        "conid",
        *POSITION_VALUES,
        "queued_at",
        "snapshot_at",
        "run_id",
        "snapshot_date",
        *DESK_VALUES,
    ]
    assert schema["snapshot_date"] == pl.Date
    assert schema["values_as_of"] == pl.Datetime("us", "UTC") and schema["fx_rate"] == pl.Float64
    assert schema["queued_at"] == schema["snapshot_at"] == pl.Datetime("us", "UTC")
    # Every history column comes from a snapshot result, except what the position_updates step stamps.
    shared = [n for n in schema.names() if n not in ("run_id", "snapshot_date")]
    assert all(lake.SNAPSHOT_RESULTS_SCHEMA[n] == schema[n] for n in shared)
    assert sorted(lake.POSITION_UPDATES_NULLABLE) == sorted([
        "account_update_time", "expiry", "market_price", "multiplier", "realized_pnl", "right", "strike", *DESK_VALUES
    ])  # fmt: skip
    arrow = lake.POSITION_UPDATES_ARROW_SCHEMA
    assert [f.name for f in arrow if f.nullable] == NULLABLE_IN_ORDER
    assert lake.POSITION_UPDATES_KEY == ("request_id", "account") and not arrow.field("account").nullable
    assert arrow.field("request_id").type == pa.string()


# position_updates


def _updates(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows as the position_updates step emits them: a polars frame in POSITION_UPDATES_SCHEMA, each read at 14:30 UTC
    on its snapshot_date, queued at 09:00 on 2030-01-02, by run-1, with no account update time."""
    queued = datetime(2030, 1, 2, 9, 0, tzinfo=UTC)
    full = []
    for row in rows:
        day: date = row["snapshot_date"]
        at = datetime(day.year, day.month, day.day, 14, 30, tzinfo=UTC)
        defaults = {"snapshot_at": at, "queued_at": queued, "run_id": "run-1", "account_update_time": None}
        full.append(position_update_row(**{**defaults, **row}))
    return pl.DataFrame(full, schema=lake.POSITION_UPDATES_SCHEMA)


def test_ensure_creates_the_partitioned_table_once(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    uri = lake.ensure_position_updates_table(root)
    assert uri == lake.table_uri(root, lake.POSITION_UPDATES_TABLE) == str(tmp_path / "lake/positions/position_updates")
    dt = DeltaTable(uri)
    assert dt.version() == 0
    assert dt.metadata().partition_columns == ["snapshot_date"]
    assert dt.metadata().name == "position_updates"
    fields = {f.name: f for f in dt.schema().fields}
    assert [n for n, f in fields.items() if f.nullable] == NULLABLE_IN_ORDER
    assert fields["snapshot_at"].type.type == "timestamp" and fields["snapshot_date"].type.type == "date"
    assert pl.scan_delta(uri).collect_schema() == lake.POSITION_UPDATES_SCHEMA

    assert lake.ensure_position_updates_table(root) == uri
    assert DeltaTable(uri).version() == 0, "an existing table is left as it is"


def test_ensure_refuses_a_table_it_did_not_declare(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    uri = lake.table_uri(root, lake.POSITION_UPDATES_TABLE)
    write_deltalake(uri, _updates([{"request_id": "a", "snapshot_date": date(2030, 1, 2)}]).to_arrow())  # no partitions
    with pytest.raises(ValueError, match="not a position_updates table"):
        lake.ensure_position_updates_table(root)

    other = str(tmp_path / "other")
    write_deltalake(lake.table_uri(other, lake.POSITION_UPDATES_TABLE), pl.DataFrame({"x": [1]}).to_arrow())
    with pytest.raises(ValueError, match="not a position_updates table"):
        lake.ensure_position_updates_table(other)
    with pytest.raises(ValueError, match="atomic"):
        lake.ensure_position_updates_table("s3://bucket/lake", {"aws_s3_allow_unsafe_rename": "true"})


def test_append_without_partition_by_lands_in_date_partitions(tmp_path: Path) -> None:
    """How the Dagster Delta IO manager writes an unpartitioned asset: mode append, no partition_by."""
    uri = lake.ensure_position_updates_table(str(tmp_path / "lake"))
    stock = {"request_id": "stock", "snapshot_date": date(2030, 1, 2)}
    option = {
        "request_id": "option",
        "conid": 700001,
        "symbol": "SPY",
        "sec_type": "OPT",
        "right": "P",
        "strike": 450.0,
        "expiry": "20300118",
        "multiplier": 100.0,
        "local_symbol": "SPY   300118P00450000",
        "account_update_time": "14:29",
        "snapshot_date": date(2030, 1, 3),
    }
    write_deltalake(uri, _updates([stock, option]).to_arrow(), mode="append")
    # The IO manager hands delta-rs a RecordBatchReader of the polars frame's Arrow data.
    later = {"request_id": "later", "snapshot_date": date(2030, 1, 3), "run_id": "run-2"}
    write_deltalake(uri, _updates([later]).to_arrow().to_reader(), mode="append")

    dt = DeltaTable(uri)
    assert dt.version() == 2
    folders = sorted(p.name for p in Path(uri).iterdir() if p.name != "_delta_log")
    assert folders == ["snapshot_date=2030-01-02", "snapshot_date=2030-01-03"]
    assert sorted(Path(p).parent.name for p in dt.file_uris()) == [
        "snapshot_date=2030-01-02",
        "snapshot_date=2030-01-03",
        "snapshot_date=2030-01-03",
    ]
    rows = {r["request_id"]: r for r in pl.read_delta(uri).iter_rows(named=True)}
    assert [rows[k]["snapshot_date"] for k in ("stock", "option", "later")] == [
        date(2030, 1, 2),
        date(2030, 1, 3),
        date(2030, 1, 3),
    ]
    assert [rows["stock"][c] for c in ("right", "strike", "expiry", "multiplier")] == [None] * 4
    assert (rows["option"]["right"], rows["option"]["strike"], rows["option"]["multiplier"]) == ("P", 450.0, 100.0)

    # NOT NULL is enforced on the data, whatever the Arrow field says.
    with pytest.raises(Exception, match="failed validation"):
        write_deltalake(uri, _updates([{**stock, "request_id": "x", "account": None}]).to_arrow(), mode="append")
    assert DeltaTable(uri).version() == 2


def _ensure(root: str, results: Any) -> None:
    """Child process: create position_updates (or find it), report its URI."""
    try:
        results.put((lake.ensure_position_updates_table(root), None))
    except Exception:
        results.put((None, traceback.format_exc()))


@pytest.mark.system
def test_concurrent_creators_all_get_the_table(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    results = SPAWN.Queue()
    processes = [SPAWN.Process(target=_ensure, args=(root, results)) for _ in range(4)]
    for p in processes:
        p.start()
    reports = []
    for _ in processes:
        try:
            reports.append(results.get(timeout=45))
        except stdlib_queue.Empty:
            pytest.fail("a creator did not report")
    for p in processes:
        p.join(timeout=10)
        assert p.exitcode == 0
    assert [error for _, error in reports] == [None] * 4
    assert {uri for uri, _ in reports} == {lake.table_uri(root, lake.POSITION_UPDATES_TABLE)}
    dt = DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE))
    assert dt.version() == 0 and dt.metadata().partition_columns == ["snapshot_date"]


def _table_without(root: str, missing: list[str]) -> tuple[str, list[str], pl.DataFrame]:
    """A position_updates table written before the `missing` columns existed, with one row: its URI, its columns
    and that row."""
    uri = lake.table_uri(root, lake.POSITION_UPDATES_TABLE)
    old_names = [n for n in lake.POSITION_UPDATES_SCHEMA.names() if n not in missing]
    old_schema = pa.schema([lake.POSITION_UPDATES_ARROW_SCHEMA.field(n) for n in old_names])
    DeltaTable.create(uri, old_schema, partition_by=["snapshot_date"])
    old_row = _updates([{"request_id": "old", "snapshot_date": date(2030, 1, 2)}]).select(old_names)
    write_deltalake(uri, old_row.to_arrow().cast(old_schema), mode="append")
    return uri, old_names, old_row


def test_a_table_from_before_the_desk_columns_gets_them_and_keeps_its_rows(tmp_path: Path) -> None:
    """An existing lake needs nothing: the first ensure (every sync run's) adds the new columns, null in old rows."""
    root = str(tmp_path / "lake")
    uri, old_names, _ = _table_without(root, DESK_VALUES)
    assert lake.ensure_position_updates_table(root) == uri
    dt = DeltaTable(uri)
    assert dt.version() == 2 and [f.name for f in dt.schema().fields] == lake.POSITION_UPDATES_SCHEMA.names()
    write_deltalake(uri, _updates([{"request_id": "new", "snapshot_date": date(2030, 1, 3)}]).to_arrow(), mode="append")
    rows = pl.read_delta(uri).sort("request_id")
    assert rows["request_id"].to_list() == ["new", "old"]
    assert rows["values_as_of"].to_list()[1] is None and rows["values_as_of"].to_list()[0] is not None
    assert lake.ensure_position_updates_table(root) == uri and DeltaTable(uri).version() == 3, "added once"

    other = str(tmp_path / "other")  # a table missing an older column is not ours: refused, not altered
    names = [n for n in old_names if n != "symbol"]
    DeltaTable.create(lake.table_uri(other, lake.POSITION_UPDATES_TABLE),
                      pa.schema([lake.POSITION_UPDATES_ARROW_SCHEMA.field(n) for n in names]),
                      partition_by=["snapshot_date"])  # fmt: skip
    with pytest.raises(ValueError, match="not a position_updates table"):
        lake.ensure_position_updates_table(other)


def test_a_table_with_the_issue_13_columns_gets_daily_pnl_and_values_from(tmp_path: Path) -> None:
    """A lake written once values_as_of and the base values existed, before daily_pnl and values_from: one ALTER."""
    root = str(tmp_path / "lake")
    uri, _, old_row = _table_without(root, ["daily_pnl", "values_from"])

    assert lake.ensure_position_updates_table(root) == uri

    dt = DeltaTable(uri)
    assert dt.version() == 2 and [f.name for f in dt.schema().fields] == lake.POSITION_UPDATES_SCHEMA.names()
    rows = pl.read_delta(uri)
    assert rows["daily_pnl"].to_list() == [None] and rows["values_from"].to_list() == [None]
    assert rows["values_as_of"].to_list() == old_row["values_as_of"].to_list()  # the older columns kept
