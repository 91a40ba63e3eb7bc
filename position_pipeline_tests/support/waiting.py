"""Bounded waits: no test may hang, and none sleeps where a condition can be awaited.

Every loop that waits for something in the tests (and in their worker processes) is one of these; a `sleep` left in
a test is the point of the test (pacing a producer, holding a fault open, giving a reply the time to be wrong) and
says so where it stands.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

POLL_S = 0.02
"""How often a condition is looked at again: short against every bound a test sets."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    what: str = "condition",
    *,
    process: subprocess.Popen[Any] | None = None,
    explain: Callable[[], str] | None = None,
    ignoring: tuple[type[BaseException], ...] = (),
    poll: float = POLL_S,
) -> T:
    """Return `predicate()`'s first truthy value; raise AssertionError naming `what` after `timeout` seconds.

    `process`: fail at once when it exits (what is waited for would never come). `explain`: text added to the
    failure (a log's tail). `ignoring`: exceptions of `predicate` that mean "not yet" (a server not answering yet).
    `poll`: seconds between looks, longer where a look is costly (a table read, an HTTP request)."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited ({process.returncode}) first{_explained(explain)}")
        try:
            value = predicate()
        except ignoring:
            value = None  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:g} s{_explained(explain)}")
        time.sleep(poll)


async def wait_until_async(predicate: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    """`wait_until` inside an event loop: the loop keeps running (and delivering events) while it waits."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:g} s")
        await asyncio.sleep(POLL_S)
    return value


def run_bounded(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run a coroutine in a fresh loop, never longer than `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _explained(explain: Callable[[], str] | None) -> str:
    return f":\n{explain()}" if explain is not None else ""
