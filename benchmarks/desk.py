"""Desk scale: 50 accounts, 5,000 positions, 0.5 s per account download and 0.5 s before a PnL subscription's first
message, a 50-item sensor batch touching every account and a 5,000-item backfill batch, in each values mode.

Run: `python -m benchmarks desk [--out DIR] [--quick]`. Goals: a 50-item batch touching 50 accounts within the
5-s sensor cadence in the pnl mode, and within the read's budget (`IB_READ_BUDGET`, 120 s) in either mode.

The simulated gateway holds 5,000 positions in 50 accounts (contracts shared between accounts), answers each
account download 0.5 s after the subscribe, with 300 filler account values, as a real gateway's downloads take
roughly 0.5-3 s and send hundreds of values, and sends each PnL subscription's first message 0.5 s after it. Both
batches go through the library functions the assets call (`batch_cost.sync_batch`, given-back items included), in
the desk's mix of items (every third without an account), with the pipeline's default settings. The values' age is
`snapshot_at - values_as_of` of the rows written.

What bounds each mode: `account_updates` reads one account after another (IB serves account updates for one account
at a time across all clients), so a batch touching 50 accounts costs at least 50 x 0.5 s. `pnl` asks for every
(account, conid) at once, and the rates of every account in one account summary, but sends its requests at 40 a
second (IB allows 50 messages a second), so a read costs about pairs / 40 s plus the first message's delay, and a
read asks only for the pairs it can ask within IB_REQUEST_TIMEOUT (30 s): about 1,100; a bigger batch has the rest
given back. Items that name their account are read in that account only, so a batch's pairs are what its items need.
"""

from __future__ import annotations

import dataclasses
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
from position_pipeline.core import lake, terms
from position_pipeline.core.queue import PositionQueue
from position_pipeline.ib_gateway_sim import Faults, GatewayState, GatewayThread, SimulatedGateway

NAME = "desk"
ACCOUNTS, POSITIONS = 50, 5_000
QUICK_ACCOUNTS, QUICK_POSITIONS = 10, 1_000
DOWNLOAD_S = 0.5
PNL_S = 0.5
ACCOUNT_VALUES = 300
SENSOR_ITEMS, BACKFILL_ITEMS = 50, 5_000
CADENCE_S = 5.0


@contextmanager
def desk_gateway(accounts: int, positions: int) -> Iterator[GatewayThread]:
    state = GatewayState.generate(positions=positions, accounts=accounts, seed=7)
    faults = Faults(download_seconds=DOWNLOAD_S, account_value_volume=ACCOUNT_VALUES, pnl_seconds=PNL_S)
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


def batch(gateway: GatewayThread, items: list[dict[str, Any]], mode: terms.ValuesFrom) -> dict[str, Any]:
    settings = dataclasses.replace(ib_settings(gateway), values_from=mode)
    with tempfile.TemporaryDirectory() as folder:
        root = str(Path(folder) / "lake")
        PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE)).insert_many(items)
        started = time.perf_counter()
        steps = sync_batch(root, settings, batch_size=len(items))
        total = time.perf_counter() - started
        rows = pl.read_delta(lake.table_uri(root, lake.POSITION_UPDATES_TABLE))
        ages = rows.select((pl.col("snapshot_at") - pl.col("values_as_of")).dt.total_seconds()).to_series().to_list()
        ages = [a for a in ages if a is not None] or [float("nan")]
        return {
            "values_from": str(mode),
            "items": steps.claimed,
            "rows": steps.rows,
            "given_back": steps.given_back,
            "accounts": rows["account"].n_unique(),
            "pairs": rows.select("account", "conid").n_unique(),  # distinct (account, conid) with values
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
    budget = float(terms.IB_READ_BUDGET_S)
    figures: dict[str, Any] = {
        "accounts": accounts,
        "positions": positions,
        "download_s": DOWNLOAD_S,
        "pnl_first_message_s": PNL_S,
        "account_values_per_download": ACCOUNT_VALUES,
    }
    rows = []
    with desk_gateway(accounts, positions) as gateway:
        state = gateway.call(lambda gw: gw.state)
        for mode in terms.ValuesFrom:
            sensor = batch(gateway, one_per_account(state, SENSOR_ITEMS), mode)
            backfill = batch(gateway, spread(state, BACKFILL_ITEMS if not quick else 1_000), mode)
            figures[f"{mode}_sensor_batch"], figures[f"{mode}_backfill_batch"] = sensor, backfill
            for name, b in (("sensor batch", sensor), ("backfill batch", backfill)):
                rows.append([str(mode), name, b["items"], b["rows"], b["pairs"], b["given_back"], b["accounts"],
                             b["seconds"], b["ib_read_s"], b["values_age_median_s"],
                             b["values_age_max_s"]])  # fmt: skip
    pnl_sensor = figures[f"{terms.ValuesFrom.PNL}_sensor_batch"]["seconds"]
    figures["verdict_cadence_pnl"] = report.verdict(pnl_sensor, CADENCE_S)
    for mode in terms.ValuesFrom:
        figures[f"verdict_budget_{mode}"] = report.verdict(figures[f"{mode}_sensor_batch"]["seconds"], budget)
    print(
        report.table(
            f"Desk: {accounts} accounts, {positions:,} positions, {DOWNLOAD_S:g} s per account download, "
            f"{PNL_S:g} s before a PnL subscription's first message",
            ["values from", "batch", "items", "rows", "pairs", "given back", "accounts", "seconds", "IB read s",
             "age median s", "age max s"],
            rows,
        )
    )  # fmt: skip
    print(
        f"goals: pnl sensor batch within {CADENCE_S:g} s: {figures['verdict_cadence_pnl']}; sensor batch within the "
        f"{budget:g}-s read budget: account_updates {figures['verdict_budget_account_updates']}, pnl "
        f"{figures['verdict_budget_pnl']}"
    )
    return figures


def main() -> None:
    report.command(NAME, run, __doc__, f"{QUICK_ACCOUNTS} accounts and {QUICK_POSITIONS:,} positions")


if __name__ == "__main__":
    main()
