"""`position-pipeline queue import` and `queue counts`: adopt a queue table in the original design's format, and
count the queue's items by status (reading only: counting a lake without a queue creates none)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from position_pipeline.cli.errors import CommandError, guarded
from position_pipeline.cli.lake_option import open_queue, queue_uri, table_exists
from position_pipeline.cli.output import count, print_json, say, step_printer
from position_pipeline.core.terms import QueueStatus
from position_pipeline.core.time_text import iso

if TYPE_CHECKING:
    from position_pipeline.cli.parser import Subcommands
    from position_pipeline.core.queue.legacy import LegacyPlan

LOST_SHOWN = 20
"""Lost items, and a dry run's new items, the text report names one by one (--json lists them all)."""


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
            "string timestamps) into the lake's position queue, in one commit. Naive times are wall time in "
            "--source-tz, converted to UTC. Items already adopted are skipped, so importing twice adds nothing; "
            "PROCESSING items come back PENDING; FAILED items count one attempt and are retried under the normal "
            "policy (30 s after they failed). Items the original workers deleted and never re-added (a table left "
            "half-written by racing workers) are reported, not adopted. Every row is checked first: one invalid "
            "row and nothing is adopted (exit 1)."
        ),
    )
    import_.add_argument("path", metavar="PATH", help="the original queue table: a folder or an object-store URI")
    import_.add_argument(
        "--source-tz",
        metavar="ZONE",
        help=(
            "IANA time zone the original table's naive times were written in (e.g. America/New_York); default: "
            "this machine's local zone, which is what the original design's datetime.now() wrote when its "
            "workers ran here"
        ),
    )
    import_.add_argument("--dry-run", action="store_true", help="print what would be adopted; write nothing")
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
    """Plan the import (reads only), adopt unless --dry-run, then print what was (or would be) adopted and found."""
    source = args.path
    if not table_exists(source):
        raise CommandError(f"{source} is not a Delta table (no _delta_log found)")
    queue = open_queue(args.lake)  # planning reads the queue only if it exists: a dry run creates nothing
    step = step_printer("queue import", quiet=args.json)
    plan = queue.plan_legacy_import(source, source_tz=args.source_tz, progress=step)
    adopted = None if args.dry_run else queue.adopt_legacy(plan, progress=step)
    report = _import_report(plan, adopted, queue.table_uri)
    if args.json:
        print_json(report)
    else:
        say(*_import_text(report))
    return 0


def _import_report(plan: LegacyPlan, adopted: int | None, table: str) -> dict[str, Any]:
    """The import's figures, as --json prints them; `adopted` None for a dry run."""
    history = plan.history
    return {
        "source": plan.source_uri,
        "table": table,
        "dry_run": adopted is None,
        "adopted": adopted,
        "would_adopt": plan.new.height,
        "already_present": plan.already_present if adopted is None else plan.rows.height - adopted,
        "new_by_status": plan.new_by_status(),
        **({"new_items": _new_items(plan)} if adopted is None else {}),  # a dry run lists them; an import counts
        "source_tz": plan.zone,
        "ambiguous_times": plan.ambiguous_times,
        "nonexistent_times": plan.nonexistent_times,
        "history_checked": history.checked,
        "history_note": history.reason,
        "half_written_versions": list(history.versions),
        "lost": [
            {
                "version": item.version,
                "operation": item.operation,
                "request_id": item.request_id,
                "conid": item.conid,
                "symbol": item.symbol,
                "status": item.status,
                "updated_at": item.updated_at,
            }
            for item in history.lost
        ],
        "unreadable_removed_files": history.unreadable_files,
    }


def _new_items(plan: LegacyPlan) -> list[dict[str, Any]]:
    """What a dry run would adopt, item by item (times in UTC)."""
    return [
        {
            "request_id": row["request_id"],
            "conid": row["conid"],
            "symbol": row["symbol"],
            "account": row["account"],
            "priority": row["priority"],
            "status": row["status"],
            "created_at": iso(row["created_at"]),
            "retry_after": iso(row["retry_after"]),
        }
        for row in plan.new.iter_rows(named=True)
    ]


def _import_text(report: dict[str, Any]) -> list[str]:
    source, table, already = report["source"], report["table"], report["already_present"]
    were = "was" if already == 1 else "were"
    statuses = ", ".join(f"{n} {status}" for status, n in report["new_by_status"].items() if n)
    if report["dry_run"]:
        lines = [
            f"Would adopt {count(report['would_adopt'], 'item')} from {source} into {table}; {already} {were} "
            "already there (dry run: nothing written)"
        ]
    else:
        lines = [
            f"Adopted {count(report['adopted'], 'item')} from {source} into {table}; {already} {were} already there"
        ]
    if statuses:
        lines.append(f"  new items: {statuses}")
    if report["dry_run"]:
        for item in report["new_items"][:LOST_SHOWN]:
            retry = f", retried from {item['retry_after']}" if item["retry_after"] else ""
            lines.append(
                f"    {item['request_id']}  conid {item['conid']} {item['symbol']}  adopted {item['status']}, "
                f"queued {item['created_at']}{retry}"
            )
        if len(report["new_items"]) > LOST_SHOWN:
            lines.append(f"    ... and {len(report['new_items']) - LOST_SHOWN} more (--json lists them all)")
    chosen = [f"{report[k]} {k.split('_')[0]}" for k in ("ambiguous_times", "nonexistent_times") if report[k]]
    lines.append(
        f"  naive times read as {report['source_tz']}"
        + (f" ({', '.join(chosen)}: read with the offset before the clock change)" if chosen else "")
    )
    lost = report["lost"]
    if not report["history_checked"]:
        lines.append(f"  history: {report['history_note']}")
    elif lost:
        versions = ", ".join(str(v) for v in report["half_written_versions"])
        lines.append(
            f"  half-written: {count(len(lost), 'item')} deleted and never re-added by the original workers "
            f"(version {versions}); not adopted, re-enqueue them if they are still wanted:"
        )
        for item in lost[:LOST_SHOWN]:
            lines.append(
                f"    {item['request_id']}  conid {item['conid']} {item['symbol']}  last {item['status']} "
                f"at {item['updated_at']} (deleted in version {item['version']}, {item['operation']})"
            )
        if len(lost) > LOST_SHOWN:
            lines.append(f"    ... and {len(lost) - LOST_SHOWN} more (--json lists them all)")
    else:
        lines.append("  history: no item was deleted without being re-added")
    if report["unreadable_removed_files"]:
        lines.append(
            f"  history: {count(report['unreadable_removed_files'], 'removed file')} no longer on disk (vacuumed): "
            "rows they held could not be checked"
        )
    return lines


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
    say(f"Position queue {uri}" + ("" if exists else " (no table yet)"))
    width = max(len(name) for name in [*by_name, "total"])
    for name, n in [*by_name.items(), ("total", total)]:
        say(f"  {name:<{width}}  {n:>9,}")
    return 0
