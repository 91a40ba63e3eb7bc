"""The position-pipeline command. Subcommands import what they need when they run, so `--help` stays fast.

Exit codes: 0 success, 1 refused input or a failure reading or writing the lake (message on stderr, nothing written
by a refused command), 2 usage errors (argparse's convention).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from position_pipeline.cli.lake_option import LAKE_ENV, lake_argument, resolve_lake

if TYPE_CHECKING:
    from position_pipeline.cli.status import FailedItem
    from position_pipeline.core.queue import PositionQueue, QueueInputError
    from position_pipeline.defs.backfill import BackfillProgress

PROG = "position-pipeline"
_PROBLEMS_SHOWN = 20
_ITEM_OPTIONS = ("conid", "symbol", "priority", "account")

_LAKE_HELP = (
    "lake root: a folder or an object-store URI such as s3://bucket/lake; the queue is its positions/position_queue "
    f"table (default: ${LAKE_ENV}, else .lake in the current directory)"
)

_ENQUEUE_EPILOG = """\
examples:
  position-pipeline enqueue --conid 265598 --symbol AAPL
  position-pipeline enqueue --conid 265598 --symbol AAPL --priority 1 --account DU1000001
  position-pipeline enqueue --from-file items.csv

A CSV file has a header naming its columns: conid,symbol and optionally priority and account, e.g.
  conid,symbol,priority,account
  265598,AAPL,1,DU1000001
  272093,MSFT,,
An empty priority means 2 (monitoring), an empty account any configured account. Every row is checked before
anything is written: one invalid row and nothing is queued (exit 1, the row, line and field named on stderr).
"""

_REQUEUE_DESCRIPTION = """\
Put queue items back to PENDING so that the sync job claims them again, in one commit.

--failed selects FAILED items: those that used up their attempts (max_attempts) and those waiting out a retry
backoff. It is required: it is the only selector for now. Their attempts restart at 0, their claim and retry time
are cleared, and their last error stays visible until they succeed. An item a run claims meanwhile stays that run's.
"""

_REQUEUE_EPILOG = """\
WHEN is an ISO-8601 timestamp or an age back from now:
  2026-11-24T15:00:00Z, 2026-11-24T10:00:00-05:00   a time; without a timezone it is read as UTC
  2026-11-24                                        midnight UTC of that day
  30m, 2h, 1d, 1d12h, 5m07s                         days, hours, minutes, seconds ago (as status prints ages)
An item's failure time is when it last failed.

examples:
  position-pipeline requeue --failed --dry-run    # how many, and the newest with their last errors
  position-pipeline requeue --failed --since 2h   # the items that failed in the last two hours
"""
_BACKFILL_DESCRIPTION = """\
Launch an asset backfill of queued_positions -> ib_snapshot -> position_updates over the hour partitions from
--from to --to, as the Dagster UI does: the backfill is stored in the Dagster instance ($DAGSTER_HOME) and the
daemon launches it through the run queue as ONE run (single-run backfill policy) that claims every item queued in
those hours that has not succeeded yet. The sensor keeps running meanwhile; the two never take the same item, and a
second backfill of the same hours adds no rows. IB has no historical positions: rows record positions as of the
backfill (snapshot_at) and keep when each item was queued (queued_at).
"""

_BACKFILL_EPILOG = """\
examples:
  position-pipeline backfill --wait                                  # everything still waiting, oldest hour to now
  position-pipeline backfill --from 2026-11-24T08:00 --to 2026-11-24T11:00 --wait
  position-pipeline backfill --from 6h                               # the last six hours; watch it in the UI
