"""Backlog drain after an outage: 100,000 items queued over 24 hour partitions, caught up by one backfill.

Run: `python -m benchmarks.backlog_drain [--out DIR] [--quick]`. Target: under 30 s on 2 cores, launch included.

The simulated gateway holds 2,000 positions in 3 accounts. The queue gets 100,000 items (10,000 with --quick), all
PENDING, stamped over the 24 hours before the current one, four commits an hour as producers would have left them:
held positions in the desk's mix (`batch_cost.queue_item`: every third names no account and is a row in each
account holding its contract), and one item in 200 a contract the gateway does not hold (those end FAILED with a
reason). Then the real `dagster-daemon` starts on a throwaway DAGSTER_HOME with the repo's dagster.yaml, sensor on,
as in production, and once it is up the clock starts: `backfill.launch_backfill` stores the asset backfill of those
24 hours (what `position-pipeline backfill` does), the daemon's backfill loop launches its single run through the
run queue, and the clock stops when every item has been processed (SUCCESS, or FAILED with an attempt counted), with
its rows in position_updates. The sensor keeps taking 50-item batches meanwhile, as it would after a real outage.

The breakdown comes from the backfill run's event log: backfill stored -> run enqueued (the daemon's backfill loop,
which Dagster runs every 30 s: `DEFAULT_DAEMON_INTERVAL_SECONDS` in dagster/_daemon/controller.py, which no instance
setting changes; launched just after the daemon started, as here, the wait is close to its worst case, while an
operator's backfill waits 0 to 30 s depending on the moment), enqueued -> run started (run queue, new process, code
location load), started -> first step, then the claim, IB read, append and write-back steps. The comparison is the
sensor alone at its steady 50 items per 5 s: 10,000 s for 100,000 items.
"""

from __future__ import annotations

import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from deltalake import DeltaTable

from benchmarks import report
from benchmarks.batch_cost import queue_item
from benchmarks.daemon import Daemon, RunEvents, run_events, running_daemon
from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.defs.backfill import launch_backfill
from position_pipeline.defs.jobs import SYNC_JOB_NAME
from position_pipeline.ib_gateway_sim import GatewayState

NAME = "backlog_drain"
TARGET_S = 30.0
ITEMS = 100_000
QUICK_ITEMS = 10_000
HOURS = 24
COMMITS_PER_HOUR = 4
UNHELD_EVERY = 200  # one item in 200 names a contract the gateway does not hold
UNHELD_CONID = 88_000_000
SENSOR_ITEMS_PER_S = 50 / 5
DRAIN_TIMEOUT_S = 150.0
BACKFILL_LOOP = "daemon backfill loop (stored -> run enqueued)"


def enqueue_backlog(root: str, state: GatewayState, items: int, now: datetime) -> int:
    """`items` PENDING items over the HOURS hours before `now`'s hour, COMMITS_PER_HOUR commits an hour."""
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    held = [queue_item(h, n) for n, h in enumerate(state.positions())]
    rng = random.Random(24)
    first_hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS)
    commits = HOURS * COMMITS_PER_HOUR
    queued = 0
    for n in range(commits):
        size = items // commits + (n < items % commits)
        chunk = [
            {"conid": UNHELD_CONID + i, "symbol": f"UNHELD{i}"}
            if (queued + i) % UNHELD_EVERY == 0
            else rng.choice(held)
            for i in range(size)
        ]
        queue.insert_many(chunk, queued_at=first_hour + n * timedelta(minutes=60 // COMMITS_PER_HOUR))
        queued += size
    return queued


def _processed(queue: PositionQueue) -> int:
    """Items processed at least once: SUCCESS, or with a failed attempt counted (FAILED, or claimed again since).
    Reads two columns only: it is polled while the run works, on the same two cores."""
    frame = pl.read_delta(queue.table_uri, columns=["status", "attempts"])
    return frame.filter((pl.col("status") == QueueStatus.SUCCESS.value) | (pl.col("attempts") >= 1)).height


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    items = QUICK_ITEMS if quick else ITEMS
    state = GatewayState.generate(positions=2_000, accounts=3, seed=24)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="backlog-drain-") as workdir:
        started = time.perf_counter()
        with running_daemon(Path(workdir), state, lambda root: enqueue_backlog(root, state, items, now)) as daemon:
            setup_s = time.perf_counter() - started
            figures = _drain(daemon, items, now)
        figures["setup_s"] = setup_s
    print(_table(figures))
    return figures


def _drain(daemon: Daemon, items: int, now: datetime) -> dict[str, Any]:
    queue = daemon.queue()
    first_hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS)
    with daemon.instance() as instance:
        before = _processed(queue)
        t0 = time.time()
        request = launch_backfill(instance, first_hour, first_hour + timedelta(hours=HOURS - 1), now=now)
        stored = time.time()
        daemon.wait_for(lambda: _processed(queue) >= items, DRAIN_TIMEOUT_S, f"{items:,} items processed", every=0.5)
        done = time.time()
        runs = instance.get_run_records(dg.RunsFilter.for_backfill(request.backfill_id))
        if len(runs) != 1:
            raise RuntimeError(f"expected one backfill run, found {len(runs)}")

        def finished() -> bool:  # the marks land before the step's end event: read the events once it is written
            run = instance.get_run_by_id(runs[0].dagster_run.run_id)
            return run is not None and run.is_finished

        daemon.wait_for(finished, 30, "the backfill run finished")
        events = run_events(instance, runs[0].dagster_run.run_id)
        sensor_runs = instance.get_run_records(dg.RunsFilter(job_name=SYNC_JOB_NAME))
    frame = queue.read()
    rows = pl.from_arrow(
        DeltaTable(lake.table_uri(daemon.root, lake.POSITION_UPDATES_TABLE)).to_pyarrow_table(
            columns=list(lake.POSITION_UPDATES_KEY)
        )
    )
    assert isinstance(rows, pl.DataFrame)
    succeeded = frame.filter(pl.col("status") == QueueStatus.SUCCESS.value)
    if rows["request_id"].n_unique() != succeeded.height or rows.unique().height != rows.height:
        raise RuntimeError(f"{rows.height} rows for {succeeded.height} SUCCESS items: not exactly once")
    by_backfill = frame.filter(pl.col("claimed_by") == events.run_id).height
    total = done - t0
    breakdown = _breakdown(t0, stored, events, done)
    return {
        "items": items,
        "partitions": request.partitions,
        "succeeded": succeeded.height,
        "failed": frame.filter(pl.col("status") == QueueStatus.FAILED.value).height,
        "rows_written": rows.height,
        "items_by_backfill_run": by_backfill,
        "items_by_sensor_runs": items - by_backfill,
        "items_processed_before_launch": before,
        "sensor_runs": len(sensor_runs),
        "total_s": total,
        "rows_per_s": rows.height / total,
        "target_s": TARGET_S,
        "verdict": report.verdict(total, TARGET_S),
        "total_without_backfill_loop_s": total - breakdown[BACKFILL_LOOP],
        "sensor_alone_s": items / SENSOR_ITEMS_PER_S,
        "speedup_vs_sensor_alone": items / SENSOR_ITEMS_PER_S / total,
        "breakdown_s": breakdown,
    }


