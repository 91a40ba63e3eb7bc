"""Queue scale: claims and a run's peak memory with 1,000 pending items on top of 1,000,000 SUCCESS items.

Run: `python -m benchmarks.queue_scale [--out DIR] [--quick]`. Targets: claim p95 under 250 ms; peak RSS of a run
under 500 MB.

The history is what a month of steady running leaves in the queue when nothing ever archives it: 1,000,000 SUCCESS
items queued 31 to 1 days ago, evenly, written in 200 time-ordered commits of 5,000 rows (200 files, as a queue whose
every insert, claim and mark rewrote small files would be left after a compaction of the closed days; it is written
in bulk with `lake.QUEUE_SCHEMA` so that building it takes seconds, not a month). On top, 1,000 PENDING items queued
in the current hour by 20 producer commits of 50, for contracts the simulated gateway holds.

Measured twice, on the table as built ("before upkeep") and after `upkeep.run_upkeep` with the production defaults
(archive SUCCESS items older than 24 h, compact, checkpoint, vacuum), each on its own copy of the lake:

- claims: 40 claims of 25 items (quick: 10) by `PositionQueue.claim` with the window of the items' hour partition,
  exactly as `queued_positions` makes them, timed one by one;
- a run: one real in-process run of the sync job (three assets, batch_size 50, the items' partition, against the
  simulator) in a child process, which reports its own peak resident memory as the kernel counted it (VmHWM: not
  ru_maxrss, which in a child also counts this process's memory at fork), so the history built here does not count;
  a child that only imports the code location shows the floor.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import write_deltalake

from benchmarks import report
from benchmarks.batch_cost import held_items, item_window, simulated_gateway
from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus

NAME = "queue_scale"
HISTORY_ROWS = 1_000_000
HISTORY_COMMITS = 200
HISTORY_DAYS = 30
PENDING = 1_000
PENDING_COMMITS = 20
CLAIM_SIZE = 25
CLAIMS, QUICK_CLAIMS = 40, 10
TARGET_CLAIM_P95_S = 0.250
TARGET_PEAK_RSS_MB = 500.0
REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger(__name__)


def history(rows: int, now: datetime) -> pl.DataFrame:
    """`rows` SUCCESS items queued from 31 to 1 days before `now`, evenly, oldest first, in QUEUE_SCHEMA."""
    first = now - timedelta(days=HISTORY_DAYS + 1)
    step_us = HISTORY_DAYS * 86_400 * 1_000_000 // rows
    created = pl.lit(first) + pl.duration(microseconds=pl.col("i") * step_us)
    frame = pl.DataFrame({"i": pl.int_range(rows, eager=True)}).with_columns(
        request_id=pl.Series([uuid.uuid4().hex for _ in range(rows)]),
        conid=100_000 + pl.col("i") % 2_000,
        symbol=pl.format("SYM{}", pl.col("i") % 2_000),
        account=pl.format("DU{}", 1_000_001 + pl.col("i") % 3),
        priority=pl.when(pl.col("i") % 10 == 0).then(1).otherwise(2),
        status=pl.lit(QueueStatus.SUCCESS.value),
        created_at=created,
        updated_at=created + pl.duration(seconds=4),
        error_message=pl.lit(None, pl.String),
        attempts=pl.lit(0),
        claims=pl.lit(1),
        retry_after=pl.lit(None, lake.UTC_TIMESTAMP),
        claimed_by=pl.format("run-{}", pl.col("i") // 50),
        claimed_at=created + pl.duration(seconds=2),
    )
    return frame.select(lake.QUEUE_SCHEMA.names()).cast(lake.QUEUE_SCHEMA)  # type: ignore[arg-type]


def build(root: str, gateway_items: list[dict[str, Any]], now: datetime) -> dict[str, float]:
    """The history in HISTORY_COMMITS appends, then the pending items in PENDING_COMMITS producer inserts."""
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    queue.version()  # creates the table with its declared schema
    started = time.perf_counter()
    rows = history(HISTORY_ROWS, now)
    made = time.perf_counter() - started
    size = -(-rows.height // HISTORY_COMMITS)
    for start in range(0, rows.height, size):
        chunk = rows.slice(start, size).to_arrow().cast(lake.QUEUE_ARROW_SCHEMA)
        write_deltalake(queue.table_uri, chunk, mode="append")
    del rows
    per_commit = PENDING // PENDING_COMMITS
    for number in range(PENDING_COMMITS):
        queue.insert_many(gateway_items[number * per_commit : (number + 1) * per_commit], queued_at=now)
    return {"generate_s": made, "build_s": time.perf_counter() - started}


def claim_seconds(root: str, claims: int, queued_at: datetime) -> list[float]:
    """Seconds of each of `claims` claims of CLAIM_SIZE items over the items' partition window, as the asset claims."""
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    _, window = item_window(queued_at)
    times = []
    for number in range(claims):
        started = time.perf_counter()
        batch = queue.claim(
            None, CLAIM_SIZE, claimed_by=f"claim-{number}", queued_from=window.start, queued_before=window.end
        )
        times.append(time.perf_counter() - started)
        if batch.height != CLAIM_SIZE:
            raise RuntimeError(f"claim {number} took {batch.height} items, expected {CLAIM_SIZE}")
    return times


