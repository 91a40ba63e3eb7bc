"""The read side of the lake: the latest known position of every (account, conid) in position_updates, as of any
moment. `position-pipeline positions` (cli/positions.py) prints it.

How the latest rows are found (`latest_positions`), in two reads of one table version:

1. Which row wins. Every partition with `snapshot_date <= as_of`'s UTC day is scanned, but only its `account`, `conid`
   and `snapshot_at` columns, keeping rows with `snapshot_at <= as_of`, and the greatest `snapshot_at` per
   (account, conid) is taken. Later partitions are never opened. Nothing older is skipped, so a position last
   refreshed months ago is still found: a reader that looked only at the newest days could not know that some
   position's latest row lies further back.
2. The winning rows themselves. All value columns are read, but only from the partitions that hold a winner (usually
   the last day or two), and joined to the winners on (account, conid, snapshot_at).

Both rely on what the sync job writes: `snapshot_date` is the UTC day of `snapshot_at` (sync.position_update_rows),
so a row at or before as_of is never in a later partition and a winner's partition follows from its time. Both reads
use the same DeltaTable, hence the same table version: an append landing between them changes nothing. If one
contract has several rows at the same snapshot_at (enqueued twice into one batch: one IB read), the greatest
request_id wins, so the answer is deterministic.

Polars and deltalake are imported inside the functions, so importing this module (for the command's --help) is
fast.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

    from position_pipeline.core.lake import StorageOptions

KEY = ("account", "conid")
"""One position: an IB account's holding of one contract."""

VALUE_COLUMNS = (
    "account", "conid", "symbol", "sec_type", "right", "strike", "expiry", "multiplier", "currency", "local_symbol",
    "position", "average_cost", "market_price", "market_value", "unrealized_pnl", "realized_pnl",
    "account_update_time", "snapshot_at", "request_id", "run_id", "values_as_of", "base_currency", "fx_rate",
    "market_value_base", "unrealized_pnl_base", "realized_pnl_base", "daily_pnl", "values_from",
)  # fmt: skip
"""The position_updates columns `latest_positions` returns, in this order, followed by `age_seconds` and
`values_age_seconds`."""

AGE = "age_seconds"
"""as_of - snapshot_at: how long ago the row was read."""
VALUES_AGE = "values_age_seconds"
"""snapshot_at - values_as_of: how old IB's values were when they were read (null for rows from before it was kept)."""


def output_schema() -> pl.Schema:
    """The columns of `latest_positions`' frame: VALUE_COLUMNS with the lake's types, then age_seconds (Float64)."""
    import polars as pl

    from position_pipeline.core.lake import POSITION_UPDATES_SCHEMA

    return pl.Schema(
        {**{name: POSITION_UPDATES_SCHEMA[name] for name in VALUE_COLUMNS}, AGE: pl.Float64(), VALUES_AGE: pl.Float64()}
    )


def latest_positions(
    root: str | os.PathLike[str],
    *,
    as_of: datetime | None = None,
    account: str | None = None,
    now: datetime | None = None,
    storage_options: StorageOptions | None = None,
) -> pl.DataFrame:
    """The latest known row of every (account, conid) with snapshot_at <= as_of, sorted by account and conid.

    `as_of` (default `now`, itself defaulting to the current time) must be timezone-aware: a naive datetime raises
    ValueError. `account` keeps one account's positions. Closed positions (position 0) are included: a row is the
    latest known state. `age_seconds` is as_of - snapshot_at. Columns: `output_schema()`. A missing table, or one with
    no rows up to as_of, gives an empty frame with those columns. See the module docstring for how it is read.
    `storage_options` None: those `lake.storage_options_for(root)` gives (AWS_* variables for an s3:// lake).
    """
    import polars as pl

    from position_pipeline.core import lake

    if as_of is not None:
        _aware("as_of", as_of)
    if now is not None:
        _aware("now", now)
    at = (as_of or now or datetime.now(UTC)).astimezone(UTC)
    schema = output_schema()
    uri = lake.table_uri(root, lake.POSITION_UPDATES_TABLE)
    table = lake.open_existing(uri, storage_options)
    if table is None:
        return pl.DataFrame(schema=schema)

    history = lake.with_desk_values(pl.scan_delta(table))  # one table version for both reads
    up_to = (pl.col(lake.POSITION_UPDATES_PARTITION) <= at.date()) & (pl.col("snapshot_at") <= at)
    if account is not None:
        up_to &= pl.col("account") == account
    winners = history.filter(up_to).group_by(KEY).agg(pl.col("snapshot_at").max()).collect()
    if winners.is_empty():
        return pl.DataFrame(schema=schema)

    days = winners.get_column("snapshot_at").dt.date().unique().sort().to_list()
    times = winners.get_column("snapshot_at").unique().sort().to_list()
    rows = (
        history.filter(
            pl.col(lake.POSITION_UPDATES_PARTITION).is_in(days)
            & up_to
            # Decoded first, so the other columns are decoded only for rows at a winning time.
            & pl.col("snapshot_at").is_in(times)
        )
        .select(VALUE_COLUMNS)
        .join(winners.lazy(), on=[*KEY, "snapshot_at"], how="semi")
        .sort("request_id")
        .unique(KEY, keep="last")
        .with_columns(
            _seconds(pl.lit(at) - pl.col("snapshot_at")).alias(AGE),
            _seconds(pl.col("snapshot_at") - pl.col("values_as_of")).alias(VALUES_AGE),
        )
        .sort(KEY)
        .collect()
    )
    return rows.select(schema.names()).cast(schema)


def _seconds(duration: pl.Expr) -> pl.Expr:
    return duration.dt.total_microseconds().truediv(1_000_000).round(6)


def _aware(name: str, value: object) -> datetime:
    """`value` itself when it is a timezone-aware datetime; the error names the argument `name` otherwise."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} must be timezone-aware (e.g. datetime(..., tzinfo=UTC)), got naive {value.isoformat()}: "
            "position_updates stores UTC times"
        )
    return value
