"""`position-pipeline status`: what the queue holds and what the pipeline last wrote, for an operator. Reads only.

`core.status.collect_status` reads the lake; this module registers the command (`--lake URI`, `--json`) and writes
its report. Importing it runs standard-library imports only, so `position-pipeline --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from position_pipeline.cli.errors import UNHEALTHY, guarded
from position_pipeline.cli.lake_option import add_lake_argument, resolve_lake
from position_pipeline.cli.output import add_json_flag, age, count, grid, indent, one_line, say, thousands
from position_pipeline.core.status import (
    RECENT_FAILURES,
    Status,
    TableStats,
    collect_status,
)
from position_pipeline.core.terms import Priority
from position_pipeline.core.time_text import iso_seconds

if TYPE_CHECKING:
    from position_pipeline.cli.parser import Subcommands
    from position_pipeline.core.health import HealthOutcome

_PRIORITY_NAMES = {int(p): p.name.lower() for p in Priority}


def register(commands: Subcommands) -> None:
    """`status` on the top-level parser's subcommands."""
    parser = commands.add_parser(
        "status",
        help="queue depth, oldest pending item, failures, claims per run, last batch, table versions, checks "
        "(exit 3 when one fails)",
        description="What an operator checks first: the queue by status and priority, the age of the oldest "
        "pending and claimable items, failed items by attempts, claims per run, the last batch written, and the "
        "versions and file counts of both tables, and the health checks it can evaluate from the lake (expired "
        "claims, the failed share of the last hour, items waiting while nothing is written). Exit code 3 when one "
        "of them fails, so a probe or cron job can alert on it. --json for machines.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The status command's options: --lake URI and --json (register with `set_defaults(handler=run)`)."""
    add_lake_argument(parser)
    add_json_flag(parser, "the status as one JSON object")


def run(args: argparse.Namespace) -> int:
    """Print the status of the lake `args.lake` (None: $POSITION_LAKE_URI, else ./.lake) and its checks' outcomes:
    0 when every check passed, UNHEALTHY (3) when one failed, 1 with a message when the lake cannot be read."""
    from polars.exceptions import PolarsError

    def report() -> int:
        from position_pipeline.core.health import evaluate_for_status

        status = collect_status(resolve_lake(getattr(args, "lake", None)))
        health = evaluate_for_status(status.root, status.now)
        if getattr(args, "json", False):
            print(json.dumps({**status.to_json(), "health": health_json(health)}))
        else:
            say(*format_text(status), "", *format_health(health))
        return 0 if all(outcome.passed for outcome in health.values()) else UNHEALTHY

    return guarded("status", report, also=(PolarsError,))


def health_json(health: Mapping[str, HealthOutcome]) -> dict[str, dict[str, object]]:
    """Each evaluation by its check's name: passed, severity, description."""
    return {
        name: {"passed": o.passed, "severity": str(o.severity), "description": o.description}
        for name, o in health.items()
    }


def format_health(health: Mapping[str, HealthOutcome]) -> list[str]:
    """The checks' lines: `ok` or `FAILED (severity)` with what each found."""
    lines = [f"checks (exit {UNHEALTHY} when one fails)"]
    rows = [
        [name, "ok" if o.passed else f"FAILED ({o.severity})", one_line(o.description)] for name, o in health.items()
    ]
    return lines + indent(grid(None, rows, align="<<<"))


def format_text(status: Status) -> list[str]:
    """The human-readable report, one string per line."""
    s = status
    lines = [f"Lake {s.root} at {iso_seconds(s.now)}", ""]
    lines.append(_table_title("position_queue", s.queue, "item"))
    priorities = s.priorities
    header = ["status", *(f"{p} {_PRIORITY_NAMES.get(p, '')}".rstrip() for p in priorities), "total"]
    body = [
        [name, *(thousands(row.get(p, 0)) for p in priorities), thousands(sum(row.values()))]
        for name, row in s.depth.items()
    ]
    body.append(["total", *(thousands(n) for n in s.by_priority.values()), thousands(s.total)])
    lines += indent(grid(header, body))
    lines.append("")
    lines += indent(
        grid(
            None,
            [
                ["claimable now", thousands(s.claimable), ""],
                ["oldest PENDING", *_when(s, s.oldest_pending_at)],
                ["oldest claimable", *_when(s, s.oldest_claimable_at)],
            ],
            align="<<<",
        )
    )
    lines.append("")
    if s.failed_by_attempts:
        lines.append(f"  FAILED by attempts (retried while under {s.max_attempts})")
        rows = [[str(a), thousands(n)] for a, n in s.failed_by_attempts.items()]
        lines += indent(grid(["attempts", "items"], rows, align=">>"), 4)
        lines.append(f"  latest failures (newest first, at most {RECENT_FAILURES})")
        rows = [
            [iso_seconds(f.failed_at), str(f.attempts), str(f.conid), f.symbol, one_line(f.error_message)]
            for f in s.recent_failures
        ]
        lines += indent(grid(["failed at", "attempts", "conid", "symbol", "error"], rows, align="<>><<"), 4)
    else:
        lines.append("  FAILED: none")
    if s.processing_by_run:
        lines.append("  PROCESSING by run")
        rows = [[run_id, thousands(n)] for run_id, n in s.processing_by_run.items()]
        lines += indent(grid(["run", "items"], rows, align="<>"), 4)
    else:
        lines.append("  PROCESSING: none")
    if s.queue_changed:
        lines.append(f"  note: the queue changed while it was read (now past version {s.queue.version})")
    lines.append("")
    lines.append(_table_title("position_updates", s.position_updates, "row"))
    batch = s.last_batch
    if batch is None:
        lines.append("  last batch: none yet")
    else:
        lines.append(
            f"  last batch: run {batch.run_id}, {count(batch.rows, 'row')}, snapshot {iso_seconds(batch.snapshot_at)}"
            f" ({age(s.age_s(batch.snapshot_at))} ago)"
        )
        if batch.values_as_of is not None:
            lines.append(
                f"  its oldest values: as of {iso_seconds(batch.values_as_of)} (IB's account update time), "
                f"{age(batch.values_age_s)} old when read"
            )
    return lines


def _table_title(name: str, table: TableStats, what: str) -> str:
    if not table.exists:
        return f"{name} {table.uri}: no table yet"
    return f"{name} {table.uri}: version {table.version}, {count(table.files, 'file')}, {count(table.rows, what)}"


def _when(status: Status, at: datetime | None) -> list[str]:
    if at is None:
        return ["none", ""]
    return [iso_seconds(at), f"{age(status.age_s(at))} ago"]
