"""Helpers the queue's test files share (their fixtures are in conftest.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import polars as pl
from deltalake import DeltaTable

from position_pipeline.core.queue import PositionQueue

T0 = datetime(2030, 1, 2, 9, 30, tzinfo=UTC)
"""A fixed claim time, far from the real clock, so retry_after and windows are exact."""


def version(uri: str) -> int:
    """The queue table's Delta version: each commit adds one."""
    return DeltaTable(uri).version()


def item_row(queue: PositionQueue, request_id: str) -> dict[str, Any]:
    """One item's row, as a dict."""
    return queue.read().filter(pl.col("request_id") == request_id).row(0, named=True)
