"""`position-pipeline queue import` and `queue counts`: adopt a queue table in the original design's format, and
count the queue's items by status (reading only: counting a lake without a queue creates none)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from position_pipeline.cli.errors import CommandError, guarded
from position_pipeline.cli.lake_option import open_queue, queue_uri, table_exists
from position_pipeline.cli.output import count, print_json, step_printer
from position_pipeline.core.terms import QueueStatus

if TYPE_CHECKING:
    from position_pipeline.cli.parser import Subcommands


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`queue` and its subcommands on the top-level parser, each with the shared --lake and --json of `common`."""
    queue = commands.add_parser(
        "queue",
        help="inspect the position queue or adopt the original design's queue table",
        description="Inspect the lake's position queue, or adopt a queue table in the original design's format.",
    )
    queue_commands = queue.add_subparsers(dest="queue_command", required=True, metavar="QUEUE_COMMAND")
    import_ = queue_commands.add_parser(
        "import",
        parents=[common],
        help="adopt the items of an original-format queue table (idempotent)",
        description=(
            "Adopt every item of a queue table in the original design's format (a Delta table with ISO-8601 "
            "string timestamps, naive ones read as UTC) into the lake's position queue, in one commit. Items "
            "already adopted are skipped, so importing twice adds nothing; PROCESSING items come back PENDING. "
            "Every row is checked first: one invalid row and nothing is adopted (exit 1)."
        ),
    )
    import_.add_argument("path", metavar="PATH", help="the original queue table: a folder or an object-store URI")
    import_.set_defaults(handler=run_import)
    counts = queue_commands.add_parser(
        "counts",
        parents=[common],
        help="print how many items the queue holds in each status",
        description="Print how many items the lake's position queue holds in each status. Reads only.",
    )
    counts.set_defaults(handler=run_counts)


def run_import(args: argparse.Namespace) -> int:
    """`queue import PATH`: exit 0 with what was adopted, 1 when PATH is no Delta table or a row is refused."""
    return guarded("queue import", lambda: _import_legacy(args), source=args.path)


def run_counts(args: argparse.Namespace) -> int:
    """`queue counts`: the number of items in each status, and the total."""
    return guarded("queue counts", lambda: _print_counts(args))


def _import_legacy(args: argparse.Namespace) -> int:
    import polars as pl

    from position_pipeline.core import lake

    source = args.path
    if not table_exists(source):
        raise CommandError(f"{source} is not a Delta table (no _delta_log found)")
    queue = open_queue(args.lake)
    adopted = queue.import_legacy(source, progress=step_printer("queue import", quiet=args.json))
    options = lake.storage_options_for(source)
    total = int(pl.scan_delta(source, storage_options=options).select(pl.len()).collect().item())
    already = max(total - adopted, 0)
    if args.json:
        print_json({"adopted": adopted, "already_present": already, "source": source, "table": queue.table_uri})
    else:
        were = "was" if already == 1 else "were"
        print(f"Adopted {count(adopted, 'item')} from {source} into {queue.table_uri}; {already} {were} already there")
    return 0


def _print_counts(args: argparse.Namespace) -> int:
    uri = queue_uri(args.lake)
    exists = table_exists(uri)
    # A missing table holds nothing; counting must not create it (the queue would on first use).
    counts = open_queue(args.lake).counts() if exists else dict.fromkeys(QueueStatus, 0)
    by_name = {str(status): int(n) for status, n in counts.items()}
    total = sum(by_name.values())
    if args.json:
        print_json({"table": uri, "exists": exists, "counts": by_name, "total": total})
        return 0
    print(f"Position queue {uri}" + ("" if exists else " (no table yet)"))
    width = max(len(name) for name in [*by_name, "total"])
    for name, n in [*by_name.items(), ("total", total)]:
        print(f"  {name:<{width}}  {n:>9,}")
    return 0
