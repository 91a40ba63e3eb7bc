"""Batch cost: one 50-item batch through claim, IB read, Delta append and write-back, against the design note's daemon.

Run: `python -m benchmarks.batch_cost [--out DIR] [--quick]`. Target: ours at least 20x faster than the note's way.

Four sides, timed in turn every round (`report.alternate`), each on 50 pending items it has never seen, each on its
own lake in a temporary folder, all against one simulated gateway (200 positions in 3 accounts) read by the real
ib_async client:

- `dagster`: one in-process run of the sync job (`position_sync`: its three assets, executor and tags) for the
  items' hour partition with the sensor's run config (batch_size 50), on a Dagster instance stored in SQLite on disk
  like the single-machine `dagster.yaml`: what a launched run does once its process is up (launch itself is measured
  by the freshness benchmark).
- `dagster, in-memory instance`: the same with an in-memory instance, which shows how much of Dagster's share is the
  storing of the run's events.
- `library`: the same batch through the same library functions the asset bodies call, in the same order (claim, the
  write fence's reads, one IB read, one append with `write_deltalake` as the Delta IO manager does it, followed by its
  stats read, then the write-back), without Dagster: what the batch itself costs.
- `note daemon`: what the design note's QueueWorker does with one connection kept open (connected before timing):
  read the batch (PENDING, priority 2, oldest 50) from a Delta queue table in the note's format, then per item one
  `reqPositionsAsync()`, one `write_deltalake` append of a 1-row frame with the note's columns, and a status update as
  the note's queue makes it, a delete of the item's row followed by an append of its SUCCESS row. The note reads
  market values from `Position` objects, which have none (its code would raise AttributeError and fail every item);
  here they are written null, which only makes the baseline cheaper.

The queues are filled before timing starts, one 50-item commit per round, as a producer would. One untimed warm-up
round per side comes first (imports, first connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import polars as pl
from deltalake import DeltaTable, write_deltalake
from ib_async import IB, StartupFetch

from benchmarks import report
from position_pipeline.core import lake
from position_pipeline.core.ib_reader import IBSettings, read_snapshot
from position_pipeline.core.queue import PositionQueue
from position_pipeline.core.sync import failures, given_back, pinned_accounts, position_update_rows, snapshot_results
from position_pipeline.defs.assets import (
    SENSOR_BATCH_SIZE,
    ib_snapshot,
    position_queue,
    position_updates,
    queued_positions,
)
from position_pipeline.defs.jobs import position_sync_job
from position_pipeline.defs.partitions import QueuedWindow, partition_key_for, queued_hour_partitions, queued_window
from position_pipeline.defs.resources import IBResource, build_resources
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread, Holding, SimulatedGateway

NAME = "batch_cost"
TARGET_RATIO = 20.0
SIM_POSITIONS = 200  # the `simulate` command's default account size
SIM_ACCOUNTS = 3
ROUNDS, QUICK_ROUNDS = 7, 3
NOTE_CLIENT_ID = 1  # outside the pipeline's client-id range (100..199)

T = TypeVar("T")


# Shared with the other benchmarks: the simulated gateway, items it holds, and one batch through the library.


@contextlib.contextmanager
def simulated_gateway(positions: int = SIM_POSITIONS, accounts: int = SIM_ACCOUNTS) -> Iterator[GatewayThread]:
    """A simulated gateway on a free loopback port in its own thread, prices frozen (as the tests' `sim` fixture)."""
    state = GatewayState.generate(positions=positions, accounts=accounts, seed=7)
    with GatewayThread(lambda: SimulatedGateway(state, port=0, price_interval=None)) as gateway:
        yield gateway


UNPINNED_EVERY = 3
"""A desk's mix: every third item names no account (as the design note's producers enqueue), the others name the
account of their holding. An unpinned item of a contract held in several accounts is a row in each."""


def queue_item(holding: Holding, n: int) -> dict[str, Any]:
    """The `n`-th queue item of the desk's mix for `holding`."""
    account = None if n % UNPINNED_EVERY == UNPINNED_EVERY - 1 else holding.account
    return {"conid": holding.contract.conid, "symbol": holding.contract.symbol, "account": account}


def held_items(gateway: GatewayThread, count: int, start: int = 0) -> list[dict[str, Any]]:
    """`count` queue items for positions the gateway holds (the desk's mix, `queue_item`), cycling through them."""
    holdings = gateway.call(lambda gw: sorted(gw.state.positions(), key=lambda h: (h.account, h.contract.conid)))
    return [queue_item(holdings[(start + i) % len(holdings)], start + i) for i in range(count)]


def ib_settings(gateway: GatewayThread) -> IBSettings:
    """What IBResource(port=...) hands the reader: the pipeline's defaults, pointed at the simulator."""
    return IBResource(port=gateway.port).settings()


def item_window(queued_at: datetime) -> tuple[str, QueuedWindow]:
    """The hour partition the sensor would run for items queued at `queued_at`, and the window its claim uses."""
    key = partition_key_for(queued_at)
    return key, queued_window(queued_hour_partitions.time_window_for_partition_key(key))


@dataclass
class BatchSteps:
    """Seconds spent in each part of one library batch, and what it did."""

    claim: float = 0.0
    ib_read: float = 0.0
    append: float = 0.0
    write_back: float = 0.0
    checks: float = 0.0
    claimed: int = 0
    rows: int = 0
    marked: int = 0
    given_back: int = 0


def sync_batch(
    root: str,
    settings: IBSettings,
    *,
    window: QueuedWindow | None = None,
    batch_size: int = SENSOR_BATCH_SIZE,
    run_id: str | None = None,
    reads: bool = True,
) -> BatchSteps:
    """One sync batch through the steps the three asset bodies take, in their order, without Dagster (the checks of
    `core.write_plan.plan_write` spelled out one by one, so each can be timed or left out).

    queued_positions: `PositionQueue.claim` over the partition's window. ib_snapshot: `read_snapshot` (one connection,
    reqPositions at connect, reqAccountUpdates per account involved), `snapshot_results`. position_updates:
    `position_update_rows`, the table's creation check, the write fence (`held_by`, `held_since`), the version read,
    the append with `write_deltalake` as the Delta IO manager's handler makes it (table partitioning, then its read of
    the add actions for its stats), then `mark_success` / `mark_failed_many` and the version read again. Items are
    never re-claimed here, so the check for rows an earlier run wrote (`claims > 1`) has nothing to look at.
    `reads=False` leaves out the reads that write nothing (the creation check, the fence, the versions, the stats):
    every commit is the same, and the caller must have created position_updates (`lake.ensure_position_updates_table`).
    """
    run = run_id or uuid.uuid4().hex
    steps = BatchSteps()
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    window = window or QueuedWindow(None, None)

    started = time.perf_counter()
    batch = queue.claim(None, batch_size, claimed_by=run, queued_from=window.start, queued_before=window.end)
    steps.claim = time.perf_counter() - started
    steps.claimed = batch.height
    if batch.is_empty():
        return steps

    started = time.perf_counter()
    snapshot = read_snapshot(settings, batch["conid"].unique().to_list(), run, pinned_accounts(batch))
    back = given_back(batch, snapshot)  # as the ib_snapshot asset: unread items go back unjudged
    if back:
        queue.release(list(back), claimed_by=run)
        steps.given_back = len(back)
    results = snapshot_results(batch.filter(~pl.col("request_id").is_in(list(back))), snapshot)
    steps.ib_read = time.perf_counter() - started

    started = time.perf_counter()
    rows = position_update_rows(results, run)
    failed = failures(results)
    # The creation check reads the table each time; without reads the caller has created it once.
    uri = lake.ensure_position_updates_table(root) if reads else lake.table_uri(root, lake.POSITION_UPDATES_TABLE)
    ids = results["request_id"].to_list()
    if reads:
        if queue.held_by(ids, run) != set(ids) or queue.held_since(ids, run) is None:
            raise RuntimeError(f"run {run} lost its claims")
        DeltaTable(uri).version()
    steps.checks = time.perf_counter() - started

    started = time.perf_counter()
    if rows.height:
        write_deltalake(uri, rows.to_arrow().to_reader(), mode="append")
        if reads:
            DeltaTable(uri).get_add_actions(flatten=True)  # the IO manager's stats read after every write
    steps.append = time.perf_counter() - started
    steps.rows = rows.height

    started = time.perf_counter()
    succeeded = rows["request_id"].to_list()
    steps.marked = queue.mark_success(succeeded, claimed_by=run) if succeeded else 0
    steps.marked += queue.mark_failed_many(failed, claimed_by=run) if failed else 0
    if reads:
        DeltaTable(uri).version()
    steps.write_back = time.perf_counter() - started
    return steps


def sync_job(root: str, port: int) -> dg.JobDefinition:
    """position_sync as the code location defines it (selection, executor, tags), with resources for this lake and
    a gateway on `port`."""
    defs = dg.Definitions(
        assets=[position_queue, queued_positions, ib_snapshot, position_updates],
        jobs=[position_sync_job],
        resources=build_resources(root, IBResource(port=port)),
    )
    return defs.resolve_job_def(position_sync_job.name)


def run_sync_job(job: dg.JobDefinition, instance: dg.DagsterInstance, partition_key: str) -> int:
    """One in-process run of the sync job for one hour partition with the sensor's run config; returns the items it
    wrote back SUCCESS (a failed run raises)."""
    result = job.execute_in_process(
        run_config={
            "ops": {"queued_positions": {"config": {"batch_size": SENSOR_BATCH_SIZE}}},
            "loggers": {"console": {"config": {"log_level": "ERROR"}}},  # events are stored all the same
        },
        instance=instance,
        partition_key=partition_key,
    )
    [written] = [
        m for m in result.asset_materializations_for_node("position_updates") if m.asset_key == position_queue.key
    ]
    return int(written.metadata["marked_success"].value)  # type: ignore[arg-type]


# Our sides: the sync job run by Dagster, and the same batch through the library


@dataclass
class Pipeline:
    """A lake, a Dagster instance and the resources the sync job runs with, pointed at the simulator."""

    root: str
    gateway: GatewayThread
    instance: dg.DagsterInstance
    job: dg.JobDefinition | None = None
    windows: list[tuple[str, QueuedWindow]] = field(default_factory=list)
    steps: list[BatchSteps] = field(default_factory=list)

    def enqueue(self, rounds: int) -> None:
        """One 50-item commit per round, as a producer would; remembers each round's partition."""
        queue = PositionQueue(lake.table_uri(self.root, lake.QUEUE_TABLE))
        for number in range(rounds):
            at = datetime.now(UTC)
            queue.insert_many(held_items(self.gateway, SENSOR_BATCH_SIZE, number * 7), queued_at=at)
            self.windows.append(item_window(at))

    def dagster_batch(self) -> None:
        """One run of the real sync job for the next round's hour partition."""
        if self.job is None:
            self.job = sync_job(self.root, self.gateway.port)
        key, _ = self.windows.pop(0)
        if (written := run_sync_job(self.job, self.instance, key)) != SENSOR_BATCH_SIZE:
            raise RuntimeError(f"the run wrote back {written} of {SENSOR_BATCH_SIZE} items")

    def library_batch(self) -> None:
        _, window = self.windows.pop(0)
        steps = sync_batch(self.root, ib_settings(self.gateway), window=window)
        if steps.marked != SENSOR_BATCH_SIZE:
            raise RuntimeError(f"the batch wrote back {steps.marked} of {SENSOR_BATCH_SIZE} items")
        self.steps.append(steps)

    def items_and_rows(self) -> tuple[int, int]:
        """Items with rows, and rows (an item without an account has a row per account holding its contract)."""
        table = pl.scan_delta(lake.table_uri(self.root, lake.POSITION_UPDATES_TABLE))
        counted = table.select(pl.col("request_id").n_unique().alias("items"), pl.len().alias("rows")).collect()
        return counted["items"].item(), counted["rows"].item()


# The design note's daemon


_NOTE_UPDATES_SCHEMA = pl.Schema(
    {
        "conid": pl.Int64(),
        "symbol": pl.String(),
        "right": pl.String(),
        "strike": pl.Float64(),
        "expiry": pl.String(),
        "position": pl.Float64(),
        "market_price": pl.Float64(),
        "market_value": pl.Float64(),
        "average_cost": pl.Float64(),
        "unrealized_pnl": pl.Float64(),
        "timestamp": pl.String(),
        "date": pl.Date(),
    }
)
"""The columns the note's `_write_to_delta_lake` writes, one row per item."""


@dataclass
class NoteSteps:
    get_batch: float = 0.0
    positions: float = 0.0
    append: float = 0.0
    status: float = 0.0


class NoteDaemon:
    """The note's QueueWorker: one IB connection for its lifetime, per-item requests, appends and status updates.

    The connection lives on an event loop in its own thread (the note's daemon is an asyncio task); `batch()` runs one
    `_process_batch` there and waits for it.
    """

    def __init__(self, root: Path, gateway: GatewayThread) -> None:
        self.queue_uri = str(root / "position_queue")
        self.updates_uri = str(root / "position_updates")
        self.gateway = gateway
        self.steps: list[NoteSteps] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="note-daemon", daemon=True)
        self._ib: IB | None = None

    def start(self) -> None:
        self._thread.start()
        self._run(self._connect())

    def stop(self) -> None:
        if self._ib is not None:
            self._loop.call_soon_threadsafe(self._ib.disconnect)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def enqueue(self, rounds: int) -> None:
        """The note's queue rows (LEGACY_QUEUE_SCHEMA: naive ISO-8601 text times), one 50-item append per round."""
        for number in range(rounds):
            now = datetime.now(UTC).replace(tzinfo=None).isoformat()
            items = held_items(self.gateway, SENSOR_BATCH_SIZE, number * 7)
            frame = pl.DataFrame(
                {
                    "request_id": [str(uuid.uuid4()) for _ in items],
                    "conid": [i["conid"] for i in items],
                    "symbol": [i["symbol"] for i in items],
                    "priority": [2] * len(items),
                    "status": ["PENDING"] * len(items),
                    "created_at": [now] * len(items),
                    "updated_at": [now] * len(items),
                    "error_message": [None] * len(items),
                },
                schema=lake.LEGACY_QUEUE_SCHEMA,
            )
            write_deltalake(self.queue_uri, frame, mode="append")

    def batch(self) -> None:
        self._run(self._process_batch())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(120)

    async def _connect(self) -> None:
        ib = IB()
        # No startup fetch: a subscription to account updates held here would make IB refuse (2101) ours.
        await ib.connectAsync(
            "127.0.0.1",
            self.gateway.port,
            clientId=NOTE_CLIENT_ID,
            readonly=True,
            timeout=10,
            fetchFields=StartupFetch(0),
        )
        self._ib = ib

    async def _process_batch(self) -> None:
        assert self._ib is not None
        steps = NoteSteps()
        started = time.perf_counter()
        batch = (
            pl.read_delta(self.queue_uri)
            .filter((pl.col("priority") == 2) & (pl.col("status") == "PENDING"))
            .sort("created_at")
            .head(SENSOR_BATCH_SIZE)
        )
        steps.get_batch = time.perf_counter() - started
        if batch.is_empty():
            raise RuntimeError("the note daemon's queue is empty")
        for item in batch.iter_rows(named=True):
            started = time.perf_counter()
            positions = await self._ib.reqPositionsAsync()
            found = next(p for p in positions if p.contract.conId == item["conid"])
            steps.positions += time.perf_counter() - started

            started = time.perf_counter()
            now = datetime.now(UTC).replace(tzinfo=None)
            row = pl.DataFrame(
                {
                    "conid": [item["conid"]],
                    "symbol": [item["symbol"]],
                    "right": [found.contract.right or "CALL"],  # the note's default
                    "strike": [0.0],
                    "expiry": [""],
                    "position": [found.position],
                    "market_price": [None],
                    "market_value": [None],
                    "average_cost": [found.avgCost],
                    "unrealized_pnl": [None],
                    "timestamp": [now.isoformat()],
                    "date": [now.date()],
                },
                schema=_NOTE_UPDATES_SCHEMA,
            )
            write_deltalake(self.updates_uri, row, mode="append")
            steps.append += time.perf_counter() - started

            started = time.perf_counter()
            self._mark_success(item)
            steps.status += time.perf_counter() - started
        self.steps.append(steps)

    def _mark_success(self, item: dict[str, Any]) -> None:
        """The note's queue updates a status by deleting the item's row and appending it anew."""
        DeltaTable(self.queue_uri).delete(f"request_id = '{item['request_id']}'")
        updated = {**item, "status": "SUCCESS", "updated_at": datetime.now(UTC).replace(tzinfo=None).isoformat()}
        write_deltalake(self.queue_uri, pl.DataFrame([updated], schema=lake.LEGACY_QUEUE_SCHEMA), mode="append")

    def succeeded(self) -> int:
        return pl.read_delta(self.queue_uri).filter(pl.col("status") == "SUCCESS").height


