"""Growth: data files and Delta log bytes of position_queue and position_updates after 1,000 sensor-sized batches.

Run: `python -m benchmarks.growth [--out DIR] [--quick]`. Target with upkeep on: under 50 data files per table.

1,000 Dagster runs would take most of an hour, so the batches go through the same library functions the sync job's
assets call (`benchmarks.batch_cost.sync_batch`: claim, one IB read of a simulated gateway with the real ib_async
client, one append with the Delta IO manager's `write_deltalake` call, write-back), leaving out only the reads that
write nothing. Every commit is the one a run makes. Before each batch a producer queues its 50 items in one insert.

Two lakes take the same batches, one without upkeep and one with `run_upkeep` run whenever the production
schedule (`table_upkeep_schedule`, evaluated against the lake at that moment for its run config or skip) asks for it.
Each lake runs in a child process of its own with its own simulated gateway, both at once (one per core). The batches
come as fast as they can, but the schedule follows the clock of a sensor at its 5-second cadence: batch n happens at
START + 5 n seconds, so 1,000 batches are 83 minutes of a busy sensor and see every schedule tick of that stretch.

A table's files only grow between two upkeep runs, so the most it held is just before an upkeep run (or at the end):
both are reported, with the files on disk (vacuum keeps replaced files for its retention, 7 days by default, so none
go within the run) and the size of `_delta_log`.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg

from benchmarks import report
from position_pipeline.core import lake
from position_pipeline.core.maintenance import run_upkeep, table_state
from position_pipeline.defs.dagster_internals import cron_string_iterator
from position_pipeline.defs.schedules import table_upkeep_schedule
from position_pipeline.defs.upkeep import UpkeepConfig

NAME = "growth"
BATCHES, QUICK_BATCHES = 1_000, 150
SENSOR_SECONDS = 5
BATCH_SIZE = 50  # the sensor's (terms.SENSOR_BATCH_SIZE)
TARGET_FILES = 50
TABLES = (lake.QUEUE_TABLE, lake.POSITION_UPDATES_TABLE)
START = datetime(2030, 1, 7, 10, 0, tzinfo=UTC)
"""The simulated clock's start (the top of an hour): it decides only when the schedule ticks."""
BLOCK = 100
"""Batch seconds are summed per block of this many batches, to show how a batch's cost moves as the tables grow."""
REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger(__name__)


@dataclass
class Files:
    """One table's size on storage at one moment."""

    active: int
    on_disk: int
    log_bytes: int
    log_files: int


def files(root: str, table: str) -> Files:
    """Data files in the table's current version, Parquet files under its folder, and its `_delta_log`."""
    uri = Path(lake.table_uri(root, table))
    state = table_state(str(uri))
    log_entries = [p for p in (uri / "_delta_log").rglob("*") if p.is_file()]
    return Files(
        active=state.files if state else 0,
        on_disk=sum(1 for p in uri.rglob("*.parquet") if "_delta_log" not in p.parts),
        log_bytes=sum(p.stat().st_size for p in log_entries),
        log_files=len(log_entries),
    )


def schedule_ticks(start: datetime) -> Iterator[datetime]:
    """When the upkeep schedule ticks after `start`."""
    for tick in cron_string_iterator(start.timestamp(), str(table_upkeep_schedule.cron_schedule), "UTC"):
        if tick.astimezone(UTC) > start:
            yield tick.astimezone(UTC)


def scheduled_config(root: str, at: datetime) -> dict[str, Any] | None:
    """The upkeep op config the schedule's tick at `at` runs with on this lake, or None when it skips."""
    from position_pipeline.defs.resources import LakeResource

    context = dg.build_schedule_context(scheduled_execution_time=at, resources={"lake": LakeResource(root_uri=root)})
    requests = table_upkeep_schedule.evaluate_tick(context).run_requests or []
    if not requests:
        return None
    return dict(requests[0].run_config.get("ops", {}).get("upkeep_tables", {}).get("config", {}))


