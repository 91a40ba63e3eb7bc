"""`write_plan.existing_row_keys`: which (request_id, account) rows position_updates already holds, read from the
recent partitions only (the re-claim check of exactly-once)."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from position_pipeline.core import lake
from position_pipeline.core.write_plan import existing_row_keys
from position_pipeline_tests.support.position_rows import position_update_row


def _updates(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows read at 14:30 UTC on their snapshot_date, in account DU1000001 unless they say otherwise."""
    full = []
    for row in rows:
        day: date = row["snapshot_date"]
        at = datetime(day.year, day.month, day.day, 14, 30, tzinfo=UTC)
        full.append(position_update_row(**{"snapshot_at": at, **row}))
    return pl.DataFrame(full, schema=lake.POSITION_UPDATES_SCHEMA)


def keys(*ids: str, account: str = "DU1000001") -> set[tuple[str, str]]:
    return {(i, account) for i in ids}


def test_existing_row_keys_read_only_recent_partitions(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    assert existing_row_keys(root, ["a"], date(2030, 1, 1)) == set(), "no table yet: no rows"
    uri = lake.ensure_position_updates_table(root)
    assert existing_row_keys(root, ["a"], date(2030, 1, 1)) == set(), "an empty table: no rows"
    rows = [
        {"request_id": "old", "snapshot_date": date(2030, 1, 1)},
        {"request_id": "mid", "snapshot_date": date(2030, 1, 2)},
        {"request_id": "new", "snapshot_date": date(2030, 1, 3)},
        {"request_id": "other", "snapshot_date": date(2030, 1, 3)},
    ]
    write_deltalake(uri, _updates(rows).to_arrow(), mode="append")

    wanted = ["old", "mid", "new", "never-written"]
    assert existing_row_keys(root, wanted, date(2030, 1, 1)) == keys("old", "mid", "new")
    assert existing_row_keys(root, wanted, date(2030, 1, 2)) == keys("mid", "new")
    assert existing_row_keys(root, wanted, datetime(2030, 1, 3, 23, tzinfo=UTC)) == keys("new")
    east = timezone(timedelta(hours=5))
    assert existing_row_keys(root, wanted, datetime(2030, 1, 3, 2, tzinfo=east)) == keys("mid", "new")  # UTC day 2
    assert existing_row_keys(root, wanted, date(2030, 1, 4)) == set()
    assert existing_row_keys(root, ["never-written", "x"], date(2030, 1, 1)) == set()
    assert existing_row_keys(root, [], date(2030, 1, 1)) == set()
    assert existing_row_keys(root, "new", date(2030, 1, 1)) == keys("new")  # one id, not its characters

    # Partitions before `since` are not even opened: with the oldest one's files gone, later lookups still work.
    shutil.rmtree(Path(uri) / "snapshot_date=2030-01-01")
    assert existing_row_keys(root, wanted, date(2030, 1, 2)) == keys("mid", "new")
    with pytest.raises(Exception, match=r"(?i)not found|no such file"):
        existing_row_keys(root, wanted, date(2030, 1, 1))


def test_existing_row_keys_read_only_the_key_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path / "lake")
    uri = lake.ensure_position_updates_table(root)
    write_deltalake(uri, _updates([{"request_id": "a", "snapshot_date": date(2030, 1, 2)}]).to_arrow(), mode="append")
    reads: list[dict[str, Any]] = []

    class Recording(DeltaTable):
        def to_pyarrow_dataset(self, *args: Any, **kwargs: Any) -> Any:
            dataset = super().to_pyarrow_dataset(*args, **kwargs)

            class Dataset:
                def to_table(self, **read: Any) -> pa.Table:
                    reads.append({**kwargs, **read})
                    return dataset.to_table(**read)

            return Dataset()

    monkeypatch.setattr(lake, "DeltaTable", Recording)
    assert existing_row_keys(root, ["a", "b"], date(2030, 1, 2)) == keys("a")
    assert len(reads) == 1
    assert reads[0]["columns"] == ["request_id", "account"]
    assert reads[0]["file_pruning_predicate"] == [("snapshot_date", ">=", "2030-01-02")]


def test_existing_row_keys_tell_the_accounts_of_one_item_apart(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    uri = lake.ensure_position_updates_table(root)
    day = date(2030, 1, 2)
    rows = [{"request_id": "x", "account": a, "snapshot_date": day} for a in ("DU1", "DU3")]
    write_deltalake(uri, _updates(rows).to_arrow(), mode="append")
    assert existing_row_keys(root, ["x"], day) == {("x", "DU1"), ("x", "DU3")}
