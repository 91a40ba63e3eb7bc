"""The read side of the lake: the latest known position of every (account, conid) in position_updates, as of any
moment, and the `positions` command that prints it.

How the latest rows are found (`latest_positions`), in two reads of one table version:

1. Which row wins. Every partition with `snapshot_date <= as_of`'s UTC day is scanned, but only its `account`, `conid`
   and `snapshot_at` columns, keeping rows with `snapshot_at <= as_of`, and the greatest `snapshot_at` per
   (account, conid) is taken. Later partitions are never opened. Nothing older is skipped, so a position last
   refreshed months ago is still found: a reader that looked only at the newest days could not know that some
   position's latest row lies further back.
2. The winning rows themselves. All value columns are read, but only from the partitions that hold a winner (usually
   the last day or two), and joined to the winners on (account, conid, snapshot_at).

Both rely on what the sync job writes: `snapshot_date` is the UTC day of `snapshot_at` (snapshot.position_update_rows),
so a row at or before as_of is never in a later partition and a winner's partition follows from its time. Both reads
use the same DeltaTable, hence the same table version: an append landing between them changes nothing. If one
contract has several rows at the same snapshot_at (enqueued twice into one batch: one IB read), the greatest
request_id wins, so the answer is deterministic.

Polars and deltalake are imported inside the functions, so importing this module (for the command's --help) is
fast.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from position_pipeline.cli.lake_option import lake_argument, resolve_lake

if TYPE_CHECKING:
    import polars as pl

    from position_pipeline.core.lake import StorageOptions

KEY = ("account", "conid")
"""One position: an IB account's holding of one contract."""

VALUE_COLUMNS = (
    "account", "conid", "symbol", "sec_type", "right", "strike", "expiry", "multiplier", "currency", "local_symbol",
    "position", "average_cost", "market_price", "market_value", "unrealized_pnl", "realized_pnl",
    "account_update_time", "snapshot_at", "request_id", "run_id",
)  # fmt: skip
"""The position_updates columns `latest_positions` returns, in this order, followed by `age_seconds`."""

AGE = "age_seconds"
FORMATS = ("table", "csv", "json")
_EXAMPLE_TIME = "2026-11-24T15:00:00Z"
_PROG = "position-pipeline positions"


def output_schema() -> pl.Schema:
    """The columns of `latest_positions`' frame: VALUE_COLUMNS with the lake's types, then age_seconds (Float64)."""
    import polars as pl

    from position_pipeline.core.lake import POSITION_UPDATES_SCHEMA

    return pl.Schema({**{name: POSITION_UPDATES_SCHEMA[name] for name in VALUE_COLUMNS}, AGE: pl.Float64()})


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

    history = pl.scan_delta(table)  # one table version for both reads
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
            (pl.lit(at) - pl.col("snapshot_at")).dt.total_microseconds().truediv(1_000_000).round(6).alias(AGE)
        )
        .sort(KEY)
        .collect()
    )
    return rows.select(schema.names()).cast(schema)


def _aware(name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} must be timezone-aware (e.g. datetime(..., tzinfo=UTC)), got naive {value.isoformat()}: "
            "position_updates stores UTC times"
        )
    return value


# The command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `positions`: which positions, as of when, from which lake, printed how."""
    parser.add_argument(
        "--account", metavar="ACCOUNT", type=_account, help="only this IB account's positions (e.g. DU1000001)"
    )
    parser.add_argument(
        "--as-of",
        metavar="TIMESTAMP",
        type=_timestamp,
        help=f"the positions known at this moment, ISO-8601 with a timezone (e.g. {_EXAMPLE_TIME}; default: now)",
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="table", help="table (aligned columns), csv or json (default: table)"
    )
    parser.add_argument(
        "--lake",
        metavar="URI",
        type=lake_argument,
        help=(
            "lake root: a folder or an object-store URI such as s3://bucket/lake; positions are read from its "
            "positions/position_updates table (default: $POSITION_LAKE_URI, else .lake in the current directory)"
        ),
    )
    parser.set_defaults(positions_prog=parser.prog)


