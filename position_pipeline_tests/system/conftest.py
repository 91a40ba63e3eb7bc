"""Fixtures of the system tier: the fault suite's pipelines and its report."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from position_pipeline.ib_gateway_sim import GatewayState
from position_pipeline_tests.support.fault_pipeline import REPORT, Pipeline, pipeline_in, report_table


@pytest.fixture(scope="session")
def fault_report(request: pytest.FixtureRequest) -> Iterator[list[dict[str, Any]]]:
    """Collects one row per scenario; prints the table after the session and writes it to $FAULT_SUITE_REPORT."""
    yield REPORT
    text = "\n" + "\n".join(report_table(REPORT))
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        print(text)
    else:
        with capture.global_and_fixture_disabled():  # shown with or without -s
            print(text)
    path = os.environ.get("FAULT_SUITE_REPORT")
    if path:
        Path(path).write_text(json.dumps(REPORT, indent=1) + "\n")


@pytest.fixture
def pipeline(tmp_path: Path, fault_report: list[dict[str, Any]]) -> Iterator[Pipeline]:
    """60 positions in 3 accounts; frozen prices."""
    yield from pipeline_in(tmp_path, GatewayState.generate(positions=60, accounts=3, seed=7))


@pytest.fixture
def big_pipeline(tmp_path: Path, fault_report: list[dict[str, Any]]) -> Iterator[Pipeline]:
    """300 positions in 3 accounts, for the scenarios that enqueue hundreds or thousands of items."""
    yield from pipeline_in(tmp_path, GatewayState.generate(positions=300, accounts=3, seed=11))
