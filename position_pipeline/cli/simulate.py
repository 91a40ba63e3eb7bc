"""`position-pipeline simulate`: the simulated IB Gateway's own command line (ib_gateway_sim/cli.py), wired in as a
subcommand. The simulator package imports nothing from the rest of the pipeline and nothing heavy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from position_pipeline.ib_gateway_sim import cli as simulator_cli

if TYPE_CHECKING:
    from position_pipeline.cli.parser import Subcommands


def register(commands: Subcommands) -> None:
    """`simulate` on the top-level parser's subcommands."""
    parser = commands.add_parser(
        "simulate",
        help="run the simulated IB Gateway (TWS API protocol on loopback) until Ctrl-C",
        description="Run a simulated IB Gateway that speaks the TWS API socket protocol, until Ctrl-C.",
    )
    simulator_cli.add_arguments(parser)
    parser.set_defaults(handler=simulator_cli.run)