def run(args: argparse.Namespace) -> int:
    """Print the latest positions (exit 0), or a one-line error on stderr when the lake cannot be read (exit 1)."""
    import polars as pl
    from deltalake.exceptions import DeltaError

    from position_pipeline.core import lake

    prog = getattr(args, "positions_prog", _PROG)
    root = resolve_lake(args.lake)
    as_of = args.as_of if args.as_of is not None else datetime.now(UTC)
    try:
        frame = latest_positions(root, as_of=as_of, account=args.account)
    except (DeltaError, OSError, ValueError, pl.exceptions.PolarsError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    if args.format == "csv":
        text = to_csv(frame)
    elif args.format == "json":
        text = to_json(frame) + "\n"
    else:
        where = lake.table_uri(root, lake.POSITION_UPDATES_TABLE)
        account = f" of account {args.account}" if args.account is not None else ""
        count = f"{frame.height:,} position" + ("" if frame.height == 1 else "s")
        missing = " (no table yet)" if frame.is_empty() and not _is_table(where) else ""
        text = f"{count}{account} as of {_iso(as_of, 'seconds')} in {where}{missing}\n"
        text += to_table(frame) + "\n" if frame.height else ""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


def _is_table(uri: str) -> bool:
    from deltalake import DeltaTable

    from position_pipeline.core import lake

    try:
        return DeltaTable.is_deltatable(uri, storage_options=lake.storage_options_for(uri))
    except Exception:  # only decorates the message; the read itself already succeeded
        return True


def _timestamp(text: str) -> datetime:
    """--as-of: ISO-8601 with a timezone (Z or an offset); argparse names the flag in the message."""
    value = text.strip()
    if value[-1:] in ("z", "Z"):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 timestamp: {text!r} (e.g. {_EXAMPLE_TIME})") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no timezone; add Z or an offset (e.g. {_EXAMPLE_TIME} or 2026-11-24T10:00:00-05:00)"
        )
    return moment


def _account(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text.strip()


# Output


def records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """The rows as plain values for CSV and JSON: timestamps as ISO-8601 UTC text, NaN and infinities as None."""
    out = []
    for row in frame.iter_rows(named=True):
        out.append({name: _plain(value) for name, value in row.items()})
    return out


def to_csv(frame: pl.DataFrame) -> str:
    """CSV with a header of every column; null is an empty field."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=frame.columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records(frame))
    return buffer.getvalue()


def to_json(frame: pl.DataFrame) -> str:
    """A JSON list with one object per position, every column a key."""
    import json

    return json.dumps(records(frame), allow_nan=False)


_TABLE: Sequence[tuple[str, str, Callable[[Any], str], bool]] = (
    # column, header, format, right-aligned
    ("account", "ACCOUNT", str, False),
    ("conid", "CONID", str, True),
    ("symbol", "SYMBOL", str, False),
    ("sec_type", "TYPE", str, False),
    ("right", "RIGHT", str, False),
    ("strike", "STRIKE", lambda v: _decimal(v, 2, 4), True),
    ("expiry", "EXPIRY", str, False),
    ("currency", "CCY", str, False),
    ("position", "POSITION", lambda v: _decimal(v, 0, 6), True),
    ("average_cost", "AVG COST", lambda v: _decimal(v, 2, 4), True),
    ("market_price", "PRICE", lambda v: _decimal(v, 2, 4), True),
    ("market_value", "VALUE", lambda v: _decimal(v, 2, 2), True),
    ("unrealized_pnl", "UNREALIZED", lambda v: _decimal(v, 2, 2), True),
    ("realized_pnl", "REALIZED", lambda v: _decimal(v, 2, 2), True),
    ("snapshot_at", "SNAPSHOT AT (UTC)", lambda v: _iso(v, "seconds"), False),
    (AGE, "AGE", lambda v: age_text(v), True),
)


def to_table(frame: pl.DataFrame) -> str:
    """Aligned columns for a person: the contract, its values, when it was read and how long ago; null is blank."""
    rows = [[header for _, header, _, _ in _TABLE]]
    for row in frame.iter_rows(named=True):
        rows.append(["" if row[name] is None else show(row[name]) for name, _, show, _ in _TABLE])
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(_TABLE))]
    lines = []
    for cells in rows:
        padded = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, (_, _, _, right) in zip(cells, widths, _TABLE, strict=True)
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def age_text(seconds: float) -> str:
    """A compact age: 42s, 5m07s, 3h02m, 12d04h."""
    whole = max(int(seconds), 0)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _decimal(value: float, least: int, most: int) -> str:
    """Thousands separators and between `least` and `most` decimals (trailing zeros beyond `least` dropped)."""
    if not math.isfinite(value):
        return str(value)
    text = f"{value:,.{most}f}"
    if most > least:
        whole, _, fraction = text.partition(".")
        fraction = fraction.rstrip("0").ljust(least, "0")
        text = f"{whole}.{fraction}" if fraction else whole
    return text


def _iso(moment: datetime, timespec: str = "microseconds") -> str:
    """ISO-8601 in UTC with a Z: 2026-11-24T15:00:00.000000Z."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
