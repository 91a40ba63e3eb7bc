"""The `position-pipeline` argument parser: one subcommand per module of this package, each registered by its own
`register`. Importing the command modules runs standard-library imports only (each imports polars, deltalake,
Dagster or the queue inside its run function), so building the parser, and `--help`, stay fast.
"""

from __future__ import annotations

import argparse
from typing import TypeAlias

from position_pipeline.cli import backfill, demo, enqueue, positions, queue_commands, requeue, simulate, status
from position_pipeline.cli.lake_option import add_lake_argument
from position_pipeline.cli.output import PROG

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What `add_subparsers` returns: the commands' `register` functions add their parsers to it."""


def build_parser() -> argparse.ArgumentParser:
    """Every command with its flags and help; a parsed command's `handler(args)` runs it and returns the exit code."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Keep a trading desk's record of brokerage positions current in Delta Lake.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    simulate.register(commands)
    demo.register(commands)
    status.register(commands)
    positions.register(commands)
    common = _queue_options()
    enqueue.register(commands, common)
    queue_commands.register(commands, common)
    requeue.register(commands, common)
    backfill.register(commands, common)
    return parser


def _queue_options() -> argparse.ArgumentParser:
    """The parent parser of every command that touches the queue: --lake and --json."""
    common = argparse.ArgumentParser(add_help=False)
    add_lake_argument(common, "; the queue is its positions/position_queue table")
    common.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    return common
