"""The already-written check on every item: what `existing_row_keys` costs a batch on 1,000,000 position_updates rows.

Run: `python -m benchmarks.written_check [--out DIR] [--quick]` (or as part of `python -m benchmarks all`).

Before a run appends, `plan_write` looks up the (request_id, account) keys its batch's items already have in
position_updates, reading the key columns of the partitions from the batch's oldest queued day on. Checking every
item (not only re-claimed ones) is what keeps a rolled-back queue log from writing a second row; this measures what
that costs. The history is `positions_read`'s: 1,000,000 rows over 180 daily partitions, one commit a day, except
the last day, written in 100 commits as the sync job leaves it before compaction (one file per batch). A batch is
50 request ids, 25 with rows on the last day and 25 without. Three cases: a sensor batch (items queued today: one
partition), a backfill of a week's items (7 partitions), and the worst case, items as old as the table (every
partition), and the sensor batch again once table upkeep has compacted today's files. Each answer is checked
against the history before it is timed.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import DeltaTable, write_deltalake

from benchmarks import report
from benchmarks.positions_read import FIRST_DAY, history
from position_pipeline.core import lake
from position_pipeline.core.write_plan import existing_row_keys

DAYS = 180
LAST_DAY_COMMITS = 100
BATCH = 50
TARGET_S = 0.2
"""What a sensor batch may spend on the check: a tenth of a sensor run (about 2 s: 1.6 s launch, 0.35 s batch)."""


def write(root: str, rows: pl.DataFrame, last_day: date) -> str:
    """position_updates under `root`: one commit per day, the last day in LAST_DAY_COMMITS commits."""
    uri = lake.ensure_position_updates_table(root)
    for (day,), part in rows.group_by("snapshot_date", maintain_order=True):
        commits = LAST_DAY_COMMITS if day == last_day else 1
        size = -(-part.height // commits)
        for start in range(0, part.height, size):
            write_deltalake(
                uri, part.slice(start, size).to_arrow().cast(lake.POSITION_UPDATES_ARROW_SCHEMA), mode="append"
            )
    return uri


def measure(rows: int, repeat: int) -> dict[str, Any]:
    """Build the history in a temporary lake, then time the check for a batch in each case."""
    with tempfile.TemporaryDirectory(prefix="written-check-") as root:
        start = time.perf_counter()
        frame = history(rows=rows, contracts=2_000, days=DAYS)
        last_day = FIRST_DAY + timedelta(days=DAYS - 1)
        uri = write(root, frame, last_day)
        figures: dict[str, Any] = {
            "rows": frame.height,
            "partitions": DAYS,
            "build_s": round(time.perf_counter() - start, 1),
        }
        today = frame.filter(pl.col("snapshot_date") == last_day)
        picked = random.Random(3).sample(range(today.height), BATCH // 2)
        written = today[picked].select(lake.POSITION_UPDATES_KEY)
        ids = written["request_id"].to_list() + [str(uuid.uuid4()) for _ in range(BATCH - BATCH // 2)]
        expected = {(str(r), str(a)) for r, a in written.iter_rows()}
        cases = {
            "sensor_batch_today": last_day,
            "backfill_week": last_day - timedelta(days=6),
            "whole_table": FIRST_DAY,
        }
        for name, since in cases.items():
            if existing_row_keys(root, ids, since) != expected:
                raise SystemExit(f"existing_row_keys since {since} differs from the history")
            times = [report.seconds(lambda since=since: existing_row_keys(root, ids, since)) for _ in range(repeat)]
            figures[f"{name}_median_s"] = round(statistics.median(times), 4)
            figures[f"{name}_max_s"] = round(max(times), 4)
        # Table upkeep compacts small files every few minutes: today's partition as it then is (one file).
        DeltaTable(uri).optimize.compact(partition_filters=[(lake.POSITION_UPDATES_PARTITION, "=", str(last_day))])
        times = [report.seconds(lambda: existing_row_keys(root, ids, last_day)) for _ in range(repeat)]
        figures["sensor_batch_today_compacted_median_s"] = round(statistics.median(times), 4)
        # What plan_write pays anyway, check or not: opening position_updates for its version.
        times = [report.seconds(lambda: DeltaTable(uri).version()) for _ in range(repeat)]
        figures["open_table_median_s"] = round(statistics.median(times), 4)
        figures["target_s"] = TARGET_S
    return figures


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """For `python -m benchmarks`: 1,000,000 rows, 9 repeats (quick: 200,000 rows, 3 repeats); prints a table."""
    figures = measure(200_000 if quick else 1_000_000, 3 if quick else 9)
    print(report.table("The already-written check of a 50-item batch", ["figure", "value"], list(figures.items())))
    return figures


if __name__ == "__main__":
    report.command("written_check", run, __doc__, "200,000 rows and 3 repeats: a check that it runs")
