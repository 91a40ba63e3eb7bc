"""`position-pipeline simulate`: the simulated IB Gateway's own command line (ib_gateway_sim/cli.py), wired in as a
subcommand. The simulator package imports nothing from the rest of the pipeline and nothing heavy.

The simulator answers anyone who connects and holds no secret, but a gateway on every interface is still an open
port: an address other than loopback needs `--allow-remote`, and is then said on stderr.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import TYPE_CHECKING

from position_pipeline.cli.output import PROG
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
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other than loopback (127.0.0.1, ::1, localhost): other machines can then connect",
    )
    parser.set_defaults(handler=run, usage_error=parser.error)


def is_loopback(host: str) -> bool:
    """Whether binding `host` listens on this machine's loopback only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def run(args: argparse.Namespace) -> int:
    """The simulator's own run, once the address is loopback or explicitly allowed (else usage error, exit 2)."""
    if not is_loopback(args.host):
        if not args.allow_remote:
            args.usage_error(
                f"--host {args.host} is not a loopback address: other machines could connect; "
                "add --allow-remote to listen there anyway"
            )
        print(
            f"{PROG} simulate: warning: listening on {args.host}, reachable from other machines (--allow-remote)",
            file=sys.stderr,
        )
    return simulator_cli.run(args)
