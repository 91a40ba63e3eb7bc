"""`position-pipeline backfill`: after an IB outage, launch one asset backfill run of the sync assets over the hour
partitions items waited in, through the Dagster instance ($DAGSTER_HOME) the daemon runs on; --wait follows it."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from position_pipeline.cli.errors import guarded
from position_pipeline.cli.lake_option import open_queue
from position_pipeline.cli.number_args import seconds_argument
from position_pipeline.cli.output import PROG, print_json, say
from position_pipeline.cli.when import when_argument

if TYPE_CHECKING:
    from position_pipeline.cli.parser import Subcommands
    from position_pipeline.defs.backfill import BackfillProgress

_DESCRIPTION = """\
Launch an asset backfill of queued_positions -> ib_snapshot -> position_updates over the hour partitions from
--from to --to, as the Dagster UI does: the backfill is stored in the Dagster instance ($DAGSTER_HOME) and the
daemon launches it through the run queue as ONE run (single-run backfill policy) that claims every item queued in
those hours that has not succeeded yet. The sensor keeps running meanwhile; the two never take the same item, and a
second backfill of the same hours adds no rows. IB has no historical positions: rows record positions as of the
backfill (snapshot_at) and keep when each item was queued (queued_at).
"""

_EPILOG = """\
examples:
  position-pipeline backfill --wait                                  # everything still waiting, oldest hour to now
  position-pipeline backfill --from 2026-11-24T08:00 --to 2026-11-24T11:00 --wait
  position-pipeline backfill --from 6h                               # the last six hours; watch it in the UI
Needs a running Dagster daemon (dagster dev, or dagster-daemon run) on the same instance.
"""


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`backfill` on the top-level parser's subcommands, with the shared --lake and --json of `common`."""
    backfill = commands.add_parser(
        "backfill",
        parents=[common],
        help="after an IB outage: one backfill run of the sync assets over the hours items waited in",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    backfill.add_argument(
        "--from",
        dest="start",
        metavar="WHEN",
        type=when_argument,
        help="first hour of the window: a time or an age such as 6h (default: the hour of the oldest claimable item)",
    )
    backfill.add_argument(
        "--to", dest="end", metavar="WHEN", type=when_argument, help="last hour of the window (default: now)"
    )
    backfill.add_argument("--wait", action="store_true", help="print progress until the backfill is done")
    backfill.add_argument(
        "--timeout",
        type=seconds_argument,
        default=1800.0,
        metavar="SECONDS",
        help="with --wait: give up waiting after this long",
    )
    backfill.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Launch the backfill (and with --wait follow it); exit 0 when launched or succeeded, 1 otherwise."""
    return guarded("backfill", lambda: _launch_backfill(args))


def _launch_backfill(args: argparse.Namespace) -> int:
    import dagster as dg

    from position_pipeline.defs.backfill import launch_backfill, wait_for_backfill

    home = os.environ.get("DAGSTER_HOME", "")
    problem = dagster_home_problem(home)
    if problem:
        say(f"{PROG} backfill: {problem}: point it at the Dagster instance the daemon runs on", file=sys.stderr)
        return 1
    queue = open_queue(args.lake)
    now = datetime.now(UTC)
    start = args.start or queue.oldest_claimable_at(None, now=now)
    if start is None:
        print("nothing to backfill: no claimable item in the queue (give --from to backfill a window anyway)")
        return 0
    end = args.end or now
    with dg.DagsterInstance.get() as instance:
        request = launch_backfill(instance, start, end, now=now)
        result: dict[str, Any] = {
            "backfill_id": request.backfill_id,
            "first_partition": request.first_partition,
            "last_partition": request.last_partition,
            "partitions": request.partitions,
            "window": request.window.describe(),
        }
        if not args.json:
            print(
                f"backfill {request.backfill_id}: {request.partitions} hour partitions {request.first_partition} to "
                f"{request.last_partition} ({request.window.describe()}); the daemon launches it as one run"
            )
        if not args.wait:
            if args.json:
                print_json(result)
            return 0
        progress = wait_for_backfill(
            instance, queue, request, timeout_s=args.timeout, report=_ignore if args.json else _print_progress
        )
    result.update(status=progress.status, runs=progress.runs, claimable=progress.claimable)
    if args.json:
        print_json(result)
    if not progress.done:
        print(f"{PROG} backfill: still {progress.status} after {args.timeout:g} s; see it in the UI", file=sys.stderr)
        return 1
    return 0 if progress.succeeded else 1


def dagster_home_problem(home: str) -> str | None:
    """What is wrong with DAGSTER_HOME `home` for opening the instance, or None: Dagster wants an existing folder
    given by its absolute path (it raises DagsterInvariantViolationError otherwise)."""
    if not home.strip():
        return "DAGSTER_HOME is not set"
    if not os.path.isabs(home):
        return f"DAGSTER_HOME {home} is not an absolute path"
    if not os.path.exists(home):
        return f"DAGSTER_HOME {home} does not exist"
    if not os.path.isdir(home):
        return f"DAGSTER_HOME {home} is not a folder"
    return None


def _print_progress(progress: BackfillProgress) -> None:
    print(progress.line(), flush=True)


def _ignore(progress: BackfillProgress) -> None:
    pass