def lane(root: str, batches: int, with_upkeep: bool) -> None:
    """In a child process: `batches` batches into the lake at `root` against a gateway of its own; prints JSON."""
    from benchmarks.batch_cost import held_items, ib_settings, simulated_gateway, sync_batch
    from position_pipeline.core.queue import PositionQueue

    most = dict.fromkeys(TABLES, 0)
    blocks: list[float] = []
    runs = {"full": 0, "compaction only": 0, "skipped": 0}
    upkeep_seconds = 0.0
    ticks = schedule_ticks(START)
    due = next(ticks)

    def note_most() -> None:
        for table in TABLES:
            most[table] = max(most[table], files(root, table).active)

    with simulated_gateway() as gateway:
        settings = ib_settings(gateway)
        producer = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
        lake.ensure_position_updates_table(root)
        for number in range(batches):
            now = START + timedelta(seconds=SENSOR_SECONDS * number)
            while with_upkeep and due <= now:
                config = scheduled_config(root, due)
                if config is None:
                    runs["skipped"] += 1
                else:
                    note_most()
                    started = time.perf_counter()
                    metadata = run_upkeep(log, UpkeepConfig(**config), root)
                    upkeep_seconds += time.perf_counter() - started
                    runs[metadata["upkeep"]] += 1
                due = next(ticks)
            started = time.perf_counter()
            producer.insert_many(held_items(gateway, BATCH_SIZE, number * 7))
            steps = sync_batch(root, settings, reads=False)
            if number % BLOCK == 0:
                blocks.append(0.0)
            blocks[-1] += time.perf_counter() - started
            if steps.marked != BATCH_SIZE:
                raise RuntimeError(f"batch {number} wrote back {steps.marked} of {BATCH_SIZE} items")
    note_most()
    result: dict[str, Any] = {table: {**vars(files(root, table)), "most_active": most[table]} for table in TABLES} | {
        "upkeep_runs": runs,
        "upkeep_seconds": round(upkeep_seconds, 1),
        "batch_seconds": round(sum(blocks), 1),
        f"batch_seconds_per_{BLOCK}": [round(b, 1) for b in blocks],
    }
    print(json.dumps(result))


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Both lakes through BATCHES batches (QUICK_BATCHES with quick), at once; print and return the figures."""
    batches = QUICK_BATCHES if quick else BATCHES
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="growth-") as folder:
        children = {
            name: subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    f"from benchmarks.growth import lane; lane({f'{folder}/{key}'!r}, {batches}, {on})",
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, key, on in (("upkeep off", "off", False), ("upkeep on", "on", True))
        }
        results = {}
        for name, child in children.items():
            out, err = child.communicate(timeout=1_200)
            if child.returncode != 0:
                raise RuntimeError(f"{name} lane failed:\n{err[-3000:]}")
            results[name] = json.loads(out.strip().splitlines()[-1])
    seconds = time.perf_counter() - started

    figures: dict[str, Any] = {
        "batches": batches,
        "items_per_batch": BATCH_SIZE,
        "simulated_minutes": batches * SENSOR_SECONDS / 60,
        "schedule": str(table_upkeep_schedule.cron_schedule),
        "target_files": TARGET_FILES,
        "seconds": round(seconds, 1),
        **{name.replace(" ", "_"): result for name, result in results.items()},
    }
    rows: list[list[object]] = []
    for name, result in results.items():
        for table in TABLES:
            t = result[table]
            verdict = report.verdict(t["most_active"], TARGET_FILES) if name == "upkeep on" else ""
            rows.append(
                [name, table, t["active"], t["most_active"], verdict, t["on_disk"], t["log_files"], t["log_bytes"]]
            )
    on = results["upkeep on"]
    runs = on["upkeep_runs"]
    print(
        report.table(
            f"Growth after {batches:,} batches of {BATCH_SIZE} ({figures['simulated_minutes']:.0f} minutes of a "
            f"5-second sensor; schedule {figures['schedule']}: {runs['full']} full upkeep, "
            f"{runs['compaction only']} compaction-only, {runs['skipped']} skipped ticks)",
            ["lake", "table", "files at end", "most files", f"< {TARGET_FILES}", "files on disk", "log files",
             "log bytes"],
            rows,
        )
    )  # fmt: skip
    print(
        report.table(
            f"Batch seconds per {BLOCK} batches (producer insert + batch)",
            ["lake", *[f"{BLOCK * i + 1}-" for i in range(len(on[f"batch_seconds_per_{BLOCK}"]))]],
            [[name, *r[f"batch_seconds_per_{BLOCK}"]] for name, r in results.items()],
        )
    )
    print(f"{seconds:.0f} s in all (the two lakes at once); upkeep runs took {on['upkeep_seconds']:.1f} s")
    return figures


def main() -> None:
    report.command(NAME, run, __doc__, f"{QUICK_BATCHES} batches instead of {BATCHES:,}")


if __name__ == "__main__":
    main()
