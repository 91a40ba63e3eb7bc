"""The queue's Delta table: created on first use with the declared schema, refused when it is another table."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus


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