def child_run(root: str, port: int, partition_key: str) -> None:
    """In a child process: one real in-process run of the sync job; prints its outcome and this process's peak RSS."""
    import dagster as dg

    from benchmarks.batch_cost import run_sync_job, sync_job

    started = time.perf_counter()
    written = run_sync_job(sync_job(root, port), dg.DagsterInstance.ephemeral(), partition_key)
    seconds = time.perf_counter() - started
    print(json.dumps({"peak_rss_mb": report.own_peak_rss_mb(), "seconds": seconds, "written": written}))


def child_imports() -> None:
    """In a child process: import what a run imports, and nothing else; prints this process's peak RSS."""
    import dagster  # noqa: F401

    import position_pipeline.definitions  # noqa: F401

    print(json.dumps({"peak_rss_mb": report.own_peak_rss_mb()}))


def in_child(call: str) -> dict[str, Any]:
    """Run `call` (Python source) in a fresh interpreter at the repo root; its last stdout line is JSON."""
    done = subprocess.run(
        [sys.executable, "-c", f"from benchmarks.queue_scale import *; {call}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {call} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(root: str, scratch: Path, port: int, claims: int, queued_at: datetime) -> dict[str, Any]:
    """Claims on one copy of the lake, a run in a child process on another; the lake at `root` is left as it is."""
    claims_lake, run_lake = scratch / "claims", scratch / "run"
    for copy in (claims_lake, run_lake):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(root, copy)
    times = claim_seconds(str(claims_lake), claims, queued_at)
    key, _ = item_window(queued_at)
    run = in_child(f"child_run({str(run_lake)!r}, {port}, {key!r})")
    shutil.rmtree(claims_lake)
    shutil.rmtree(run_lake)
    return {"claim_s": report.summary(times), "run_peak_rss_mb": run["peak_rss_mb"], "run_s": run["seconds"]}


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Build the queue, measure, run upkeep, measure again; print and return the figures."""
    from position_pipeline.core.maintenance import run_upkeep, table_state
    from position_pipeline.defs.upkeep import UpkeepConfig

    claims = QUICK_CLAIMS if quick else CLAIMS
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="queue-scale-") as folder, simulated_gateway() as gateway:
        base = Path(folder)
        root = str(base / "lake")
        queue_uri = lake.table_uri(root, lake.QUEUE_TABLE)
        built = build(root, held_items(gateway, PENDING), now)
        states = {"before upkeep": table_state(queue_uri)}
        results = {"before upkeep": measure(root, base, gateway.port, claims, now)}

        started = time.perf_counter()
        upkeep = run_upkeep(log, UpkeepConfig(), root)
        upkeep_s = time.perf_counter() - started
        states["after upkeep"] = table_state(queue_uri)
        results["after upkeep"] = measure(root, base, gateway.port, claims, now)
        floor = in_child("child_imports()")

    figures: dict[str, Any] = {
        "history_rows": HISTORY_ROWS,
        "history_commits": HISTORY_COMMITS,
        "pending": PENDING,
        "claims": claims,
        "claim_size": CLAIM_SIZE,
        **{f"{k}": round(v, 1) for k, v in built.items()},
        "upkeep_s": round(upkeep_s, 1),
        "upkeep_rows_archived": upkeep["rows archived"],
        "imports_only_peak_rss_mb": floor["peak_rss_mb"],
        "target_claim_p95_s": TARGET_CLAIM_P95_S,
        "target_peak_rss_mb": TARGET_PEAK_RSS_MB,
    }
    rows: list[list[object]] = []
    for name, result in results.items():
        state = states[name]
        claim = result["claim_s"]
        figures[name.replace(" ", "_")] = {
            "queue_rows": state.rows if state else 0,
            "queue_files": state.files if state else 0,
            "queue_bytes": state.bytes if state else 0,
            **result,
            "verdict_claim_p95": report.verdict(claim["p95"], TARGET_CLAIM_P95_S),
            "verdict_peak_rss": report.verdict(result["run_peak_rss_mb"], TARGET_PEAK_RSS_MB),
        }
        verdicts = figures[name.replace(" ", "_")]
        rows.append(
            [
                name,
                state.rows if state else 0,
                state.files if state else 0,
                claim["median"] * 1000,
                claim["p95"] * 1000,
                verdicts["verdict_claim_p95"],
                result["run_peak_rss_mb"],
                verdicts["verdict_peak_rss"],
                result["run_s"],
            ]
        )
    print(
        report.table(
            f"Queue scale: {claims} claims of {CLAIM_SIZE} and one 50-item run, {PENDING:,} pending on "
            f"{HISTORY_ROWS:,} SUCCESS items",
            [
                "queue",
                "rows",
                "files",
                "claim median ms",
                "claim p95 ms",
                "p95 < 250 ms",
                "run peak MB",
                "RSS < 500 MB",
                "run s",
            ],
            rows,
        )
    )
    print(
        f"history built in {built['build_s']:.1f} s; upkeep took {upkeep_s:.1f} s and archived "
        f"{upkeep['rows archived']:,} items; a process importing the code location alone peaks at "
        f"{floor['peak_rss_mb']:.0f} MB"
    )
    return figures


def main() -> None:
    report.command(NAME, run, __doc__, f"{QUICK_CLAIMS} claims instead of {CLAIMS}")


if __name__ == "__main__":
    main()
