"""`AsyncPositionQueue`: the design note's coroutine API over `PositionQueue`, for producers on an asyncio loop.

Invariants:
- Delta I/O never runs on the event loop: every read and commit runs in the queue's own worker threads, the loop
  only validates arguments and resolves futures (a single insert's validation is microseconds);
- the methods have the sync queue's validation and errors, raised from the await (an invalid insert fails alone,
  before any commit, and never joins a group);
- `insert` goes through group commit (group_commit.py): awaits that overlap share one commit, and each returns
  only once its item is committed; `insert_many` is one commit of its own, as in the sync API;
- `get_batch` reads only; the pipeline claims. `mark_success` / `mark_failed` are the sync calls, awaited;
- one event loop per queue: build it, use it and close it on the same loop;
- closing (`aclose`, or leaving `async with`) refuses new calls, commits the inserts already waiting without waiting
  out the window, waits for every call in flight, then stops the threads. Cancelling an await is safe before its
  commit begins (nothing written); after that the commit still completes (a thread cannot be stopped).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from position_pipeline.core.queue.commits import COMMIT_ATTEMPTS
from position_pipeline.core.queue.group_commit import COMMIT_WINDOW_S, MAX_GROUP, GroupCommitter
from position_pipeline.core.queue.inputs import Item, ItemInput, QueueInputError, validate_items
from position_pipeline.core.queue.position_queue import PositionQueue
from position_pipeline.core.queue.reads import QueuedPosition
from position_pipeline.core.terms import Priority, QueueStatus

T = TypeVar("T")

WORKER_THREADS = 4
"""Threads that run the queue's Delta calls: inserts commit one group at a time, reads and marks beside them."""


class AsyncPositionQueue:
    """The position queue for asyncio producers: `await queue.insert(conid, symbol, priority)` and the rest of the
    design note's calls, with Delta I/O in worker threads and concurrent inserts grouped into one commit.

    `delta_lake_path` (or `table_uri`) and `storage_options` are those of `PositionQueue`. `commit_window` (seconds)
    is how long a group's first insert waits for others, `max_group` the most items one commit carries.
    """

    def __init__(
        self,
        table_uri: str | os.PathLike[str] | None = None,
        storage_options: dict[str, str] | None = None,
        *,
        delta_lake_path: str | os.PathLike[str] | None = None,
        commit_window: float = COMMIT_WINDOW_S,
        max_group: int = MAX_GROUP,
        commit_attempts: int = COMMIT_ATTEMPTS,
    ) -> None:
        self.queue = PositionQueue(
            table_uri, storage_options, delta_lake_path=delta_lake_path, commit_attempts=commit_attempts
        )
        """The sync queue every call runs on; its methods block, so call them on the loop only through `run`."""
        self._inserts = GroupCommitter(self._commit_group, window=commit_window, max_group=max_group)
        self._executor = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="position-queue")
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.table_uri!r})"

    @property
    def table_uri(self) -> str:
        return self.queue.table_uri

    @property
    def commits(self) -> int:
        """Group commits this queue made for `insert` (not counting `insert_many` and marks)."""
        return self._inserts.commits

    async def __aenter__(self) -> AsyncPositionQueue:
        await self.initialize()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    async def initialize(self) -> None:
        """Open the table, creating it when absent, and check its schema (the design note's first call)."""
        await self.run(self.queue.version)

    async def insert(
        self, conid: int, symbol: str, priority: int = Priority.MONITORING, account: str | None = None
    ) -> str:
        """Queue one position refresh and return its request_id once it is committed (grouped with concurrent ones).

        Invalid input raises QueueInputError at once, as the sync `insert` does, and nothing is written.
        """
        self._check_open()
        rows, problems = validate_items([(conid, symbol, priority, account)])
        if problems:
            raise QueueInputError(problems)
        return await self._inserts.submit(rows[0])

    async def insert_many(self, items: Iterable[ItemInput], *, queued_at: datetime | None = None) -> list[str]:
        """Queue many refreshes in one commit of their own; see `PositionQueue.insert_many`."""
        # Materialised here so the thread never iterates a producer's generator; a single item is refused there.
        batch = items if isinstance(items, Mapping | str | bytes) else list(items)
        return await self.run(self.queue.insert_many, batch, queued_at=queued_at)

    async def get_batch(
        self, priority: int | None = Priority.MONITORING, limit: int = 50, status: str = QueueStatus.PENDING
    ) -> list[QueuedPosition]:
        """Up to `limit` items with `status` and `priority`, oldest first. Reads only: the pipeline claims, not this."""
        return await self.run(self.queue.get_batch, priority, limit, status)

    async def mark_success(
        self, request_ids: str | Iterable[str], claimed_by: str | None = None, *, now: datetime | None = None
    ) -> int:
        """`PositionQueue.mark_success`, awaited: one commit, how many items changed."""
        ids = request_ids if isinstance(request_ids, str) else list(request_ids)
        return await self.run(self.queue.mark_success, ids, claimed_by, now=now)

    async def mark_failed(
        self, request_id: str, error_message: str, claimed_by: str | None = None, *, now: datetime | None = None
    ) -> int:
        """`PositionQueue.mark_failed`, awaited: the item FAILED with a retry time under the normal policy."""
        return await self.run(self.queue.mark_failed, request_id, error_message, claimed_by, now=now)

    async def counts(self) -> dict[QueueStatus, int]:
        """Items per status (`PositionQueue.counts`), read in a worker thread."""
        return await self.run(self.queue.counts)

    async def run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run any blocking call (a `self.queue` method) in the queue's worker threads and await its result."""
        self._check_open()
        future = asyncio.get_running_loop().run_in_executor(self._executor, lambda: call(*args, **kwargs))
        self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)
        return await future

    async def aclose(self) -> None:
        """Refuse new calls, commit the inserts waiting, wait for every call in flight, then stop the threads.

        Idempotent. Errors of the calls in flight stay with their own awaits.
        """
        if self._closed:
            return
        self._closed = True
        await self._inserts.drain()
        if self._in_flight:
            await asyncio.wait(list(self._in_flight))
        self._executor.shutdown(wait=False)

    async def _commit_group(self, items: list[Item]) -> list[str]:
        future = asyncio.get_running_loop().run_in_executor(self._executor, self.queue.insert_many, items)
        self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)
        return await future

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
