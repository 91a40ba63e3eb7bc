"""The Dagster UI as operators use it, read in a real headless Chromium: the pictures in docs/ and the browser test.

`python -m position_pipeline_tests.support.ui_browser --out docs` starts the simulated IB Gateway and `dagster dev`
(this code location, its sensor on) on free loopback ports with a throwaway DAGSTER_HOME and lake, enqueues three waves
of contracts (mostly held by the gateway, a few not) and waits for the sensor's sync run of each, then takes the gateway
down for one failed run. Debian's Chromium, driven by Playwright (no browser download), then opens the asset graph,
position_updates' page with its metadata plotted per materialization, the failed run and the sensor's ticks, and saves
them as `ui-*.png`; then position_queue's columns and its queue-depth plots. The GraphQL API (what the UI itself
reads) answers the rest: descriptions, owners, kinds, group and column schema of every asset, the materializations'
and observations' metadata, the ticks' skip reasons and the failed run's error.
`test_ui_browser.py` runs the same tour into a temp folder and asserts on what it saw. Every wait is bounded, and
every process the tour starts is stopped when it ends, however it ends.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from position_pipeline_tests.support import REPO
from position_pipeline_tests.support.ui_stack import (
    ASSETS,
    CLIENT_IDS,
    LOCATION,
    SENSOR,
    Stack,
    chromium_executable,
    entry_value,
    install_chromium,
    running_stack,
    step_failures,
    ticks,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

log = logging.getLogger(__name__)
SENSOR_PAGE = f"/locations/__repository__@{LOCATION}/sensors/{SENSOR}"
PLOTTED = ("claimed", "succeeded", "failed", "batch_seconds", "table_version")
QUEUE_PLOTTED = ("pending", "claimable", "oldest_pending_age_s", "delta_version")
"""What queue_depth_sensor observes of position_queue, plotted on its page."""
VIEWPORT = {"width": 1400, "height": 900}
SCREENSHOTS = {
    "graph": "ui-asset-graph.png",
    "asset": "ui-position-updates.png",
    "sensor": "ui-sensor.png",
    "failed_run": "ui-failed-run.png",
}
WAVES = ((12, 1), (25, 2), (40, 3))
"""Held and unheld contracts per enqueue wave: one sync run each, so the plots have points that differ."""
PAGE_TIMEOUT_MS = 20_000
NAV_WIDTH, HEADER_HEIGHT = 68, 108
"""Pixels the folded navigation and the lineage page's header take from the viewport."""


@dataclass
class Tour:
    """What the tour saw: screenshots, each page's rendered text, and the GraphQL API's answers."""

    screenshots: dict[str, Path] = field(default_factory=dict)
    page_text: dict[str, str] = field(default_factory=dict)
    tooltip: str = ""
    """The skip reason the sensor page shows when the newest skipped tick is hovered."""
    asset_nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    column_schemas: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Each asset's definition-level dagster/column_schema columns: {name, type, constraints}."""
    queue_observations: list[dict[str, Any]] = field(default_factory=list)
    """position_queue's observations (queue depth), newest first: {label: (GraphQL entry type, value)} each."""
    materializations: list[dict[str, Any]] = field(default_factory=list)
    """position_updates' materializations, newest first: {label: (GraphQL entry type, value)} each."""
    write_backs: int = 0
    """Materializations of position_queue: one per sync run that wrote back."""
    ticks: list[dict[str, Any]] = field(default_factory=list)
    failed_run_errors: list[str] = field(default_factory=list)
    client_id_run_errors: list[str] = field(default_factory=list)
    """The step errors of the run that found every client id of its range in use."""
    gateway: str = ""
    dagster_pid: int = 0
    """`dagster dev`'s process (and group) id: gone, with its webserver, daemon and run workers, once the tour ends."""
    seconds: dict[str, float] = field(default_factory=dict)


