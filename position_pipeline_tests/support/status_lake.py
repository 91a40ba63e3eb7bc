"""A lake whose queue holds items in every status and both priorities, built with the queue's own calls at fixed
times, and a position_updates table with several runs: what the status tests (core and cli) read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl
from deltalake import write_deltalake

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue

# Fixed claim and mark times, an hour after the items are created (created_at is always the wall clock).
T = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
VALUES_AGE = timedelta(seconds=90)
"""How old IB's values were when each hand-made batch read them."""
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Lake:
    """A lake with a queue in every status and a position_updates table; `ids` maps symbols to request ids."""

    root: str
    ids: dict[str, str]
    items: pl.DataFrame  # the queue as written, indexed by symbol through `created`

    def created(self, symbol: str) -> datetime:
        value = self.items.filter(pl.col("symbol") == symbol)["created_at"].item()
        assert isinstance(value, datetime)
        return value


def claim(queue: PositionQueue, run: str, at: datetime, expected: list[str], limit: int = 10) -> None:
    claimed = queue.claim(None, limit, claimed_by=run, now=at)
    assert sorted(claimed["symbol"].to_list()) == sorted(expected)


def insert(queue: PositionQueue, ids: dict[str, str], *items: tuple[int, str, int]) -> None:
    for (_, symbol, _), request_id in zip(items, queue.insert_many(items), strict=True):
        ids[symbol] = request_id


def update_rows(run_id: str, snapshot_at: datetime, n: int) -> pl.DataFrame:
    """n position_updates rows of run `run_id`, as the pipeline appends them (one snapshot_at per run)."""
    values = {
        "request_id": [f"{run_id}-{i}" for i in range(n)],
        "conid": [1000 + i for i in range(n)],
        "account": ["DU1000001"] * n,
        "symbol": [f"S{i}" for i in range(n)],
        "sec_type": ["STK"] * n,
        "currency": ["USD"] * n,
        "local_symbol": [f"S{i}" for i in range(n)],
        "position": [10.0] * n,
        "average_cost": [100.0] * n,
        "market_price": [101.0] * n,
        "market_value": [1010.0] * n,
        "unrealized_pnl": [10.0] * n,
        "queued_at": [snapshot_at - MINUTE] * n,
        "snapshot_at": [snapshot_at] * n,
        "run_id": [run_id] * n,
        "snapshot_date": [snapshot_at.date()] * n,
    }
    stock = dict.fromkeys(
        ["right", "strike", "expiry", "multiplier", "realized_pnl", "account_update_time", *lake.DESK_VALUES],
        [None] * n,
    )
    stock["values_as_of"] = [snapshot_at - VALUES_AGE] * n
    return pl.DataFrame({**values, **stock}, schema=lake.POSITION_UPDATES_SCHEMA)


def build_full_lake(root: str) -> Lake:
    """A lake under `root`: a queue in every status, position_updates with three runs. Final queue (symbol: priority,
    status, attempts):

    PENDING     N1 1, N4 1 | N2 2, N3 2
    PROCESSING  A1 1 (run-a) | A2 2, A3 2 (run-a), B1 2 (run-b)
    SUCCESS     S1 1 | S2 2, S3 2
    FAILED      F 1 (3 attempts: no more retries), H 1 (1, retry at T+20:30) | G 2 (2, retry at T+21:05)
    """
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids: dict[str, str] = {}

    insert(queue, ids, (101, "F", 1))
    for n, at in enumerate([T, T + MINUTE, T + 3 * MINUTE], start=1):  # retry_after T+30s, then T+2min
        claim(queue, f"run-{n}", at, ["F"])
        assert queue.mark_failed_many({ids["F"]: f"F failed {n}"}, f"run-{n}", now=at) == 1

    insert(queue, ids, (201, "G", 2), (301, "S1", 1), (302, "S2", 2), (303, "S3", 2))
    claim(queue, "run-4", T + 10 * MINUTE, ["G", "S1", "S2", "S3"])  # F has no attempts left
    assert queue.mark_success([ids["S1"], ids["S2"], ids["S3"]], "run-4", now=T + 10 * MINUTE) == 3
    assert queue.mark_failed_many({ids["G"]: "G not held"}, "run-4", now=T + 10 * MINUTE) == 1

    insert(queue, ids, (102, "H", 1))
    claim(queue, "run-5", T + 20 * MINUTE, ["G", "H"])
    assert queue.mark_failed_many({ids["H"]: "H: IB sent\nno values"}, "run-5", now=T + 20 * MINUTE) == 1
    failed_g_at = T + 20 * MINUTE + timedelta(seconds=5)
    assert queue.mark_failed_many({ids["G"]: "G not held again"}, "run-5", now=failed_g_at) == 1

    insert(queue, ids, (401, "A1", 1), (402, "A2", 2), (403, "A3", 2))
    claim(queue, "run-a", T + 20 * MINUTE + timedelta(seconds=10), ["A1", "A2", "A3"], limit=3)
    insert(queue, ids, (404, "B1", 2))
    claim(queue, "run-b", T + 20 * MINUTE + timedelta(seconds=10), ["B1"], limit=1)
    insert(queue, ids, (501, "N1", 1), (502, "N2", 2), (503, "N3", 2), (504, "N4", 1))

    uri = lake.ensure_position_updates_table(root)
    # Committed out of snapshot order: the newest batch is the newest snapshot, not the last commit.
    for run_id, snapshot_at, n in [
        ("run-old", datetime(2025, 1, 1, 23, 59, 59, tzinfo=UTC), 3),
        ("run-late", datetime(2025, 1, 2, 9, 0, tzinfo=UTC), 2),
        ("run-early", datetime(2025, 1, 2, 8, 0, tzinfo=UTC), 4),
    ]:
        rows = update_rows(run_id, snapshot_at, n).to_arrow().cast(lake.POSITION_UPDATES_ARROW_SCHEMA)
        write_deltalake(uri, rows, mode="append")
    return Lake(root, ids, queue.read())
