"""`position-pipeline enqueue`: queue position refreshes, one contract from options or every row of a CSV file, in
one commit. Every value is checked before anything is written; the queue does the checking (the options' integers
are parsed here so that their problems name the option)."""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from position_pipeline.cli.errors import CommandError, guarded
from position_pipeline.cli.lake_option import open_queue
from position_pipeline.cli.output import ITEM_OPTIONS, count, print_json, say, step_printer
from position_pipeline.core.terms import Priority
from position_pipeline.core.text_input import parse_ascii_int

if TYPE_CHECKING:
    from position_pipeline.cli.parser import Subcommands
    from position_pipeline.core.queue import QueueInputError

_EPILOG = """\
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


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """`enqueue` on the top-level parser's subcommands, with the shared --lake and --json of `common`."""
    enqueue = commands.add_parser(
        "enqueue",
        parents=[common],
        help="queue position refreshes: one contract, or every row of a CSV file",
        description="Queue position refresh requests in the lake's position queue, in one commit.",
        epilog=_EPILOG,
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
    enqueue.set_defaults(handler=run, usage_error=enqueue.error)


def run(args: argparse.Namespace) -> int:
    """One contract from --conid/--symbol or every row of --from-file; mixing the two is a usage error (exit 2)."""
    if args.from_file is not None:
        combined = [f"--{name}" for name in ITEM_OPTIONS if getattr(args, name) is not None]
        if combined:
            args.usage_error(f"--from-file cannot be combined with {', '.join(combined)} (the file gives them per row)")
        return guarded("enqueue", lambda: _enqueue_file(args), source=args.from_file)
    missing = [f"--{name}" for name in ("conid", "symbol") if getattr(args, name) is None]
    if missing:
        args.usage_error(f"{' and '.join(missing)} required: give --conid and --symbol, or --from-file")
    return guarded("enqueue", lambda: _enqueue_one(args))


def _enqueue_one(args: argparse.Namespace) -> int:
    problems: list[tuple[str, str]] = []
    conid = _integer_option("conid", args.conid, problems)
    priority = _priority_option(args.priority, problems)
    if problems or conid is None or priority is None:
        raise _input_error(problems)
    queue = open_queue(args.lake)
    request_id = queue.insert(conid, args.symbol, priority, account=args.account)
    if args.json:
        print_json({"request_id": request_id, "table": queue.table_uri})
    else:
        what = f"conid {conid} {args.symbol.strip()}, priority {priority}"
        what += f", account {args.account}" if args.account is not None else ""
        say(f"Enqueued request {request_id} ({what}) in {queue.table_uri}")
    return 0


def _enqueue_file(args: argparse.Namespace) -> int:
    from position_pipeline.core.queue.inputs import check_regular_file

    path = args.from_file
    try:
        check_regular_file(path)  # before any open(): a FIFO would block it
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
    queue = open_queue(args.lake)
    started = time.monotonic()
    try:
        request_ids = queue.enqueue_csv(path, progress=step_printer("enqueue", quiet=args.json))
    except UnicodeDecodeError as exc:
        raise CommandError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); nothing written") from exc
    except csv.Error as exc:
        raise CommandError(f"{path} is not a readable CSV file ({exc}); nothing written") from exc
    elapsed = time.monotonic() - started
    if args.json:
        print_json({"enqueued": len(request_ids), "request_ids": request_ids, "table": queue.table_uri})
    else:
        say(f"Enqueued {count(len(request_ids), 'item')} from {path} in {queue.table_uri} ({elapsed:.1f} s)")
    return 0


def _integer_option(field: str, text: str, problems: list[tuple[str, str]]) -> int | None:
    """An option's integer, or None with the problem recorded; the CSV cells' parser, range checks the queue's."""
    try:
        return parse_ascii_int(text)
    except ValueError as exc:
        problems.append((field, str(exc)))
        return None


def _priority_option(text: str | None, problems: list[tuple[str, str]]) -> int | None:
    """1, 2, or a Priority name (active, monitoring); None means monitoring. The queue refuses other numbers."""
    if text is None:
        return int(Priority.MONITORING)
    name = text.strip().upper()
    if name in Priority.__members__:
        return int(Priority[name])
    try:
        return parse_ascii_int(text)
    except ValueError:
        names = " or ".join(f"{int(p)} ({p.name.lower()})" for p in Priority)
        problems.append(("priority", f"must be {names}, got {text!r}"))
        return None


def _input_error(problems: Sequence[tuple[str, str]]) -> QueueInputError:
    """The queue's own error for options refused before the queue sees them (one item: row 0)."""
    from position_pipeline.core.queue import InputProblem, QueueInputError

    return QueueInputError([InputProblem(0, field, problem) for field, problem in problems])