# The benchmark


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Time the sides in turn for ROUNDS rounds (QUICK_ROUNDS with quick); print and return the figures."""
    rounds = QUICK_ROUNDS if quick else ROUNDS
    with tempfile.TemporaryDirectory(prefix="batch-cost-") as folder, simulated_gateway() as gateway:
        base = Path(folder)
        (base / "dagster_home").mkdir()
        stored = dg.DagsterInstance.local_temp(str(base / "dagster_home"), overrides={"telemetry": {"enabled": False}})
        in_memory = dg.DagsterInstance.ephemeral()
        pipelines = {
            "dagster": Pipeline(str(base / "dagster_lake"), gateway, stored),
            "dagster, in-memory instance": Pipeline(str(base / "memory_lake"), gateway, in_memory),
            "library": Pipeline(str(base / "library_lake"), gateway, in_memory),
        }
        note = NoteDaemon(base / "note_lake", gateway)
        for pipeline in pipelines.values():
            pipeline.enqueue(rounds + 1)
        note.enqueue(rounds + 1)
        library = pipelines["library"]
        note.start()
        try:
            sides: dict[str, Callable[[], object]] = {
                "dagster": pipelines["dagster"].dagster_batch,
                "dagster, in-memory instance": pipelines["dagster, in-memory instance"].dagster_batch,
                "library": library.library_batch,
                "note daemon": note.batch,
            }
            report.alternate(sides, 1)  # warm-up round, not counted
            library.steps.clear()
            note.steps.clear()
            timings = report.alternate(sides, rounds)
        finally:
            note.stop()
        counted = {name: p.items_and_rows() for name, p in pipelines.items()}
        written = {name: items for name, (items, _) in counted.items()} | {"note daemon": note.succeeded()}
        stored.dispose()
        in_memory.dispose()
    expected = (rounds + 1) * SENSOR_BATCH_SIZE
    if set(written.values()) != {expected}:
        raise RuntimeError(f"expected {expected} items written per side, got {written}")

    stats = {name: report.summary(values) for name, values in timings.items()}
    baseline = stats["note daemon"]["median"]
    ratios = {name: baseline / s["median"] for name, s in stats.items() if name != "note daemon"}
    figures: dict[str, Any] = {
        "rounds": rounds,
        "items_per_batch": SENSOR_BATCH_SIZE,
        "rows_per_batch": counted["library"][1] / (rounds + 1),
        "gateway_positions": SIM_POSITIONS,
        "seconds": stats,
        "ratio": ratios,
        "target_ratio": TARGET_RATIO,
        "verdict": {name: report.verdict(r, TARGET_RATIO, below=False) for name, r in ratios.items()},
        "library_steps_median_s": _median_steps(library.steps),
        "note_steps_median_s": _median_steps(note.steps),
    }

    verdicts = figures["verdict"]
    print(
        report.table(
            f"Batch cost: one {SENSOR_BATCH_SIZE}-item batch ({figures['rows_per_batch']:g} rows: every third item "
            f"without an account), {rounds} rounds alternating (seconds)",
            ["side", "median", "p95", "min", "max", "note / side", f"target {TARGET_RATIO:g}x"],
            [
                [name, s["median"], s["p95"], s["min"], s["max"], baseline / s["median"], verdicts.get(name, "")]
                for name, s in stats.items()
            ],
        )
    )
    print(
        report.table(
            "Where the time goes (median seconds per batch)",
            ["side", "step", "seconds"],
            [["library", k, v] for k, v in figures["library_steps_median_s"].items()]
            + [["note daemon", k, v] for k, v in figures["note_steps_median_s"].items()],
        )
    )
    return figures


def _median_steps(steps: list[Any]) -> dict[str, float]:
    """Median seconds of each timed field of a list of BatchSteps or NoteSteps."""
    if not steps:
        return {}
    names = [n for n, v in vars(steps[0]).items() if isinstance(v, float)]
    return {n: report.summary([getattr(s, n) for s in steps])["median"] for n in names}


def main() -> None:
    report.command(NAME, run, __doc__, f"{QUICK_ROUNDS} rounds instead of {ROUNDS}")


if __name__ == "__main__":
    main()
