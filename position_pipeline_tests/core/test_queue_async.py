"""The asyncio queue: the design note's producer calls run unchanged, inserts awaited together share one commit,
each await returns only once its item is on the table, and the event loop never stalls on Delta I/O."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from position_pipeline import AsyncPositionQueue, PositionQueue
from position_pipeline.core.queue import QueueInputError
from position_pipeline.core.queue.heartbeat import Heartbeat
from position_pipeline_tests.core.queue_support import version
from position_pipeline_tests.support import REPO

T = TypeVar("T")

STALL_LIMIT_S = 0.050
"""The longest a producer's event loop may be kept from running: well above the 10 ms tick, far below a commit."""


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def on_table(uri: str) -> set[str]:
    return set(PositionQueue(uri).read()["request_id"].to_list())


async def note_test_main(handlers: int) -> tuple[list[str], list[Any], int, int]:
    """The design note's producer calls, verbatim but for the import: its test's main() and its worker's marks,
    then `handlers` position handlers inserting at once as a streamer's callbacks do."""
    # was: from v6.data.position_queue import PositionQueue, QueuedPosition, QueueStatus
    from position_pipeline import AsyncPositionQueue as PositionQueue
    from position_pipeline import QueuedPosition, QueueStatus

    # Create queue
    queue = PositionQueue(delta_lake_path="data/lake/test_position_queue")
    await queue.initialize()

    # Insert test items
    for i in range(5):
        await queue.insert(conid=300000 + i, symbol="TEST", priority=2)

    # The worker's calls (QueueWorker._process_batch)
    batch = await queue.get_batch(priority=2, limit=10, status=QueueStatus.PENDING)
    assert all(isinstance(item, QueuedPosition) for item in batch)
    success_ids = [item.request_id for item in batch[:4]]
    failed_items = [(batch[4], "Position not found in IB")]
    if success_ids:
        await queue.mark_success(success_ids)
    for item, error in failed_items:
        await queue.mark_failed(item.request_id, error)

    # Verify queue is processed
    remaining = await queue.get_batch(priority=2, limit=100)

    # Many handlers at once (the streamer routes every non-active contract to the queue)
    ids = await asyncio.gather(*(queue.insert(conid=400000 + i, symbol="HANDLER", priority=2) for i in range(handlers)))
    commits = queue.commits
    await queue.aclose()
    return ids, remaining, len(batch), commits


def test_the_design_notes_producer_calls_run_verbatim_without_stalling_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    async def program() -> tuple[tuple[list[str], list[Any], int, int], Heartbeat]:
        async with Heartbeat() as beat:
            outcome = await note_test_main(handlers=200)
        return outcome, beat

    (ids, remaining, batch_size, commits), beat = run(program())

    uri = str(tmp_path / "data/lake/test_position_queue")
    table = PositionQueue(uri).read()
    assert batch_size == 5 and remaining == []  # get_batch read the five; the marks finished them
    assert sorted(table.filter(table["symbol"] == "TEST")["status"].to_list()) == ["FAILED"] + ["SUCCESS"] * 4
    assert len(set(ids)) == 200 and set(ids) <= on_table(uri)
    assert commits <= 5 + 3, f"200 concurrent inserts took {commits - 5} commits"
    assert beat.ticks > 10
    assert beat.longest_stall < STALL_LIMIT_S, f"the event loop stalled {beat.longest_stall * 1000:.0f} ms"


def test_inserts_awaited_together_share_one_commit_and_each_is_committed_when_it_returns(uri: str) -> None:
    async def program() -> list[tuple[str, bool]]:
        async with AsyncPositionQueue(uri, commit_window=0.05) as queue:

            async def handler(conid: int) -> tuple[str, bool]:
                request_id = await queue.insert(conid, "SYM", 1, "DU1000001")
                return request_id, request_id in on_table(uri)  # durable when the await returns

            return await asyncio.gather(*(handler(conid) for conid in range(1, 101)))

    before = version(uri) if Path(uri).exists() else -1
    results = run(program())

    assert all(committed for _, committed in results)
    assert len({request_id for request_id, _ in results}) == 100
    assert version(uri) - max(before, 0) == 1, "100 inserts within one window are one commit"
    rows = PositionQueue(uri).read()
    assert rows["conid"].to_list() == list(range(1, 101))  # in the order they were awaited
    assert set(rows["account"].to_list()) == {"DU1000001"} and set(rows["priority"].to_list()) == {1}


def test_a_full_group_commits_without_waiting_out_the_window(uri: str) -> None:
    async def program() -> tuple[float, int]:
        async with AsyncPositionQueue(uri, commit_window=30, max_group=10) as queue:
            started = time.perf_counter()
            await asyncio.gather(*(queue.insert(conid, "SYM") for conid in range(1, 21)))
            return time.perf_counter() - started, queue.commits

    took, commits = run(program())
    assert commits == 2 and took < 10


def test_an_invalid_insert_fails_alone_with_the_sync_apis_error(uri: str) -> None:
    with pytest.raises(QueueInputError) as sync_error:
        PositionQueue(uri).insert(-1, "BAD")

    async def program() -> list[object]:
        async with AsyncPositionQueue(uri) as queue:
            return await asyncio.gather(
                queue.insert(1, "GOOD"), queue.insert(-1, "BAD"), queue.insert(2, "ALSO"), return_exceptions=True
            )

    good, bad, also = run(program())
    assert isinstance(bad, QueueInputError) and str(bad) == str(sync_error.value)
    assert on_table(uri) == {good, also}