def tour(workdir: Path, out: Path, chromium: str) -> Tour:
    """The whole tour: runs, screenshots into `out`, page texts and GraphQL answers."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    seen = Tour()
    started = time.monotonic()
    with running_stack(workdir) as stack, sync_playwright() as playwright:
        seen.seconds["dagster_up"] = round(time.monotonic() - started, 1)
        seen.dagster_pid = stack.process.pid
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            offset = 0
            for wave, (held, unheld) in enumerate(WAVES, start=1):
                stack.enqueue(held, unheld, offset)
                offset += held
                stack.wait_for(partial(stack.has_sync_runs, "SUCCESS", wave), 45, f"sync run {wave} succeeded")
            seen.seconds["sync_runs"] = round(time.monotonic() - started, 1)
            log.info("%d sync runs succeeded; opening the asset graph and position_updates", len(WAVES))

            _asset_graph(browser, stack.url, out, seen)
            _position_updates_page(browser, stack.url, out, seen)
            seen.seconds["graph_and_asset_pages"] = round(time.monotonic() - started, 1)

            stack.gateway.call(lambda gw: gw.go_down(300))  # down until the tour ends
            seen.gateway = f"{stack.gateway.host}:{stack.gateway.port}"
            stack.enqueue(3, 0, offset)
            failed = stack.wait_for(lambda: stack.sync_runs("FAILURE"), 45, "a sync run failed with the gateway down")
            failed_run_id = failed[0]["runId"]
            stack.wait_for(
                lambda: any("failed" in (t["skipReason"] or "") for t in ticks(stack)),
                30,
                "a tick skipped because the last sync run failed",
            )
            seen.seconds["failed_run"] = round(time.monotonic() - started, 1)
            log.info("sync run %s failed with the gateway down; opening it and the sensor", failed_run_id)

            _failed_run_page(browser, stack.url, failed_run_id, out, seen)
            _sensor_page(browser, stack.url, out, seen)
            # By now queue_depth_sensor (every 30 s) has seen the queue change.
            stack.wait_for(lambda: _queue_observations(stack), 45, "queue_depth_sensor observed position_queue")
            _position_queue_page(browser, stack.url, seen)
            _graphql_facts(stack, failed_run_id, seen)

            # The gateway answers again, but every client id of the code location's range is taken (error 326).
            stack.gateway.set_faults(locked_client_ids=set(CLIENT_IDS))
            stack.gateway.call(lambda gw: gw.go_down(0.1, drop_existing=False))  # back up in 0.1 s
            failures = stack.wait_for(
                lambda: [r for r in stack.sync_runs("FAILURE") if r["runId"] != failed_run_id],
                60,
                "a sync run failed because every client id was in use",
            )
            seen.client_id_run_errors = step_failures(stack, failures[0]["runId"])
            seen.seconds["client_id_run"] = round(time.monotonic() - started, 1)
            seen.page_text["client_id_run"] = _run_page_text(browser, stack.url, failures[0]["runId"], "326")
        finally:
            browser.close()
    seen.seconds["total"] = round(time.monotonic() - started, 1)
    return seen


def _page(browser: Browser) -> Page:
    page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    return page


def _hide_navigation(page: Page) -> None:
    page.get_by_text("Hide navigation", exact=True).click()


def _asset_graph(browser: Browser, url: str, out: Path, seen: Tour) -> None:
    """The group's lineage, zoomed in until the nodes show their status, partitions and kinds, then centred."""
    page = _page(browser)
    page.goto(f"{url}/asset-groups/positions/lineage")
    for name in ASSETS:
        page.get_by_text(name, exact=True).last.wait_for()
    _hide_navigation(page)
    page.get_by_placeholder("Jump to…").wait_for()
    page.locator("button:right-of(input[placeholder='Jump to…'])").first.click()  # fold the asset list
    page.get_by_placeholder("Jump to…").wait_for(state="hidden")
    box = page.get_by_text("ib_snapshot", exact=True).last.bounding_box()
    assert box is not None
    page.mouse.move(box["x"], box["y"])
    page.keyboard.down("Control")
    for _ in range(2):
        page.mouse.wheel(0, -120)
    page.keyboard.up("Control")
    page.get_by_text("Latest event").first.wait_for()  # nodes drawn in detail
    # Drag the graph to the middle of the canvas (right of the folded navigation, below the page header). The node
    # titles are the anchors: a node reaches from 15 px left of its title to 185 px right of it, 55 px below it.
    first = page.get_by_text("position_queue", exact=True).last.bounding_box()
    last = page.get_by_text("position_updates", exact=True).last.bounding_box()
    assert first is not None and last is not None
    canvas_x = (NAV_WIDTH + VIEWPORT["width"]) / 2
    canvas_y = (HEADER_HEIGHT + VIEWPORT["height"]) / 2
    dx = canvas_x - (first["x"] - 15 + last["x"] + 185) / 2
    dy = canvas_y - (last["y"] + 55)
    page.mouse.move(canvas_x, 700)
    page.mouse.down()
    page.mouse.move(canvas_x + dx, 700 + dy, steps=8)
    page.mouse.up()
    page.wait_for_function("() => new Promise(done => requestAnimationFrame(() => done(true)))")  # drawn there
    seen.page_text["graph"] = page.inner_text("body")
    seen.screenshots["graph"] = _shoot(page, out, "graph")
    page.close()