Needs a running Dagster daemon (dagster dev, or dagster-daemon run) on the same instance.
"""
_REQUEUE_SHOWN = 5
_ERROR_WIDTH = 80
_AGE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_SINCE_EXAMPLES = "e.g. 2h, 30m, 1d or 2026-11-24T15:00:00Z"


def build_parser() -> argparse.ArgumentParser:
    from position_pipeline.cli import demo as demo_module
    from position_pipeline.cli import positions as positions_module
    from position_pipeline.cli import status as status_module
    from position_pipeline.ib_gateway_sim import cli as simulator_cli

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Keep a trading desk's record of brokerage positions current in Delta Lake.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    simulate = commands.add_parser(
        "simulate",
        help="run the simulated IB Gateway (TWS API protocol on loopback) until Ctrl-C",
        description="Run a simulated IB Gateway that speaks the TWS API socket protocol, until Ctrl-C.",
    )
    simulator_cli.add_arguments(simulate)
    simulate.set_defaults(handler=simulator_cli.run)

    demo = commands.add_parser(
        "demo",
        help="run the whole pipeline on the simulated gateway: gateway, dagster dev with the sensor, a producer",
        description=(
            "Start the simulated IB Gateway (IB_PORT, default 4002), `dagster dev` with this code location and its "
            "sensor on (DAGSTER_HOME, default ./.dagster_home; lake POSITION_LAKE_URI, default ./.lake) and a "
            "producer; print the UI address. Ctrl-C stops everything it started."
        ),
    )
    demo_module.add_arguments(demo)
    demo.set_defaults(handler=demo_module.run)

    status = commands.add_parser(
        "status",
        help="queue depth, oldest pending item, failures, claims per run, last batch, table versions",
        description="What an operator checks first: the queue by status and priority, the age of the oldest "
        "pending and claimable items, failed items by attempts, claims per run, the last batch written, and the "
        "versions and file counts of both tables. --json for machines.",
    )
    status_module.add_arguments(status)
    status.set_defaults(handler=status_module.run)

    positions = commands.add_parser(
        "positions",
        help="the latest known position and values of every account and contract, as of a time",
        description="Print the latest known row of position_updates per account and contract as of a time "
        "(now by default), with the age of each value. Reads only the partitions it needs.",
    )
    positions_module.add_arguments(positions)
    positions.set_defaults(handler=positions_module.run)

    # Shared by every command that touches the queue.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--lake", metavar="URI", type=lake_argument, help=_LAKE_HELP)
    common.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")

    enqueue = commands.add_parser(
        "enqueue",
        parents=[common],
        help="queue position refreshes: one contract, or every row of a CSV file",
        description="Queue position refresh requests in the lake's position queue, in one commit.",
        epilog=_ENQUEUE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    one = enqueue.add_argument_group("one contract (--conid and --symbol)")
    one.add_argument("--conid", metavar="ID", help="IB contract id, a positive integer (e.g. 265598)")
    one.add_argument("--symbol", help="the contract's symbol (e.g. AAPL)")
    one.add_argument(
        "--priority",
        metavar="N",
        help="1 or active: refreshed first; 2 or monitoring (default: 2)",
    )
    one.add_argument(
        "--account",
        metavar="ACCOUNT",
        help="IB account to read it from (e.g. DU1000001; default: any configured account)",
    )
    many = enqueue.add_argument_group("many contracts (instead of --conid/--symbol)")
    many.add_argument(
        "--from-file",
        metavar="CSV",
        help="CSV file with header conid,symbol[,priority][,account]; all rows in one commit, or none",
    )
    enqueue.set_defaults(handler=_enqueue, usage_error=enqueue.error)

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
    import_.set_defaults(handler=_queue_import)
    counts = queue_commands.add_parser(
        "counts",
        parents=[common],
        help="print how many items the queue holds in each status",
        description="Print how many items the lake's position queue holds in each status. Reads only.",
    )
    counts.set_defaults(handler=_queue_counts)

    requeue = commands.add_parser(
        "requeue",
        parents=[common],
        help="put FAILED queue items back to PENDING with their attempts reset (--failed [--since WHEN])",
        description=_REQUEUE_DESCRIPTION,
        epilog=_REQUEUE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    requeue.add_argument(
        "--failed", action="store_true", required=True, help="select FAILED items (required: the only selector for now)"
    )
    requeue.add_argument(
        "--since",
        metavar="WHEN",
        type=_since_argument,
        help="only items that failed at or after WHEN: an ISO-8601 timestamp (naive means UTC) or an age such as "
        "30m, 2h, 1d (default: every FAILED item)",
    )
    requeue.add_argument(
        "--dry-run",
        action="store_true",
        help="print how many items would be requeued and the newest of them with their last errors; write nothing",
    )
    requeue.set_defaults(handler=_requeue)

    backfill = commands.add_parser(
        "backfill",
        parents=[common],
        help="after an IB outage: one backfill run of the sync assets over the hours items waited in",
        description=_BACKFILL_DESCRIPTION,
        epilog=_BACKFILL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    backfill.add_argument(
        "--from",
        dest="start",
        metavar="WHEN",
        type=_since_argument,
        help="first hour of the window: a time or an age such as 6h (default: the hour of the oldest claimable item)",
    )
    backfill.add_argument(
        "--to", dest="end", metavar="WHEN", type=_since_argument, help="last hour of the window (default: now)"
    )
    backfill.add_argument("--wait", action="store_true", help="print progress until the backfill is done")
    backfill.add_argument(
        "--timeout", type=float, default=1800.0, metavar="SECONDS", help="with --wait: give up waiting after this long"
    )
    backfill.set_defaults(handler=_backfill)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.handler(args))


# Arguments


def _since_argument(text: str) -> datetime:
    """--since WHEN: an age back from now (30m, 2h, 1d12h, 5m07s) or an ISO-8601 timestamp, naive read as UTC."""
    value = text.strip()
    age = _AGE.fullmatch(value.lower())
    if value and age:
        try:
            days, hours, minutes, seconds = (int(part or 0) for part in age.groups())
            return datetime.now(UTC) - timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        except (OverflowError, ValueError):
            raise argparse.ArgumentTypeError(f"age {text!r} reaches back before year 1") from None
    if value[-1:] == "z":
        value = value[:-1] + "Z"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an age or an ISO-8601 timestamp: {text!r} ({_SINCE_EXAMPLES})") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _queue_uri(args: argparse.Namespace) -> str:
    from position_pipeline.core import lake

    return lake.table_uri(resolve_lake(args.lake), lake.QUEUE_TABLE)


def _open_queue(args: argparse.Namespace) -> PositionQueue:
    from position_pipeline.core.queue import PositionQueue

    return PositionQueue(_queue_uri(args))


# Commands


def _enqueue(args: argparse.Namespace) -> int:
    if args.from_file is not None:
        combined = [f"--{name}" for name in _ITEM_OPTIONS if getattr(args, name) is not None]
        if combined:
            args.usage_error(f"--from-file cannot be combined with {', '.join(combined)} (the file gives them per row)")
        return _guarded("enqueue", lambda: _enqueue_file(args), source=args.from_file)
    missing = [f"--{name}" for name in ("conid", "symbol") if getattr(args, name) is None]
    if missing:
        args.usage_error(f"{' and '.join(missing)} required: give --conid and --symbol, or --from-file")
    return _guarded("enqueue", lambda: _enqueue_one(args))


def _enqueue_one(args: argparse.Namespace) -> int:
    problems: list[tuple[str, str]] = []
    conid = _integer_option("conid", args.conid, problems)
    priority = _priority_option(args.priority, problems)
    if problems or conid is None or priority is None:
        raise _input_error(problems)
    queue = _open_queue(args)
    request_id = queue.insert(conid, args.symbol, priority, account=args.account)
    if args.json:
        _print_json({"request_id": request_id, "table": queue.table_uri})
    else:
        what = f"conid {conid} {args.symbol.strip()}, priority {priority}"
        what += f", account {args.account}" if args.account is not None else ""
        print(f"Enqueued request {request_id} ({what}) in {queue.table_uri}")
    return 0


def _enqueue_file(args: argparse.Namespace) -> int:
    path = args.from_file
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise _CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
    queue = _open_queue(args)
    started = time.monotonic()
    try:
        request_ids = queue.enqueue_csv(path, progress=_step_printer("enqueue", args))
    except UnicodeDecodeError as exc:
        raise _CommandError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); nothing written") from exc
    except csv.Error as exc:
        raise _CommandError(f"{path} is not a readable CSV file ({exc}); nothing written") from exc
    elapsed = time.monotonic() - started
    if args.json:
        _print_json({"enqueued": len(request_ids), "request_ids": request_ids, "table": queue.table_uri})
    else:
        print(f"Enqueued {_items(len(request_ids))} from {path} in {queue.table_uri} ({elapsed:.1f} s)")
    return 0


def _queue_import(args: argparse.Namespace) -> int:
    return _guarded("queue import", lambda: _import_legacy(args), source=args.path)


def _import_legacy(args: argparse.Namespace) -> int:
    import polars as pl
    from deltalake import DeltaTable

    from position_pipeline.core import lake

    source = args.path
    options = lake.storage_options_for(source)
    if not DeltaTable.is_deltatable(source, storage_options=options):
        raise _CommandError(f"{source} is not a Delta table (no _delta_log found)")
    queue = _open_queue(args)
    adopted = queue.import_legacy(source, progress=_step_printer("queue import", args))
    total = int(pl.scan_delta(source, storage_options=options).select(pl.len()).collect().item())
    already = max(total - adopted, 0)
    if args.json:
        _print_json({"adopted": adopted, "already_present": already, "source": source, "table": queue.table_uri})
    else:
        were = "was" if already == 1 else "were"
        print(f"Adopted {_items(adopted)} from {source} into {queue.table_uri}; {already} {were} already there")
    return 0


def _queue_counts(args: argparse.Namespace) -> int:
    return _guarded("queue counts", lambda: _print_counts(args))


def _print_counts(args: argparse.Namespace) -> int:
    from deltalake import DeltaTable

    from position_pipeline.core import lake
    from position_pipeline.core.queue import QueueStatus

    uri = _queue_uri(args)
    exists = DeltaTable.is_deltatable(uri, storage_options=lake.storage_options_for(uri))
    # A missing table holds nothing; counting must not create it (the queue would on first use).
    counts = _open_queue(args).counts() if exists else dict.fromkeys(QueueStatus, 0)
    by_name = {str(status): int(n) for status, n in counts.items()}
    total = sum(by_name.values())
    if args.json:
        _print_json({"table": uri, "exists": exists, "counts": by_name, "total": total})
        return 0
    print(f"Position queue {uri}" + ("" if exists else " (no table yet)"))
    width = max(len(name) for name in [*by_name, "total"])
    for name, n in [*by_name.items(), ("total", total)]:
        print(f"  {name:<{width}}  {n:>9,}")
    return 0


def _requeue(args: argparse.Namespace) -> int:
    return _guarded("requeue", lambda: _requeue_failed(args))


def _requeue_failed(args: argparse.Namespace) -> int:
    from deltalake import DeltaTable

    from position_pipeline.core import lake
    from position_pipeline.core.time_text import iso, iso_seconds

    uri = _queue_uri(args)
    since: datetime | None = args.since
    # A missing table holds nothing to requeue; neither a dry run nor a requeue creates it.
    exists = DeltaTable.is_deltatable(uri, storage_options=lake.storage_options_for(uri))
    queue = _open_queue(args)
    which = "" if since is None else f" (failed at or after {iso_seconds(since)})"
    where = uri + ("" if exists else " (no table yet)")
    if not args.dry_run:
        requeued = queue.requeue_failed(since=since) if exists else 0
        if args.json:
            _print_json({"table": uri, "exists": exists, "since": iso(since), "dry_run": False, "requeued": requeued})
        else:
            done = ": PENDING again, attempts reset to 0" if requeued else ""
            print(f"Requeued {_failed_items(requeued)}{which} in {where}{done}")
        return 0

    frame = queue.failed_items(since) if exists else None
    items = [] if frame is None else [_failed_item(row) for row in frame.iter_rows(named=True)]
    if args.json:
        _print_json(
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
    print(f"Would requeue {_failed_items(len(items))}{which} in {where}; dry run, nothing written")
    if items:
        print(f"  newest failures first (at most {_REQUEUE_SHOWN})")
        rows = [["failed at", "attempts", "conid", "symbol", "last error"]]
        for item in items[:_REQUEUE_SHOWN]:
            error = " ".join((item.error_message or "").split())
            error = error if len(error) <= _ERROR_WIDTH else error[: _ERROR_WIDTH - 3] + "..."
            rows.append([iso_seconds(item.failed_at), str(item.attempts), str(item.conid), item.symbol, error])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = [
                cell.rjust(w) if i in (1, 2) else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ]
            print(("    " + "  ".join(cells)).rstrip())
    return 0


def _backfill(args: argparse.Namespace) -> int:
    return _guarded("backfill", lambda: _launch_backfill(args))


def _launch_backfill(args: argparse.Namespace) -> int:
    import os

    import dagster as dg

    from position_pipeline.defs.backfill import launch_backfill, wait_for_backfill

    if not os.environ.get("DAGSTER_HOME"):
        print(
            f"{PROG} backfill: DAGSTER_HOME is not set: point it at the Dagster instance the daemon runs on",
            file=sys.stderr,
        )
        return 1
    queue = _open_queue(args)
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
                _print_json(result)
            return 0
        progress = wait_for_backfill(
            instance, queue, request, timeout_s=args.timeout, report=_ignore if args.json else _print_progress
        )
    result.update(status=progress.status, runs=progress.runs, claimable=progress.claimable)
    if args.json:
        _print_json(result)
    if not progress.done:
        print(f"{PROG} backfill: still {progress.status} after {args.timeout:g} s; see it in the UI", file=sys.stderr)
        return 1
    return 0 if progress.succeeded else 1


def _step_printer(command: str, args: argparse.Namespace) -> Callable[[str], None]:
    """Progress lines of a long command on stderr, with the seconds since it started; none with --json."""
    started = time.monotonic()

    def step(message: str) -> None:
        if not args.json:
            print(f"{PROG} {command}: {time.monotonic() - started:6.1f} s  {message}", file=sys.stderr, flush=True)

    return step


def _print_progress(progress: BackfillProgress) -> None:
    print(progress.line(), flush=True)


def _ignore(progress: BackfillProgress) -> None:
    pass


def _failed_item(row: dict[str, Any]) -> FailedItem:
    """A queue row as status's FailedItem (its failure time is its updated_at)."""
    from position_pipeline.cli.status import FailedItem

    return FailedItem(
        request_id=row["request_id"],
        conid=row["conid"],
        symbol=row["symbol"],
        priority=row["priority"],
        attempts=row["attempts"],
        failed_at=row["updated_at"],
        retry_after=row["retry_after"],
        error_message=row["error_message"],
    )


