"""The position-pipeline command. Subcommands import what they need when they run, so `--help` stays fast."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from .ib_gateway_sim import cli as simulator_cli

    parser = argparse.ArgumentParser(
        prog="position-pipeline",
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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.handler(args))