def _position_updates_page(browser: Browser, url: str, out: Path, seen: Tour) -> None:
    """position_updates' overview with its metadata plotted per materialization, and its Events tab."""
    page = _page(browser)
    page.goto(f"{url}/assets/position_updates?view=events")
    page.get_by_text("materialized in run").first.wait_for()
    seen.page_text["asset_events"] = page.inner_text("body")
    page.goto(f"{url}/assets/position_updates")
    page.get_by_text("trading-data").first.wait_for()
    _hide_navigation(page)
    page.get_by_role("button", name="Plots").click()
    page.get_by_role("button", name="Events").click()  # by materialization, not by partition: one hour holds them
    page.locator("button[aria-selected=true]", has_text="Events").wait_for()
    for label in PLOTTED:  # each plot is titled with its metadata label
        page.get_by_text(label, exact=True).first.wait_for()
    page.get_by_role("img").and_(page.locator("canvas")).nth(len(PLOTTED) - 1).wait_for(state="attached")
    seen.page_text["asset"] = page.inner_text("body")
    seen.screenshots["asset"] = _shoot(page, out, "asset")
    page.close()


def _position_queue_page(browser: Browser, url: str, seen: Tour) -> None:
    """position_queue's overview: its columns and storage name (from its definition: no run materializes it), then
    its metadata plotted, the queue-depth observations among them."""
    page = _page(browser)
    page.goto(f"{url}/assets/position_queue")
    page.get_by_text("claimed_by", exact=True).first.wait_for()  # a column only the queue has
    seen.page_text["queue_overview"] = page.inner_text("body")
    page.get_by_role("button", name="Plots").click()
    for label in QUEUE_PLOTTED:
        page.get_by_text(label, exact=True).first.wait_for()
    seen.page_text["queue_plots"] = page.inner_text("body")
    page.close()


def _queue_observations(stack: Stack) -> list[dict[str, Any]]:
    query = """{ assetOrError(assetKey: {path: ["position_queue"]}) { ... on Asset { assetObservations(limit: 50) {
                 metadataEntries { label __typename
                   ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue } } } } } }"""
    observations = stack.graphql(query)["assetOrError"]["assetObservations"]
    return [{e["label"]: (e["__typename"], entry_value(e)) for e in o["metadataEntries"]} for o in observations]


def _failed_run_page(browser: Browser, url: str, run_id: str, out: Path, seen: Tour) -> None:
    page = _failed_run(browser, url, run_id, "refused the connection")
    _hide_navigation(page)
    seen.page_text["failed_run"] = page.inner_text("body")
    seen.screenshots["failed_run"] = _shoot(page, out, "failed_run")
    page.close()


def _run_page_text(browser: Browser, url: str, run_id: str, expected: str) -> str:
    """A failed run page's rendered text (no picture: docs/ has one failed run)."""
    page = _failed_run(browser, url, run_id, expected)
    text = page.inner_text("body")
    page.close()
    return text


def _failed_run(browser: Browser, url: str, run_id: str, expected: str) -> Page:
    """A failed run's page, once its RUN_FAILURE event and `expected` show."""
    page = _page(browser)
    page.goto(f"{url}/runs/{run_id}")
    page.get_by_text("RUN_FAILURE").first.wait_for()
    page.get_by_text(expected).first.wait_for()
    return page


