"""Bounded waits: no test may hang, and none sleeps where a condition can be awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

POLL_S = 0.02
"""How often a condition is looked at again: short against every bound a test sets."""


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    """Return once `predicate()` is truthy; raise AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(POLL_S)


async def wait_until_async(predicate: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    """`wait_until` inside an event loop: the loop keeps running (and delivering events) while it waits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(POLL_S)


def run_bounded(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run a coroutine in a fresh loop, never longer than `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
