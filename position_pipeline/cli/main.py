"""The position-pipeline command (the `position-pipeline` entry point and `python -m position_pipeline`).

Exit codes: 0 success, 1 refused input or a failure reading or writing the lake (message on stderr, nothing written
by a refused command), 2 usage errors (argparse's convention), 3 `status` found a failed check (cli/errors.py
UNHEALTHY), 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from position_pipeline.cli.errors import set_debug
from position_pipeline.cli.parser import build_parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse `argv` (default: the process's arguments), run the command and exit with its code."""
    args = build_parser().parse_args(argv)
    set_debug(args.debug)
    sys.exit(args.handler(args))
