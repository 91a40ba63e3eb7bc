"""Reading the latest positions from a long position history: `latest_positions` on 1,000,000 rows over 180 days.

Run: `python -m benchmarks.positions_read [--repeat 5] [--commits-per-day 1] [--json FILE]` (or as part of
`python -m benchmarks all`, which uses the defaults). Target: well under 2 s.

The history is 2,000 contracts (stocks, options, futures) held in 3 accounts: 6,000 positions. Each day's rows come
in batches of 50 sharing one snapshot time, like the sync job's, and each day is appended in `--commits-per-day`
commits (one file each), so the table has 180 partitions. 60 positions were refreshed only in the first week and
never again: a reader that looked back only a few days would miss them. Before anything is timed, each result is
checked against a full scan of the history (every column of every partition, last row per position).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import DeltaTable, write_deltalake

from position_pipeline.core import lake
from position_pipeline.core.positions import latest_positions, output_schema

ACCOUNTS = ("DU1000001", "DU1000002", "DU1000003")
FIRST_DAY = date(2026, 5, 1)
OPEN = clock(13, 30)  # UTC
BATCH = 50  # rows per sync batch: one snapshot time
BATCH_SECONDS = 200  # between batches; 112 batches a day fit in a 6.5 h session
STALE_EVERY = 100  # every 100th position is refreshed only in the first week
STALE_DAYS = 7


def history(*, rows: int, contracts: int, days: int, seed: int = 1) -> pl.DataFrame:
    """`rows` position_updates rows over `days` days, as the sync job writes them (POSITION_UPDATES_SCHEMA)."""
    rng = random.Random(seed)
    keys = len(ACCOUNTS) * contracts
    active = [k for k in range(keys) if k % STALE_EVERY]
    base, extra = divmod(rows, days)
    if base + 1 > len(active):
        raise ValueError(f"{rows:,} rows over {days} days is more than one row per position per day")
    chosen: list[int] = []
    day_of: list[int] = []
    for day in range(days):
        n = base + (day < extra)
        chosen += rng.sample(range(keys) if day < STALE_DAYS else active, n)
        day_of += [day] * n
    frame = pl.DataFrame({"key": chosen, "day": day_of}, schema={"key": pl.Int64, "day": pl.Int32})
    contract, kind = pl.col("key") % contracts, pl.col("key") % contracts % 10
    stock, option = kind < 6, (kind >= 6) & (kind < 9)
    multiplier = pl.when(stock).then(None).when(option).then(100.0).otherwise(50.0)
    opened = datetime.combine(FIRST_DAY, OPEN, tzinfo=UTC)
    frame = (
        frame.with_columns(seq=pl.int_range(pl.len()).over("day"))
        .with_columns(
            snapshot_at=pl.lit(opened)
            + pl.duration(days=pl.col("day"))
            + pl.duration(seconds=pl.col("seq") // BATCH * BATCH_SECONDS),
            account=pl.lit(pl.Series(ACCOUNTS)).get(pl.col("key") // contracts),
            conid=100_000 + contract,
            symbol=pl.format("SYM{}", contract.cast(pl.String).str.zfill(4)),
            sec_type=pl.when(stock).then(pl.lit("STK")).when(option).then(pl.lit("OPT")).otherwise(pl.lit("FUT")),
            right=pl.when(option).then(pl.when(contract % 2 == 0).then(pl.lit("C")).otherwise(pl.lit("P"))),
            strike=pl.when(option).then(50.0 + (contract % 40) * 5.0),
            expiry=pl.when(option).then(pl.lit("20270115")).when(~stock).then(pl.lit("20261218")),
            multiplier=multiplier,
            # Some days a position is flat: a closed position is a row with quantity 0.
            position=((pl.col("key") * 7 + pl.col("day")) % 200 - 20).cast(pl.Float64),
            average_cost=100.0 + (contract % 50),
            price=100.0 + (contract % 50) + ((pl.col("day") * 13 + pl.col("key")) % 21 - 10) * 0.5,
            unit=multiplier.fill_null(1.0),
            request_id=pl.Series([str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(rows)]),
            run_id=pl.format("run-{}-{}", pl.col("day"), pl.col("seq") // BATCH),
        )
        .with_columns(
            local_symbol=pl.when(option)
            .then(pl.format("{} {}{}", pl.col("symbol"), pl.col("right"), pl.col("strike")))
            .otherwise(pl.col("symbol")),
            currency=pl.lit("USD"),
            market_price=pl.col("price"),
            market_value=pl.col("position") * pl.col("price") * pl.col("unit"),
            unrealized_pnl=pl.col("position") * (pl.col("price") - pl.col("average_cost")) * pl.col("unit"),
            realized_pnl=pl.lit(0.0),
            account_update_time=pl.col("snapshot_at").dt.strftime("%H:%M"),
            queued_at=pl.col("snapshot_at") - pl.duration(seconds=3),
            snapshot_date=pl.col("snapshot_at").dt.date(),
        )
    )
    frame = lake.with_desk_values(frame.lazy()).collect()  # null desk values, as rows from before those columns
    return frame.select(lake.POSITION_UPDATES_SCHEMA.names()).cast(lake.POSITION_UPDATES_SCHEMA)


def write_history(root: str, rows: pl.DataFrame, commits_per_day: int) -> str:
    """Append `rows` to a new position_updates table under `root`: each day in `commits_per_day` commits."""
    uri = lake.ensure_position_updates_table(root)
    for (_,), day in rows.group_by("snapshot_date", maintain_order=True):
        size = -(-day.height // commits_per_day)
        for start in range(0, day.height, size):
            chunk = day.slice(start, size).to_arrow().cast(lake.POSITION_UPDATES_ARROW_SCHEMA)
            write_deltalake(uri, chunk, mode="append")
    return uri


def reference(rows: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    """The answer by brute force: every row up to as_of, the last one per (account, conid)."""
    return (
        rows.filter(pl.col("snapshot_at") <= as_of)
        .sort("snapshot_at", "request_id")
        .unique(["account", "conid"], keep="last")
        .with_columns(age_seconds=(pl.lit(as_of) - pl.col("snapshot_at")).dt.total_microseconds() / 1e6)
        .select(output_schema().names())
        .sort("account", "conid")
    )


def full_scan(uri: str, as_of: datetime) -> pl.DataFrame:
    """What a reader without pruning does: read every column of every partition, keep the last row per position."""
    return reference(pl.read_delta(uri), as_of)


def _seconds(action: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times


def measure(*, rows: int, contracts: int, days: int, commits_per_day: int, repeat: int) -> dict[str, Any]:
    """Build the history in a temporary lake, check and time the reads; returns the figures."""
    return _measure(
        argparse.Namespace(rows=rows, contracts=contracts, days=days, commits_per_day=commits_per_day, repeat=repeat)
    )


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """For `python -m benchmarks`: the default history (quick: 200,000 rows, 3 repeats); prints a table."""
    from benchmarks import report

    figures = measure(
        rows=200_000 if quick else 1_000_000, contracts=2_000, days=180, commits_per_day=1, repeat=3 if quick else 5
    )
    print(report.table("Read side: latest_positions", ["figure", "value"], list(figures.items())))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--contracts", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--commits-per-day", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = _measure(args)
    print(f"{'figure':<34} {'value':>12}")
    for name, value in figures.items():
        print(f"{name:<34} {value:>12}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="positions-read-") as root:
        start = time.perf_counter()
        rows = history(rows=args.rows, contracts=args.contracts, days=args.days)
        uri = write_history(root, rows, args.commits_per_day)
        built = time.perf_counter() - start
        table = DeltaTable(uri)
        last_day = FIRST_DAY + timedelta(days=args.days - 1)
        now = datetime.combine(last_day, clock(21, 0), tzinfo=UTC)
        # Mid-session on the middle day: some positions were refreshed that day, the rest earlier.
        middle = datetime.combine(FIRST_DAY + timedelta(days=args.days // 2), clock(16, 0), tzinfo=UTC)
        # "now" leaves as_of to its default (the given now), as the command does.
        reads: dict[str, tuple[datetime, Callable[[], pl.DataFrame]]] = {
            "now": (now, lambda: latest_positions(root, now=now)),
            "middle": (middle, lambda: latest_positions(root, as_of=middle)),
        }

        figures: dict[str, Any] = {
            "rows": rows.height,
            "positions": rows.select("account", "conid").n_unique(),
            "partitions": rows["snapshot_date"].n_unique(),
            "files": len(table.file_uris()),
            "commits": table.version(),
            "build_s": round(built, 1),
        }
        for name, (as_of, read) in reads.items():
            start = time.perf_counter()
            found = read()
            first = time.perf_counter() - start
            if not found.equals(reference(rows, as_of)):
                raise SystemExit(f"latest_positions as of {as_of} differs from the full scan")
            times = _seconds(read, args.repeat)
            winning_days = found["snapshot_at"].dt.date()
            figures |= {
                f"{name}_positions": found.height,
                f"{name}_from_first_week": int((winning_days < FIRST_DAY + timedelta(days=STALE_DAYS)).sum()),
                f"{name}_key_scan_partitions": int((rows["snapshot_date"].unique() <= as_of.date()).sum()),
                f"{name}_full_row_partitions": winning_days.n_unique(),
                f"{name}_first_call_s": round(first, 3),
                f"{name}_median_s": round(statistics.median(times), 3),
                f"{name}_max_s": round(max(times), 3),
            }
        figures["full_scan_now_median_s"] = round(statistics.median(_seconds(lambda: full_scan(uri, now), 3)), 3)

        # Pruning, shown rather than assumed: with every partition after the middle day's deleted, the middle
        # answer is still read (those files are never opened), and the same.
        expected = latest_positions(root, as_of=middle)
        for folder in Path(uri).glob(f"{lake.POSITION_UPDATES_PARTITION}=*"):
            if folder.name.split("=", 1)[1] > middle.date().isoformat():
                shutil.rmtree(folder)
        figures["middle_with_later_partitions_deleted"] = (
            "same" if latest_positions(root, as_of=middle).equals(expected) else "DIFFERENT"
        )
        figures["target_s"] = 2.0
    return figures


if __name__ == "__main__":
    main()
