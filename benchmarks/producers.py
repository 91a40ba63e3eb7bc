"""Producers: 1,000 inserts from one asyncio event loop, as the design note's position streamer makes them.

Run: `python -m benchmarks.producers [--out DIR] [--quick]`. Three sides, each on its own new table in a temporary
folder, each while a heartbeat task ticking every 10 ms measures the loop's longest stall:

- `concurrent`: `AsyncPositionQueue`, 1,000 `insert` awaited at once (`asyncio.gather`, many handlers): group
  commit folds them into a few commits, each await returning once its item is committed.
- `sequential`: the same queue, 1,000 inserts awaited one after another: each await waits for its own commit
  (no write-behind), so this is one commit per insert by design; the loop still never blocks.
- `note queue`: the design note's own queue, re-implemented minimally as its code does it: an `async def insert`
  that writes a one-row frame in its format (naive `datetime.now()` text times) with `write_deltalake` append,
  on the event loop, one write per insert, awaited one after another as its test does; the loop gets a turn
  between two inserts (as when each comes from its own IB event), so its stall is one write's.

Goals: `concurrent` at least 20x faster than `note queue` in at most 20 commits, and no stall over 50 ms on our
sides (the note's queue blocks the loop for each write by construction).
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import DeltaTable, write_deltalake

from benchmarks import report
from position_pipeline import AsyncPositionQueue
from position_pipeline.core import lake
from position_pipeline.core.queue.heartbeat import Heartbeat

NAME = "producers"
INSERTS = 1_000
QUICK_INSERTS = 100
TARGET_RATIO = 20.0
TARGET_COMMITS = 20
TARGET_STALL_S = 0.050


class NoteQueue:
    """The design note's PositionQueue insert: one `write_deltalake` append per call, run on the event loop."""

    def __init__(self, delta_lake_path: str) -> None:
        self.delta_lake_path = delta_lake_path

    async def insert(self, conid: int, symbol: str, priority: int = 2) -> str:
        request_id = str(uuid.uuid4())
        now = datetime.now().isoformat()
        row = {
            "request_id": request_id,
            "conid": conid,
            "symbol": symbol,
            "priority": priority,
            "status": "PENDING",
            "created_at": now,
            "updated_at": now,
            "error_message": None,
        }
        write_deltalake(self.delta_lake_path, pl.DataFrame([row], schema=lake.LEGACY_QUEUE_SCHEMA), mode="append")
        return request_id


async def _concurrent(uri: str, count: int) -> None:
    async with AsyncPositionQueue(delta_lake_path=uri) as queue:
        await asyncio.gather(*(queue.insert(100_000 + i, "SYM", 2) for i in range(count)))


async def _sequential(uri: str, count: int) -> None:
    async with AsyncPositionQueue(delta_lake_path=uri) as queue:
        for i in range(count):
            await queue.insert(100_000 + i, "SYM", 2)


async def _note(uri: str, count: int) -> None:
    queue = NoteQueue(uri)
    for i in range(count):
        await queue.insert(100_000 + i, "SYM", 2)
        await asyncio.sleep(0)  # the next IB event's handler: the heartbeat may run in between


class GcPauses:
    """The longest full (generation 2) garbage collection while installed: a stall no queue design avoids."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._started)


async def _timed(side: Callable[[str, int], Awaitable[None]], uri: str, count: int) -> tuple[float, float, float]:
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    try:
        async with Heartbeat() as beat:
            started = time.perf_counter()
            await side(uri, count)
            took = time.perf_counter() - started
    finally:
        gc.callbacks.remove(pauses)
    return took, beat.longest_stall, pauses.longest


def measure(side: Callable[[str, int], Awaitable[None]], uri: str, count: int) -> dict[str, Any]:
    """One side on a new table: seconds, commits (table versions written), files, rows and the longest stall."""
    took, stall, gc_pause = asyncio.run(_timed(side, uri, count))
    dt = DeltaTable(uri)
    rows = pl.scan_delta(dt).select(pl.len()).collect().item()
    # Our queue's first call creates the table (version 0, no data): that is not an insert's commit.
    creation = 1 if dt.history(dt.version() + 1)[-1]["operation"] == "CREATE TABLE" else 0
    return {
        "seconds": round(took, 3),
        "commits": dt.version() + 1 - creation,
        "files": len(dt.file_uris()),
        "rows": int(rows),
        "longest_stall_ms": round(stall * 1000, 1),
        "longest_full_gc_ms": round(gc_pause * 1000, 1),
    }


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Run the three sides once each (INSERTS, or QUICK_INSERTS with quick); print and return the figures."""
    count = QUICK_INSERTS if quick else INSERTS
    sides = {"concurrent": _concurrent, "sequential": _sequential, "note queue": _note}
    with tempfile.TemporaryDirectory(prefix="producers-") as base:
        results = {name: measure(side, str(Path(base) / name.replace(" ", "_")), count) for name, side in sides.items()}
    for name, result in results.items():
        assert result["rows"] == count, f"{name} wrote {result['rows']} rows for {count} inserts"
    ours, note = results["concurrent"], results["note queue"]
    ratio = note["seconds"] / ours["seconds"]
    figures = {
        "inserts": count,
        "sides": results,
        "ratio_note_over_concurrent": round(ratio, 1),
        "verdict_ratio": report.verdict(ratio, TARGET_RATIO, below=False),
        "verdict_commits": report.verdict(ours["commits"], TARGET_COMMITS + 1),
        "verdict_stall": report.verdict(
            max(results["concurrent"]["longest_stall_ms"], results["sequential"]["longest_stall_ms"]),
            TARGET_STALL_S * 1000,
        ),
    }
    print(
        report.table(
            f"Producers: {count:,} inserts from one event loop",
            ["side", "seconds", "commits", "files", "longest stall ms", "longest full gc ms", "note / side"],
            [
                [
                    name,
                    r["seconds"],
                    r["commits"],
                    r["files"],
                    r["longest_stall_ms"],
                    r["longest_full_gc_ms"],
                    f"{note['seconds'] / r['seconds']:.1f}x",
                ]
                for name, r in results.items()
            ],
        )
    )
    print(
        f"goals: concurrent >= {TARGET_RATIO:g}x the note's queue: {figures['verdict_ratio']}; "
        f"<= {TARGET_COMMITS} commits: {figures['verdict_commits']}; "
        f"no stall over {TARGET_STALL_S * 1000:.0f} ms on our sides: {figures['verdict_stall']}"
    )
    return figures


def main() -> None:
    report.command(NAME, run, __doc__, f"{QUICK_INSERTS} inserts instead of {INSERTS}")


if __name__ == "__main__":
    main()
