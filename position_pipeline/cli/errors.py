"""How a command's failures end: refused input and lake failures as one line on stderr and exit code 1, Ctrl-C
as 130. Every command runs its work through `guarded`, so none prints a traceback for an expected failure.

delta-rs' Rust code writes a panic (and with RUST_BACKTRACE its backtrace) straight to file descriptor 2 before it
raises, for example on a read-only or full disk. `guarded` holds that output back unless `--debug` or RUST_BACKTRACE
asks for it (`--debug` adds the Python traceback): the operator reads the cause, in one line, last.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator

from position_pipeline.cli.output import PROG, print_problems, say

_OS_ERROR = re.compile(r"([^:]*\(os error \d+\))")
_RUST_PANIC = re.compile(r"^thread '.*' (\(\d+\) )?panicked at ")
_RUST_NOTE = re.compile(r"^note: (run with `RUST_BACKTRACE|Some details are omitted)")

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
    """Run a command, turning refused input and lake failures into one line on stderr and exit code 1.

    `source` names the file or table the input came from; `also` adds exception types the command reports the same
    way (the read commands add polars' errors).
    """
    from deltalake.exceptions import DeltaError

    from position_pipeline.core.queue import QueueInputError

    reported: tuple[type[Exception], ...] = (CommandError, DeltaError, OSError, ValueError, *also)
    try:
        with rust_panics_held_back():
            return action()
    except QueueInputError as exc:
        print_problems(command, exc, source)
    except reported as exc:
        if _tracebacks:
            traceback.print_exc(file=sys.stderr)
        say(f"{PROG} {command}: error: {error_line(exc)}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG} {command}: interrupted", file=sys.stderr)
        return 130
    return 1


def error_line(error: BaseException) -> str:
    """The error on one line; a storage error's operating-system cause (`Read-only file system (os error 30)`)
    first, the rest of delta-rs' chain after it."""
    text = " ".join(str(error).split()) or type(error).__name__
    cause = _OS_ERROR.findall(text)
    if cause and not text.startswith(cause[-1].strip()):
        return f"{cause[-1].strip()}: {text}"
    return text


_tracebacks = False
"""`--debug` given: `guarded` prints the Python traceback before the one-line error."""


def set_debug(on: bool) -> None:
    """`--debug` for this command (every run of `cli.main` sets it): Python tracebacks, and Rust's own panic output
    (RUST_BACKTRACE=1, which Rust reads when it panics)."""
    global _tracebacks
    _tracebacks = on
    if on:
        os.environ["RUST_BACKTRACE"] = "1"


def debugging() -> bool:
    """Whether the operator asked for Rust's own panic output and backtraces (`--debug`, or RUST_BACKTRACE set and
    not 0)."""
    return os.environ.get("RUST_BACKTRACE", "").strip() not in ("", "0")


@contextlib.contextmanager
def rust_panics_held_back() -> Iterator[None]:
    """While the block runs, what is written to file descriptor 2 below Python (Rust's panics) goes to a temporary
    file; afterwards it is written out without the panic lines, unless `debugging()`. Python's own stderr stays live
    (progress lines): when it writes to descriptor 2 it is pointed at a copy of it for the block."""
    if debugging():
        yield
        return
    try:
        sys.stderr.flush()
        live = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to hold back
        yield
        return
    original = sys.stderr
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        if _writes_to_fd2(original):
            sys.stderr = open(live, "w", encoding=original.encoding, errors="backslashreplace", closefd=False)  # noqa: SIM115
        try:
            yield
        finally:
            if sys.stderr is not original:
                sys.stderr.flush()
                sys.stderr = original
            os.dup2(live, 2)
            os.close(live)
            held.seek(0)
            rest = without_rust_panics(held.read().decode("utf-8", "replace"))
            if rest.strip():
                original.write(rest)
                original.flush()


def without_rust_panics(text: str) -> str:
    """`text` without Rust panic reports: from a `thread '...' panicked at` line through the `note:` line Rust ends
    the report with (its message and any backtrace in between), or to the end when no note follows."""
    kept: list[str] = []
    in_panic = False
    for line in text.splitlines(keepends=True):
        if _RUST_PANIC.match(line):
            in_panic = True
        elif in_panic and _RUST_NOTE.match(line):
            in_panic = False
        elif not in_panic:
            kept.append(line)
    return "".join(kept)


def _writes_to_fd2(stream: object) -> bool:
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False  # pytest's capture, a StringIO: not descriptor 2