def _breakdown(t0: float, stored: float, run: RunEvents, done: float) -> dict[str, float]:
    """Consecutive phases from the launch call to the last item seen processed; they add up to total_s."""
    steps = run.steps
    appended = run.appended or steps["position_updates"][1]
    return {
        "store the backfill (launch_backfill)": stored - t0,
        BACKFILL_LOOP: run.at["enqueued"] - stored,
        "run queue (enqueued -> starting)": run.at["starting"] - run.at["enqueued"],
        "new process + code load (starting -> started)": run.at["started"] - run.at["starting"],
        "run started -> first step": run.first_step - run.at["started"],
        "claim (queued_positions)": steps["queued_positions"][1] - steps["queued_positions"][0],
        "IB read (ib_snapshot)": steps["ib_snapshot"][1] - steps["ib_snapshot"][0],
        "between steps": steps["ib_snapshot"][0]
        - steps["queued_positions"][1]
        + steps["position_updates"][0]
        - steps["ib_snapshot"][1],
        "append (position_updates -> Delta commit)": appended - steps["position_updates"][0],
        "write-back (marks, -> step end)": steps["position_updates"][1] - appended,
        "step end -> all items seen processed": done - steps["position_updates"][1],
    }


def _table(figures: dict[str, Any]) -> str:
    total = figures["total_s"]
    rows: list[list[object]] = [
        ["items queued over 24 hour partitions", figures["items"], ""],
        ["  SUCCESS / FAILED (not held)", f"{figures['succeeded']:,} / {figures['failed']:,}", ""],
        ["  by the backfill run", figures["items_by_backfill_run"], ""],
        [
            "  by sensor runs meanwhile",
            figures["items_by_sensor_runs"],
            f"{figures['sensor_runs']} runs; {figures['items_processed_before_launch']} done before the launch",
        ],
        ["total s (launch to all processed)", total, f"target < {TARGET_S:g}: {figures['verdict']}"],
    ]
    for name, value in figures["breakdown_s"].items():
        rows.append([f"  {name}", value, f"{value / total:.0%}"])
    rows += [
        [
            "total s without the backfill loop's wait",
            figures["total_without_backfill_loop_s"],
            "Dagster's backfill daemon looks for new backfills every 30 s (not configurable)",
        ],
        ["rows/s", figures["rows_per_s"], ""],
        ["sensor alone (50 per 5 s) s", figures["sensor_alone_s"], f"{figures['speedup_vs_sensor_alone']:.0f}x faster"],
        ["setup s (enqueue + daemon start)", figures["setup_s"], "not counted"],
    ]
    title = f"Backlog drain: {figures['items']:,} items, one backfill through the real dagster-daemon"
    return report.table(title, ["figure", "value", "note"], rows)


def main() -> None:
    report.command(NAME, run, __doc__, f"{QUICK_ITEMS:,} items instead of {ITEMS:,}")


if __name__ == "__main__":
    main()
