"""Fixtures of the core tests: a queue on a real Delta table under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue


@pytest.fixture
def uri(tmp_path: Path) -> str:
    """Where the queue table lives in a fresh lake; absent until the first call."""
    return lake.table_uri(str(tmp_path / "lake"), lake.QUEUE_TABLE)


@pytest.fixture
def queue(uri: str) -> PositionQueue:
    return PositionQueue(uri)
