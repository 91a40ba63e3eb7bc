"""Fixtures of the Dagster tier: a real, throwaway DagsterInstance per test."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """An ephemeral instance with a temporary DAGSTER_HOME: runs, event logs and sensor ticks are real and discarded."""
    with dg.instance_for_test() as test_instance:
        yield test_instance
