"""How every `position-pipeline` command writes: JSON on stdout, counted nouns, aligned grids, one-line messages,
ages, progress lines and refused input on stderr. Written once here so that the commands print alike.

Text for a person goes out through `say` (and grids and messages through `printable`), so a value read from the
lake never reaches the terminal with a control character in it; JSON escapes them itself.

Standard library only (the queue's error type is imported for type checking alone), so the parser stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from position_pipeline.core.text_input import printable
from position_pipeline.core.time_text import age_text

if TYPE_CHECKING:
    from position_pipeline.core.queue import QueueInputError

PROG = "position-pipeline"

ITEM_OPTIONS = ("conid", "symbol", "priority", "account")
"""The queue item fields that `enqueue` also takes as options (--conid, ...): a problem with one names the option."""

PROBLEMS_SHOWN = 20
"""How many refused fields a command lists before saying how many more there are."""

MESSAGE_WIDTH = 80
"""Longest error message in text output (JSON carries the whole message)."""


def say(*lines: str, file: Any = None) -> None:
    """Print each line for a person, through `printable`: control characters in values show escaped (\\x1b)."""
    print("\n".join(printable(line) for line in lines), file=file)


JSON_FLAG = "--json"
"""Every command's machine-readable output option (`positions` takes it as its alias of `--format json`)."""


def add_json_flag(parser: argparse._ActionsContainer, what: str = "the result", **options: Any) -> None:
    """The one output option of every command: `--json`, printing `what` as JSON on stdout (`options` override the
    argparse action, as `positions` does to make it `--format json`)."""
    parser.add_argument(JSON_FLAG, help=f"print {what} as JSON on stdout", **({"action": "store_true"} | options))


def print_json(value: dict[str, Any]) -> None:
    """`value` as one JSON object on one line of stdout."""
    print(json.dumps(value, indent=None, sort_keys=False))


def thousands(value: int) -> str:
    """An integer with thousands separators: 12,345."""
    return f"{value:,}"


def count(n: int, noun: str) -> str:
    """`n` with its noun, plural unless one: 1 item, 2 items, 1,000 FAILED items."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def grid(header: Sequence[str] | None, rows: Sequence[Sequence[str]], align: str | None = None) -> list[str]:
    """Aligned columns two spaces apart; `align` is one of < or > per column (default: first left, rest right)."""
    table = [[printable(cell) for cell in row] for row in ([header, *rows] if header is not None else rows)]
    if not table:
        return []
    columns = len(table[0])
    align = align or "<" + ">" * (columns - 1)
    widths = [max(len(r[i]) for r in table) for i in range(columns)]
    lines = []
    for r in table:
        cells = [f"{cell:{align[i]}{widths[i]}}" for i, cell in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
    return lines


def indent(lines: list[str], spaces: int = 2) -> list[str]:
    return [" " * spaces + line for line in lines]


def one_line(message: str | None) -> str:
    """A message on one line (runs of whitespace, newlines included, become one space), cut at MESSAGE_WIDTH."""
    text = printable(" ".join((message or "").split()))
    return text if len(text) <= MESSAGE_WIDTH else text[: MESSAGE_WIDTH - 3] + "..."


def age(seconds: float | None) -> str:
    """A compact duration (see `time_text.age_text`); negative (a clock ahead of ours) is said so; None is -."""
    if seconds is None:
        return "-"
    if seconds < 0:
        return f"-{age_text(-seconds)} (clock skew)"
    return age_text(seconds)


def step_printer(command: str, *, quiet: bool) -> Callable[[str], None]:
    """Progress lines of a long command on stderr, with the seconds since it started; none when `quiet` (--json)."""
    started = time.monotonic()

    def step(message: str) -> None:
        if not quiet:
            say(f"{PROG} {command}: {time.monotonic() - started:6.1f} s  {message}", file=sys.stderr)

    return step


def print_problems(command: str, exc: QueueInputError, source: str | None) -> None:
    """Every refused field on its own line; an option's problem names the option, a file's its row and line."""
    where = f" in {source}" if source else ""
    lines = [f"{PROG} {command}: invalid input{where}, nothing written:"]
    for problem in exc.problems[:PROBLEMS_SHOWN]:
        if source is None and problem.field in ITEM_OPTIONS:
            lines.append(f"  --{problem.field}: {problem.problem}")
        else:
            lines.append(f"  {problem}")
    if len(exc.problems) > PROBLEMS_SHOWN:
        lines.append(f"  ... and {len(exc.problems) - PROBLEMS_SHOWN} more")
    say(*lines, file=sys.stderr)
