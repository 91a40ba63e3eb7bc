"""Group commit: single inserts awaited at about the same time become one Delta commit, each await durable.

Invariants:
- an `await submit(item)` returns its request_id only after the commit that carried the item returned, so a
  returned id is on the table (no write-behind: nothing is held in memory past the await);
- a group is the items that arrived within `window` seconds of its first item (fewer when `max_group` fill it
  first: a full group commits at once); groups commit one after another, and the items that arrive while a commit
  is in flight wait for the next one, so a slow commit makes the next group larger, not the loop slower;
- a failed commit raises its exception in exactly the awaits it carried; the next group is tried anew;
- the commit runs in `run_commit` (a worker thread): the event loop only queues items and resolves futures;
- an await cancelled before its group's commit began leaves nothing written; one cancelled after that cannot stop
  the commit, and its item is then written without anyone holding its id (logged as a warning with the id);
- `drain()` commits what is waiting without waiting out the window and returns when nothing is in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from position_pipeline.core.queue.inputs import Item

logger = logging.getLogger(__name__)

COMMIT_WINDOW_S = 0.005
"""How long the first insert of a group waits for others to join it: a few ms against a commit's ~45 ms."""
MAX_GROUP = 1000
"""Items in one group at most: the group commits at once when it is full."""

CommitItems = Callable[[list[Item]], Awaitable[list[str]]]
"""Commits validated items in one Delta commit (off the event loop) and returns their request_ids in order."""


@dataclass(slots=True)
class _Waiting:
    item: Item
    arrived: float
    future: asyncio.Future[str] = field(repr=False)


class GroupCommitter:
    """Coalesces concurrent `submit` calls into one commit per window; see the module docstring for its promises."""

    def __init__(self, run_commit: CommitItems, *, window: float = COMMIT_WINDOW_S, max_group: int = MAX_GROUP) -> None:
        if not window >= 0:
            raise ValueError(f"commit_window must be a number of seconds >= 0, got {window!r}")
        if isinstance(max_group, bool) or not isinstance(max_group, int) or max_group < 1:
            raise ValueError(f"max_group must be a positive integer, got {max_group!r}")
        self._run_commit = run_commit
        self._window = float(window)
        self._max_group = max_group
        self._waiting: list[_Waiting] = []
        self._wake: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._draining = False
        self.commits = 0
        """Commits made so far (successful or not): what a benchmark counts."""

    async def submit(self, item: Item) -> str:
        """Queue one validated item for the next group; its request_id once that group's commit returned."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(item, time.monotonic(), loop.create_future())
        self._waiting.append(waiting)
        if self._wake is None:
            self._wake = asyncio.Event()
        if len(self._waiting) >= self._max_group:
            self._wake.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="position-queue-group-commit")
        return await waiting.future

    async def drain(self) -> None:
        """Commit every waiting item now (no window) and wait until no commit is in flight; errors stay with the
        awaits they belong to."""
        self._draining = True
        try:
            if self._wake is not None:
                self._wake.set()
            while self._flusher is not None and not self._flusher.done():
                await asyncio.shield(self._flusher)
        finally:
            self._draining = False

    async def _flush(self) -> None:
        """Commit groups until nobody waits; on cancellation, cancel the awaits not yet resolved."""
        try:
            while self._waiting:
                await self._gather_group()
                group = [w for w in self._waiting[: self._max_group] if not w.future.done()]
                del self._waiting[: self._max_group]
                if group:
                    await self._commit(group)
        except asyncio.CancelledError:
            for waiting in self._waiting:
                waiting.future.cancel()
            self._waiting.clear()
            raise

    async def _gather_group(self) -> None:
        """Wait until the first waiting item's window has passed, the group is full, or a drain asks for it."""
        assert self._wake is not None
        while not self._draining and len(self._waiting) < self._max_group:
            left = self._waiting[0].arrived + self._window - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    async def _commit(self, group: Sequence[_Waiting]) -> None:
        self.commits += 1
        try:
            ids = await self._run_commit([w.item for w in group])
        except asyncio.CancelledError:
            for waiting in group:
                waiting.future.cancel()
            raise
        except Exception as exc:
            logger.warning("group commit of %d inserts failed: %s", len(group), exc)
            for waiting in group:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        for waiting, request_id in zip(group, ids, strict=True):
            if waiting.future.done():
                logger.warning("insert cancelled after its commit began: item %s was written", request_id)
            else:
                waiting.future.set_result(request_id)
