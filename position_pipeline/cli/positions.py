"""`position-pipeline positions`: the latest known position and values of every account and contract as of a time,
as an aligned table, CSV or JSON. `core.positions.latest_positions` reads them; this module parses the flags and
formats the rows. Polars and deltalake are imported when the command runs, so importing it (for --help) is fast.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from position_pipeline.cli.errors import guarded
from position_pipeline.cli.lake_option import add_lake_argument, resolve_lake, table_exists
from position_pipeline.cli.output import add_json_flag, count, grid, printable
from position_pipeline.core.positions import AGE, VALUES_AGE, latest_positions
from position_pipeline.core.time_text import age_text, iso_microseconds, iso_seconds

if TYPE_CHECKING:
    import polars as pl

    from position_pipeline.cli.parser import Subcommands

FORMATS = ("table", "csv", "json")
_EXAMPLE_TIME = "2026-11-24T15:00:00Z"


def register(commands: Subcommands) -> None:
    """`positions` on the top-level parser's subcommands."""
    parser = commands.add_parser(
        "positions",
        help="the latest known position and values of every account and contract, as of a time",
        description="Print the latest known row of position_updates per account and contract as of a time "
        "(now by default), with the age of each value. Reads only the partitions it needs.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


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
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--format", choices=FORMATS, default="table", help="table (aligned columns), csv or json (default: table)"
    )
    add_json_flag(
        output, "the positions (the same as --format json)", action="store_const", const="json", dest="format"
    )
    add_lake_argument(parser, "; positions are read from its positions/position_updates table")


def run(args: argparse.Namespace) -> int:
    """Print the latest positions (exit 0), or a one-line error on stderr when the lake cannot be read (exit 1)."""
    import polars as pl

    as_of = args.as_of if args.as_of is not None else datetime.now(UTC)
    root = ""
    frame = None

    def read() -> int:
        nonlocal frame, root
        root = resolve_lake(args.lake)
        frame = latest_positions(root, as_of=as_of, account=args.account)
        return 0

    code = guarded("positions", read, also=(pl.exceptions.PolarsError,))
    if frame is None:
        return code
    if args.format == "csv":
        text = to_csv(frame)
    elif args.format == "json":
        text = to_json(frame) + "\n"
    else:
        text = _title(root, frame, args.account, as_of) + "\n"
        text += to_table(frame) + "\n" if frame.height else ""
    if args.format != "json":  # JSON escapes control characters itself
        text = "\n".join(printable(line) for line in text.split("\n"))
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


def _title(root: str, frame: pl.DataFrame, account: str | None, as_of: datetime) -> str:
    """The table's first line: how many positions, whose, as of when, from where (and whether the table exists)."""
    from position_pipeline.core import lake

    where = lake.table_uri(root, lake.POSITION_UPDATES_TABLE)
    whose = f" of account {account}" if account is not None else ""
    missing = " (no table yet)" if frame.is_empty() and not _is_table(where) else ""
    return f"{count(frame.height, 'position')}{whose} as of {iso_seconds(as_of)} in {where}{missing}"


def _is_table(uri: str) -> bool:
    try:
        return table_exists(uri)
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
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: in UTC it falls outside years 1 to 9999") from None
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
    ("base_currency", "BASE", str, False),
    ("market_value_base", "VALUE IN BASE", lambda v: _decimal(v, 2, 2), True),
    ("snapshot_at", "SNAPSHOT AT (UTC)", iso_seconds, False),
    (AGE, "AGE", age_text, True),
    (VALUES_AGE, "VALUES AGE", age_text, True),
)


def to_table(frame: pl.DataFrame) -> str:
    """Aligned columns for a person: the contract, its values, when it was read and how long ago; null is blank."""
    header = [header for _, header, _, _ in _TABLE]
    rows = [
        ["" if row[name] is None else show(row[name]) for name, _, show, _ in _TABLE]
        for row in frame.iter_rows(named=True)
    ]
    return "\n".join(grid(header, rows, align="".join(">" if right else "<" for *_, right in _TABLE)))


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


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_microseconds(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
