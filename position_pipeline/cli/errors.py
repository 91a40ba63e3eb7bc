"""How a command's failures end: refused input and lake failures as a message on stderr and exit code 1, Ctrl-C
as 130. Every command runs its work through `guarded`, so none prints a traceback for an expected failure.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from position_pipeline.cli.output import PROG, print_problems

UNHEALTHY = 3
"""`status`'s exit code when a check it evaluates failed (expired claims, failed share, stale pending items)."""


class CommandError(Exception):
    """A failure the command explains in one line (exit 1)."""


def guarded(
    command: str,
    action: Callable[[], int],
    source: str | None = None,
    also: tuple[type[Exception], ...] = (),
) -> int:
    """Run a command, turning refused input and lake failures into a message on stderr and exit code 1.

    `source` names the file or table the input came from; `also` adds exception types the command reports the same
    way (the read commands add polars' errors).
    """
    from deltalake.exceptions import DeltaError

    from position_pipeline.core.queue import QueueInputError

    reported: tuple[type[Exception], ...] = (CommandError, DeltaError, OSError, ValueError, *also)
    try:
        return action()
    except QueueInputError as exc:
        print_problems(command, exc, source)
    except reported as exc:
        print(f"{PROG} {command}: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG} {command}: interrupted", file=sys.stderr)
        return 130
    return 1
