"""The Dagster UI as operators see it, in a real headless Chromium against `dagster dev` on loopback.

The tour (support/ui_browser.py, which also makes the pictures in docs/) runs three sync batches and one failed run;
this test asserts on the rendered pages' text, the screenshots, and the GraphQL answers the UI is drawn from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from position_pipeline.core import lake
from position_pipeline_tests.support.ui_browser import PLOTTED, QUEUE_PLOTTED, SCREENSHOTS, Tour, tour
from position_pipeline_tests.support.ui_stack import chromium_executable, install_chromium

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOUR_KEY = re.compile(r"\d{4}-\d\d-\d\d-\d\d:00")
pytestmark = pytest.mark.timeout(300, func_only=True)  # the tour itself; installing Chromium may take longer


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium, installed here as root if missing (as .ci/run does); skipped only where it cannot be."""
    path = chromium_executable() or install_chromium()
    if path is None:
        pytest.skip(
            "Debian's chromium is not installed and cannot be here (not root or no apt-get): apt-get install chromium"
        )
    return path


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_operators_see_the_pipeline_in_the_dagster_ui(chromium: str, tmp_path: Path) -> None:
    seen = tour(tmp_path / "work", tmp_path / "shots", chromium)
    with pytest.raises(ProcessLookupError):  # dagster dev's whole process group is gone
        os.killpg(seen.dagster_pid, 0)
    check_pages(seen)
    check_graphql_answers(seen)


def check_pages(seen: Tour) -> None:
    assert set(seen.screenshots) == set(SCREENSHOTS)
    for name, path in seen.screenshots.items():
        assert path.name == SCREENSHOTS[name]
        assert png_size(path) == (1400, 900)
        assert path.stat().st_size > 30_000, f"{path.name} looks blank ({path.stat().st_size} bytes)"

    graph = seen.page_text["graph"]
    for asset in ("position_queue", "queued_positions", "ib_snapshot", "position_updates"):
        assert asset in graph
    assert "Latest event" in graph and "delta" in graph  # nodes drawn in detail, with their kinds

    asset = seen.page_text["asset"]
    for text in ("Position history", "positions", "trading-data", "delta", "position_sync_sensor", *PLOTTED):
        assert text in asset
    queue = seen.page_text["queue_overview"]  # the schema tab, filled from the definition: no run materializes it
    for column in lake.QUEUE_SCHEMA:
        assert column in queue
    assert "positions.position_queue" in queue  # dagster/table_name, shown as its storage
    for label in QUEUE_PLOTTED:  # the queue-depth plots
        assert label in seen.page_text["queue_plots"]
    events = seen.page_text["asset_events"]  # the history: one row per materialization, then the selected one's
    assert "materialized in run" in events and len(HOUR_KEY.findall(events)) >= 3 + 1

    sensor = seen.page_text["sensor"]
    assert "position_sync_sensor" in sensor and "1 run requested" in sensor and "0 runs requested" in sensor
    skip_reasons = {t["skipReason"] for t in seen.ticks if t["status"] == "SKIPPED"}
    assert seen.tooltip in skip_reasons  # hovering a skipped tick shows why it skipped

    failed = seen.page_text["failed_run"]
    assert "RUN_FAILURE" in failed and f"refused the connection at {seen.gateway}" in failed
    in_use = seen.page_text["client_id_run"]
    assert "already in use (error 326)" in in_use and "set IB_CLIENT_ID to a free range" in in_use


def check_graphql_answers(seen: Tour) -> None:
    nodes = seen.asset_nodes
    assert set(nodes) >= {"position_queue", "queued_positions", "ib_snapshot", "position_updates"}
    for name in ("position_queue", "queued_positions", "ib_snapshot", "position_updates"):
        node = nodes[name]
        assert node["description"] and node["group"] == "positions" and node["owners"] == ["trading-data"], node
    assert nodes["position_updates"]["kinds"] == ["delta", "polars"]
    assert nodes["queued_positions"]["kinds"] == ["delta", "polars"]
    assert nodes["ib_snapshot"]["kinds"] == ["polars"]
    assert nodes["position_queue"]["kinds"] == ["delta"]

    assert len(seen.materializations) >= 3 and seen.write_backs >= 3
    for entries in seen.materializations:
        for label in PLOTTED:
            kind, value = entries[label]
            assert kind in {"IntMetadataEntry", "FloatMetadataEntry"} and isinstance(value, int | float), entries
        assert entries["claimed"][1] == entries["succeeded"][1] + entries["failed"][1]
        assert entries["rows_appended"] == ("IntMetadataEntry", entries["rows_written"][1])  # the IO manager's count
        assert entries["preview"][0] == "MarkdownMetadataEntry"
    assert {m["failed"][1] for m in seen.materializations} & {1, 2, 3}  # each wave held a few unknown contracts
    assert any("| request_id | conid" in m["preview"][1] for m in seen.materializations)  # rows written, previewed

    for name, schema in (("position_queue", lake.QUEUE_SCHEMA), ("position_updates", lake.POSITION_UPDATES_SCHEMA)):
        assert [c["name"] for c in seen.column_schemas[name]] == list(schema), name
    nullable = {c["name"] for c in seen.column_schemas["position_queue"] if c["constraints"]["nullable"]}
    assert nullable == set(lake.QUEUE_NULLABLE)
    for entries in seen.materializations:  # the Delta handler's table stats, under the keys the UI shows specially
        for label in ("dagster/row_count", "dagster/size_bytes"):
            assert entries[label][0] == "IntMetadataEntry" and entries[label][1] > 0, entries
    assert seen.queue_observations, "queue_depth_sensor observed position_queue"
    for entries in seen.queue_observations:
        assert {label for label in QUEUE_PLOTTED} <= set(entries), entries
        assert entries["delta_version"][1] >= 0 and entries["pending"][0] == "IntMetadataEntry"

    statuses = {t["status"] for t in seen.ticks}
    assert {"SUCCESS", "SKIPPED"} <= statuses
    reasons = [t["skipReason"] for t in seen.ticks if t["status"] == "SKIPPED"]
    assert all(reasons), "every skipped tick says why"
    assert any("failed" in r and "next try in" in r for r in reasons)

    assert seen.failed_run_errors, "the failed run has a step failure"
    error = seen.failed_run_errors[0]
    assert seen.gateway in error and "IB_HOST, IB_PORT" in error
    assert seen.client_id_run_errors, "the client-id run has a step failure"
    in_use = seen.client_id_run_errors[0]
    assert seen.gateway in in_use and "error 326" in in_use and "IB_CLIENT_ID" in in_use
