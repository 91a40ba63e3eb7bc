"""Desk scale: 50 accounts, 5,000 positions, 0.5 s per account download, a 50-item sensor batch touching every
account and a 5,000-item backfill batch.

Run: `python -m benchmarks desk [--out DIR] [--quick]`. Goals: a 50-item batch touching 50 accounts within the
5-s sensor cadence, and within the read's budget (`IB_READ_BUDGET`, 120 s) in any case.

The simulated gateway holds 5,000 positions in 50 accounts (contracts shared between accounts) and answers each
account download 0.5 s after the subscribe, with 300 filler account values, as a real gateway's downloads take
roughly 0.5-3 s and send hundreds of values. Both batches go through the library functions the assets call
(`batch_cost.sync_batch`), in the desk's mix of items (every third without an account). The values' age is
`snapshot_at - values_as_of` of the rows written. Only the `account_updates` values mode exists so far: reads are
sequential per account (IB serves account updates for one account at a time across all clients), so the sensor
batch costs at least 50 x 0.5 s.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks import report
from benchmarks.batch_cost import ib_settings, queue_item, sync_batch
from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue
from position_pipeline.ib_gateway_sim import Faults, GatewayState, GatewayThread, SimulatedGateway

NAME = "desk"
ACCOUNTS, POSITIONS = 50, 5_000
QUICK_ACCOUNTS, QUICK_POSITIONS = 10, 1_000
DOWNLOAD_S = 0.5
ACCOUNT_VALUES = 300
SENSOR_ITEMS, BACKFILL_ITEMS = 50, 5_000
CADENCE_S = 5.0


@contextmanager
def desk_gateway(accounts: int, positions: int) -> Iterator[GatewayThread]:
    state = GatewayState.generate(positions=positions, accounts=accounts, seed=7)
    faults = Faults(download_seconds=DOWNLOAD_S, account_value_volume=ACCOUNT_VALUES)
    with GatewayThread(lambda: SimulatedGateway(state, port=0, faults=faults, price_interval=None)) as gateway:
        yield gateway


def one_per_account(state: GatewayState, count: int) -> list[dict[str, Any]]:
    """`count` items whose holdings cycle through every account, so the batch touches them all."""
    by_account = {a: sorted(state.positions(a), key=lambda h: h.contract.conid) for a in state.accounts}
    picked = [by_account[state.accounts[i % len(state.accounts)]][i // len(state.accounts)] for i in range(count)]
    return [queue_item(h, n) for n, h in enumerate(picked)]


def spread(state: GatewayState, count: int) -> list[dict[str, Any]]:
    holdings = sorted(state.positions(), key=lambda h: (h.contract.conid, h.account))
    return [queue_item(holdings[(i * 7) % len(holdings)], i) for i in range(count)]


def batch(gateway: GatewayThread, items: list[dict[str, Any]]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        root = str(Path(folder) / "lake")
        PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE)).insert_many(items)
        started = time.perf_counter()
        steps = sync_batch(root, ib_settings(gateway), batch_size=len(items))
        total = time.perf_counter() - started
        rows = pl.read_delta(lake.table_uri(root, lake.POSITION_UPDATES_TABLE))
        ages = rows.select((pl.col("snapshot_at") - pl.col("values_as_of")).dt.total_seconds()).to_series().to_list()
        return {
            "items": steps.claimed,
            "rows": steps.rows,
            "accounts": rows["account"].n_unique(),
            "seconds": total,
            "ib_read_s": steps.ib_read,
            "claim_s": steps.claim,
            "append_s": steps.append,
            "write_back_s": steps.write_back,
            "values_age_median_s": statistics.median(ages),
            "values_age_max_s": max(ages),
        }


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    accounts, positions = (QUICK_ACCOUNTS, QUICK_POSITIONS) if quick else (ACCOUNTS, POSITIONS)
    with desk_gateway(accounts, positions) as gateway:
        state = gateway.call(lambda gw: gw.state)
        sensor = batch(gateway, one_per_account(state, SENSOR_ITEMS))
        backfill = batch(gateway, spread(state, BACKFILL_ITEMS if not quick else 1_000))
    figures: dict[str, Any] = {
        "accounts": accounts,
        "positions": positions,
        "download_s": DOWNLOAD_S,
        "account_values_per_download": ACCOUNT_VALUES,
        "values_mode": "account_updates",
        "sensor_batch": sensor,
        "backfill_batch": backfill,
        "verdict_cadence": report.verdict(sensor["seconds"], CADENCE_S),
        "verdict_budget": report.verdict(sensor["seconds"], 120.0),
    }
    rows = [
        [name, b["items"], b["rows"], b["accounts"], b["seconds"], b["ib_read_s"], b["values_age_median_s"],
         b["values_age_max_s"]]
        for name, b in (("sensor batch", sensor), ("backfill batch", backfill))
    ]  # fmt: skip
    print(
        report.table(
            f"Desk: {accounts} accounts, {positions:,} positions, {DOWNLOAD_S:g} s per account download "
            "(values from account updates)",
            ["batch", "items", "rows", "accounts", "seconds", "IB read s", "age median s", "age max s"],
            rows,
        )
    )
    print(f"goals: sensor batch within {CADENCE_S:g} s: {figures['verdict_cadence']}; within the 120-s read budget: "
          f"{figures['verdict_budget']}")  # fmt: skip
    return figures


def main() -> None:
    report.command(NAME, run, __doc__, f"{QUICK_ACCOUNTS} accounts and {QUICK_POSITIONS:,} positions")


if __name__ == "__main__":
    main()
