"""A heartbeat task that measures how long an event loop was kept from running: the promise `AsyncPositionQueue`
makes (no Delta I/O on the loop) as a number, for its tests, the producers benchmark and a producer's own checks.

Invariant: `longest_stall` is the largest delay past `tick` between two wake-ups of the task (and, on exit, since
the last one), so any callback that blocked the loop for s seconds shows as a stall of about s (less at most one
tick), even one that never let the heartbeat run at all. A stall is whatever kept the loop from running: blocking
calls on the loop, and also the interpreter's own pauses (a full garbage collection holds the GIL for tens of ms
in a process that imported polars and deltalake).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType

TICK_S = 0.010
"""The heartbeat's period: 10 ms, a fifth of the 50 ms a producer's loop may stall at most."""


class Heartbeat:
    """`async with Heartbeat() as beat: ...`, then `beat.longest_stall` (seconds) and `beat.ticks`."""

    def __init__(self, tick: float = TICK_S) -> None:
        if not tick > 0:
            raise ValueError(f"tick must be a positive number of seconds, got {tick!r}")
        self.tick = tick
        self.longest_stall = 0.0
        self.ticks = 0
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Heartbeat:
        self._last = time.perf_counter()
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="heartbeat")
        await asyncio.sleep(0)  # the first tick starts now, not at the caller's next await
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.longest_stall = max(self.longest_stall, time.perf_counter() - self._last - self.tick)

    async def _beat(self) -> None:
        self._last = time.perf_counter()
        while True:
            await asyncio.sleep(self.tick)
            woke = time.perf_counter()
            self.ticks += 1
            self.longest_stall = max(self.longest_stall, woke - self._last - self.tick)
            self._last = woke