def test_a_failed_commit_raises_in_exactly_the_awaits_it_carried(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = AsyncPositionQueue(uri, commit_window=0.02)
    real = queue.queue.insert_many
    calls: list[int] = []

    def failing_once(items: Any, **kwargs: Any) -> list[str]:
        calls.append(len(items))
        if len(calls) == 1:
            raise OSError("storage went away")
        return real(items, **kwargs)

    monkeypatch.setattr(queue.queue, "insert_many", failing_once)

    async def program() -> tuple[list[object], list[str]]:
        first = await asyncio.gather(*(queue.insert(conid, "FIRST") for conid in range(1, 4)), return_exceptions=True)
        second = await asyncio.gather(*(queue.insert(conid, "SECOND") for conid in range(4, 6)))
        await queue.aclose()
        return first, second

    first, second = run(program())
    assert calls == [3, 2]
    assert all(isinstance(e, OSError) and str(e) == "storage went away" for e in first)
    assert on_table(uri) == set(second)


def test_closing_commits_the_waiting_inserts_at_once_and_refuses_new_calls(uri: str) -> None:
    async def program() -> tuple[list[str], float, AsyncPositionQueue]:
        queue = AsyncPositionQueue(uri, commit_window=30)
        async with queue:
            waiting = [asyncio.create_task(queue.insert(conid, "SYM")) for conid in range(1, 4)]
            await asyncio.sleep(0)
            started = time.perf_counter()
        took = time.perf_counter() - started
        return [task.result() for task in waiting], took, queue

    ids, took, queue = run(program())
    assert took < 10 and on_table(uri) == set(ids)
    with pytest.raises(RuntimeError, match="is closed"):
        run(queue.insert(4, "LATE"))
    with pytest.raises(RuntimeError, match="is closed"):
        run(queue.get_batch())


def test_an_insert_cancelled_before_its_commit_writes_nothing(uri: str) -> None:
    async def program() -> str:
        async with AsyncPositionQueue(uri, commit_window=0.2) as queue:
            cancelled = asyncio.create_task(queue.insert(1, "GONE"))
            kept = asyncio.create_task(queue.insert(2, "KEPT"))
            await asyncio.sleep(0.01)
            cancelled.cancel()
            return await kept

    kept = run(program())
    assert on_table(uri) == {kept}


def test_insert_many_and_the_readers_are_the_sync_calls_awaited(uri: str) -> None:
    async def program() -> tuple[list[str], dict[Any, int]]:
        async with AsyncPositionQueue(delta_lake_path=uri) as queue:
            ids = await queue.insert_many({"conid": c, "symbol": "MANY"} for c in range(1, 4))
            with pytest.raises(TypeError):
                await queue.insert_many({"conid": 1, "symbol": "ONE"})  # type: ignore[arg-type]
            return ids, await queue.counts()

    ids, counts = run(program())
    assert on_table(uri) == set(ids) and counts["PENDING"] == 3  # type: ignore[index]


def test_the_sync_queue_has_the_note_s_first_calls_too(tmp_path: Path) -> None:
    """initialize() and a context manager, as the async queue, so the note's calls read the same blocking."""
    uri = str(tmp_path / "queue")
    queue = PositionQueue(delta_lake_path=uri)
    queue.initialize()
    assert queue.version() == 0 and on_table(uri) == set()  # created, empty
    queue.initialize()  # idempotent
    with PositionQueue(delta_lake_path=uri) as again:
        request_id = again.insert(1, "SYM")
    assert on_table(uri) == {request_id}


def test_the_sync_queue_takes_delta_lake_path_too(uri: str) -> None:
    queue = PositionQueue(delta_lake_path=uri)
    assert queue.table_uri == uri and queue.insert(1, "SYM") in on_table(uri)
    with pytest.raises(TypeError, match="exactly one"):
        PositionQueue(uri, delta_lake_path=uri)
    with pytest.raises(TypeError, match="exactly one"):
        PositionQueue()
    with pytest.raises(ValueError, match="commit_window"):
        AsyncPositionQueue(uri, commit_window=-1)


@pytest.mark.system  # a fresh interpreter, so no other test's imports hide a heavy one
def test_importing_the_package_stays_light_until_a_queue_is_asked_for() -> None:
    probe = (
        "import sys, position_pipeline\n"
        "assert 'polars' not in sys.modules and 'deltalake' not in sys.modules, 'heavy import'\n"
        "from position_pipeline import QueueStatus\n"
        "assert 'polars' not in sys.modules and 'deltalake' not in sys.modules, 'heavy import'\n"
        "from position_pipeline import AsyncPositionQueue, PositionQueue, QueuedPosition\n"
        "print(AsyncPositionQueue.__module__, PositionQueue.__module__, QueuedPosition.__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "position_pipeline.core.queue.async_queue",
        "position_pipeline.core.queue.position_queue",
        "position_pipeline.core.queue.reads",
    ]
