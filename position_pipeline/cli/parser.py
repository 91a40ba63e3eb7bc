"""The `position-pipeline` argument parser: one subcommand per module of this package, each registered by its own
`register`. Importing the command modules runs standard-library imports only (each imports polars, deltalake,
Dagster or the queue inside its run function), so building the parser, and `--help`, stay fast.
"""

from __future__ import annotations

import argparse
from typing import TypeAlias

from position_pipeline.cli import backfill, demo, enqueue, positions, queue_commands, requeue, simulate, status
from position_pipeline.cli.lake_option import add_lake_argument
from position_pipeline.cli.output import PROG, add_json_flag

PACKAGE = "position-pipeline"
"""The distribution name in pyproject.toml, whose version `--version` prints."""

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What `add_subparsers` returns: the commands' `register` functions add their parsers to it."""


def build_parser() -> argparse.ArgumentParser:
    """Every command with its flags and help; a parsed command's `handler(args)` runs it and returns the exit code."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Keep a trading desk's record of brokerage positions current in Delta Lake.",
    )
    parser.add_argument("--version", action=_PrintVersion, help="print the installed version and exit")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on a failure, print the Python traceback and delta-rs' own panic output before the one-line error "
        "(as RUST_BACKTRACE=1 does)",
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


def package_version() -> str:
    """The installed package's version (pyproject.toml's), without importing anything heavy."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


class _PrintVersion(argparse.Action):
    """`--version`, looking the version up only when asked (building the parser stays free of metadata reads)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=str(kwargs.get("help", "")))

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"{parser.prog} {package_version()}")
        parser.exit()


def _queue_options() -> argparse.ArgumentParser:
    """The parent parser of every command that touches the queue: --lake and --json."""
    common = argparse.ArgumentParser(add_help=False)
    add_lake_argument(common, "; the queue is its positions/position_queue table")
    add_json_flag(common, "the result as one JSON object")
    return common
