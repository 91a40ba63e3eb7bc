"""Reads the sensor and status ask for: cheap, and never a commit."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
from deltalake import DeltaTable

from position_pipeline.core.queue import PositionQueue
from position_pipeline_tests.core.queue_support import version


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