# Errors and output


class _CommandError(Exception):
    """A failure the command explains in one line (exit 1)."""


def _guarded(command: str, action: Callable[[], int], source: str | None = None) -> int:
    """Run a command, turning refused input and lake failures into a message on stderr and exit code 1."""
    from deltalake.exceptions import DeltaError

    from position_pipeline.core.queue import QueueInputError

    try:
        return action()
    except QueueInputError as exc:
        _print_problems(command, exc, source)
    except (_CommandError, DeltaError, OSError, ValueError) as exc:
        print(f"{PROG} {command}: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG} {command}: interrupted", file=sys.stderr)
        return 130
    return 1


def _print_problems(command: str, exc: QueueInputError, source: str | None) -> None:
    """Every refused field on its own line; an option's problem names the option, a file's its row and line."""
    where = f" in {source}" if source else ""
    lines = [f"{PROG} {command}: invalid input{where}, nothing written:"]
    for problem in exc.problems[:_PROBLEMS_SHOWN]:
        if source is None and problem.field in _ITEM_OPTIONS:
            lines.append(f"  --{problem.field}: {problem.problem}")
        else:
            lines.append(f"  {problem}")
    if len(exc.problems) > _PROBLEMS_SHOWN:
        lines.append(f"  ... and {len(exc.problems) - _PROBLEMS_SHOWN} more")
    print("\n".join(lines), file=sys.stderr)