def _sensor_page(browser: Browser, url: str, out: Path, seen: Tour) -> None:
    """The sensor's ticks; hovering the newest skipped tick shows why it skipped."""
    page = _page(browser)
    page.goto(f"{url}{SENSOR_PAGE}")
    page.locator("tbody").get_by_text("1 run requested").first.wait_for()
    _hide_navigation(page)
    seen.tooltip = _hover_tooltip(page, page.locator("tbody").get_by_text("0 runs requested").first)
    seen.page_text["sensor"] = page.inner_text("body")
    seen.screenshots["sensor"] = _shoot(page, out, "sensor")
    page.close()


def _hover_tooltip(page: Page, target: Locator, attempts: int = 6) -> str:
    """The tooltip `target` shows on hover. The tick table re-renders as the running sensor adds ticks (every 5 s),
    which can drop a hover on a loaded machine, so hover again, a bounded number of times."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    tooltip = page.get_by_role("tooltip").first
    for attempt in range(attempts):
        page.mouse.move(0, 0)
        target.hover()
        try:
            tooltip.wait_for(timeout=PAGE_TIMEOUT_MS / attempts)
            return tooltip.inner_text()
        except PlaywrightTimeout:
            log.info("no tooltip after hover %d of %d; hovering again", attempt + 1, attempts)
    raise TimeoutError(f"no tooltip after {attempts} hovers of {target}")


def _shoot(page: Page, out: Path, name: str) -> Path:
    path = out / SCREENSHOTS[name]
    page.screenshot(path=path)
    return path


def _graphql_facts(stack: Stack, failed_run_id: str, seen: Tour) -> None:
    nodes = stack.graphql(
        """{ assetNodes { assetKey { path } description groupName kinds
                           owners { ... on TeamAssetOwner { team } ... on UserAssetOwner { email } }
                           metadataEntries { label
                             ... on TableSchemaMetadataEntry { schema { columns { name type
                               constraints { nullable } } } } } } }"""
    )["assetNodes"]
    seen.column_schemas = {
        "/".join(n["assetKey"]["path"]): e["schema"]["columns"]
        for n in nodes
        for e in n["metadataEntries"]
        if e["label"] == "dagster/column_schema"
    }
    seen.queue_observations = _queue_observations(stack)
    seen.asset_nodes = {
        "/".join(n["assetKey"]["path"]): {
            "description": n["description"],
            "group": n["groupName"],
            "kinds": sorted(n["kinds"]),
            "owners": [o.get("team") or o.get("email") for o in n["owners"]],
        }
        for n in nodes
    }
    history = """query History($path: [String!]!) {
                   assetOrError(assetKey: {path: $path}) { ... on Asset { assetMaterializations(limit: 50) {
                     runId metadataEntries { label __typename
                       ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue }
                       ... on TextMetadataEntry { text } ... on MarkdownMetadataEntry { mdStr } } } } } }"""
    updates = stack.graphql(history, {"path": ["position_updates"]})["assetOrError"]["assetMaterializations"]
    seen.materializations = [
        {e["label"]: (e["__typename"], entry_value(e)) for e in m["metadataEntries"]} for m in updates
    ]
    queue = stack.graphql(history, {"path": ["position_queue"]})["assetOrError"]["assetMaterializations"]
    seen.write_backs = len(queue)
    seen.ticks = ticks(stack)
    seen.failed_run_errors = step_failures(stack, failed_run_id)


def summary(seen: Tour) -> str:
    newest = seen.materializations[0] if seen.materializations else {}
    lines = [
        f"screenshots: {', '.join(str(p) for p in seen.screenshots.values())}",
        f"timings (s since start): {seen.seconds}",
        f"position_updates materializations: {len(seen.materializations)}, position_queue write-backs: "
        f"{seen.write_backs}",
        "newest metadata: " + ", ".join(f"{k}={newest[k][1]}" for k in PLOTTED if k in newest),
        f"skip reason shown on hover: {seen.tooltip}",
        f"failed run error: {seen.failed_run_errors[0].strip() if seen.failed_run_errors else '(none)'}",
        f"client-id run error: {seen.client_id_run_errors[0].strip() if seen.client_id_run_errors else '(none)'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="folder for ui-*.png (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    chromium = chromium_executable() or install_chromium()
    if chromium is None:
        print("Chromium is not installed (Debian: apt-get install chromium) and cannot be installed here")
        return 1
    with tempfile.TemporaryDirectory(prefix="ui-tour-") as work:
        print(summary(tour(Path(work), args.out.resolve(), chromium)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
