"""`position-pipeline requeue --failed`: put FAILED queue items back to PENDING with their attempts reset, in one
commit, or with --dry-run only say how many and which. A lake without a queue has nothing to requeue and gets none."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING

from position_pipeline.cli.errors import guarded
from position_pipeline.cli.lake_option import open_queue, queue_uri, table_exists
from position_pipeline.cli.output import count, grid, indent, one_line, print_json, say
from position_pipeline.cli.when import when_argument
from position_pipeline.core.status import FailedItem
from position_pipeline.core.time_text import iso, iso_seconds

if TYPE_CHECKING:
    from position_pipeline.cli.parser import Subcommands

_DESCRIPTION = """\
Put queue items back to PENDING so that the sync job claims them again, in one commit.

--failed selects FAILED items: those that used up their attempts (max_attempts) and those waiting out a retry
backoff. It is required: it is the only selector for now. Their attempts restart at 0, their claim and retry time
are cleared, and their last error stays visible until they succeed. An item a run claims meanwhile stays that run's.
"""

_EPILOG = """\
WHEN is an ISO-8601 timestamp or an age back from now:
  2026-11-24T15:00:00Z, 2026-11-24T10:00:00-05:00   a time; without a timezone it is read as UTC
  2026-11-24                                        midnight UTC of that day
  30m, 2h, 1d, 1d12h, 5m07s                         days, hours, minutes, seconds ago (as status prints ages)
An item's failure time is when it last failed.

examples:
  position-pipeline requeue --failed --dry-run    # how many, and the newest with their last errors
  position-pipeline requeue --failed --since 2h   # the items that failed in the last two hours
"""

SHOWN = 5
"""How many of the newest failures a dry run lists."""


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`requeue` on the top-level parser's subcommands, with the shared --lake and --json of `common`."""
    requeue = commands.add_parser(
        "requeue",
        parents=[common],
        help="put FAILED queue items back to PENDING with their attempts reset (--failed [--since WHEN])",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    requeue.add_argument(
        "--failed", action="store_true", required=True, help="select FAILED items (required: the only selector for now)"
    )
    requeue.add_argument(
        "--since",
        metavar="WHEN",
        type=when_argument,
        help="only items that failed at or after WHEN: an ISO-8601 timestamp (naive means UTC) or an age such as "
        "30m, 2h, 1d (default: every FAILED item)",
    )
    requeue.add_argument(
        "--dry-run",
        action="store_true",
        help="print how many items would be requeued and the newest of them with their last errors; write nothing",
    )
    requeue.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Requeue (or with --dry-run list) the FAILED items; exit 0, or 1 with a message when the lake cannot be used."""
    return guarded("requeue", lambda: _requeue_failed(args))


def _requeue_failed(args: argparse.Namespace) -> int:
    uri = queue_uri(args.lake)
    since: datetime | None = args.since
    # A missing table holds nothing to requeue; neither a dry run nor a requeue creates it.
    exists = table_exists(uri)
    queue = open_queue(args.lake)
    which = "" if since is None else f" (failed at or after {iso_seconds(since)})"
    where = uri + ("" if exists else " (no table yet)")
    if not args.dry_run:
        requeued = queue.requeue_failed(since=since) if exists else 0
        if args.json:
            print_json({"table": uri, "exists": exists, "since": iso(since), "dry_run": False, "requeued": requeued})
        else:
            done = ": PENDING again, attempts reset to 0" if requeued else ""
            say(f"Requeued {count(requeued, 'FAILED item')}{which} in {where}{done}")
        return 0

    frame = queue.failed_items(since) if exists else None
    items = [] if frame is None else [FailedItem.from_queue_row(row) for row in frame.iter_rows(named=True)]
    if args.json:
        print_json(
            {
                "table": uri,
                "exists": exists,
                "since": iso(since),
                "dry_run": True,
                "would_requeue": len(items),
                "items": [item.to_json() for item in items],
            }
        )
        return 0
    say(f"Would requeue {count(len(items), 'FAILED item')}{which} in {where}; dry run, nothing written")
    if items:
        say(f"  newest failures first (at most {SHOWN})")
        rows = [
            [
                iso_seconds(item.failed_at),
                str(item.attempts),
                str(item.conid),
                item.symbol,
                one_line(item.error_message),
            ]
            for item in items[:SHOWN]
        ]
        header = ["failed at", "attempts", "conid", "symbol", "last error"]
        say(*indent(grid(header, rows, align="<>><<"), 4))
    return 0