def _integer_option(field: str, text: str, problems: list[tuple[str, str]]) -> int | None:
    """An option's integer, or None with the problem recorded; range checks are the queue's."""
    try:
        return int(text.strip())
    except ValueError:
        problems.append((field, f"must be an integer, got {text!r}"))
        return None


def _priority_option(text: str | None, problems: list[tuple[str, str]]) -> int | None:
    """1, 2, or a Priority name (active, monitoring); None means monitoring. The queue refuses other numbers."""
    from position_pipeline.core.queue import Priority

    if text is None:
        return int(Priority.MONITORING)
    name = text.strip().upper()
    if name in Priority.__members__:
        return int(Priority[name])
    try:
        return int(text.strip())
    except ValueError:
        names = " or ".join(f"{int(p)} ({p.name.lower()})" for p in Priority)
        problems.append(("priority", f"must be {names}, got {text!r}"))
        return None


def _input_error(problems: Sequence[tuple[str, str]]) -> QueueInputError:
    """The queue's own error for options refused before the queue sees them (one item: row 0)."""
    from position_pipeline.core.queue import InputProblem, QueueInputError

    return QueueInputError([InputProblem(0, field, problem) for field, problem in problems])


def _items(n: int) -> str:
    return f"{n:,} item" + ("" if n == 1 else "s")


def _failed_items(n: int) -> str:
    return f"{n:,} FAILED item" + ("" if n == 1 else "s")


def _print_json(value: dict[str, Any]) -> None:
    print(json.dumps(value, indent=None, sort_keys=False))
