"""Claims across processes: claimers never share an item (PENDING or retryable FAILED), producers and a consumer
lose nothing, and a requeue during concurrent claims loses nothing."""

from __future__ import annotations

import multiprocessing
import queue as stdlib_queue
import time
import traceback
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from deltalake.exceptions import CommitFailedError

from position_pipeline.core.queue import PositionQueue

pytestmark = pytest.mark.system  # every test here races spawned processes
SPAWN = multiprocessing.get_context("spawn")


def _claim_until_empty(uri: str, run: str, limit: int, start: Any, results: Any) -> None:
    """Child process: claim batches until the queue has no PENDING item left; report every id it got.

    A claim that loses every retry raises CommitFailedError having claimed nothing; like a run on its next tick,
    this worker then simply claims again (on an overloaded machine four claimers can starve one another).
    """
    try:
        q = PositionQueue(uri)
        got: list[str] = []
        start.wait(timeout=30)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                batch = q.claim(limit=limit, claimed_by=run)
            except CommitFailedError:
                continue
            if batch.is_empty():
                break
            got.extend(batch["request_id"].to_list())
        results.put((run, got, None))
    except Exception:
        results.put((run, [], traceback.format_exc()))


def _produce(uri: str, name: str, first_conid: int, batches: int, size: int, results: Any) -> None:
    """Child process: insert `batches` batches (a separate commit each), with conids even and odd."""
    try:
        q = PositionQueue(uri)
        ids: list[str] = []
        for b in range(batches):
            base = first_conid + b * size
            ids.extend(q.insert_many([(base + i + 1, f"{name}-{b}-{i}") for i in range(size)]))
            time.sleep(0.02)
        results.put((name, ids, None))
    except Exception:
        results.put((name, [], traceback.format_exc()))


def _consume(uri: str, run: str, producers_done: Any, results: Any) -> None:
    """Child process: claim and mark (even conid SUCCESS, odd FAILED) until producers are done and nothing is left."""
    try:
        q = PositionQueue(uri)
        seen: list[str] = []
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            finished = producers_done.is_set()
            batch = q.claim(priority=None, limit=15, claimed_by=run)
            if batch.is_empty():
                if finished:
                    break
                time.sleep(0.05)
                continue
            even = batch.filter(pl.col("conid") % 2 == 0)["request_id"].to_list()
            odd = batch.filter(pl.col("conid") % 2 == 1)["request_id"].to_list()
            assert q.mark_success(even, claimed_by=run) == len(even)
            assert q.mark_failed_many(dict.fromkeys(odd, "odd conid"), claimed_by=run) == len(odd)
            seen.extend(batch["request_id"].to_list())
        results.put((run, seen, None))
    except Exception:
        results.put((run, [], traceback.format_exc()))


def _collect(results: Any, expected: int, timeout: float) -> dict[str, list[str]]:
    """Every child's report, failing the test with the child's traceback if one raised."""
    reports: dict[str, list[str]] = {}
    deadline = time.monotonic() + timeout
    for _ in range(expected):
        try:
            name, ids, error = results.get(timeout=max(0.1, deadline - time.monotonic()))
        except stdlib_queue.Empty:
            pytest.fail(f"only {len(reports)} of {expected} child processes reported within {timeout} s")
        assert error is None, f"{name} failed:\n{error}"
        reports[name] = ids
    return reports


def _join(processes: list[Any]) -> None:
    for p in processes:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            pytest.fail(f"{p.name} did not exit")
        assert p.exitcode == 0


def _claim_in_four_processes(uri: str) -> dict[str, list[str]]:
    """Four claimer processes, started together, claim batches of 10 until nothing is left; what each got."""
    start = SPAWN.Event()
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(target=_claim_until_empty, args=(uri, f"run-{n}", 10, start, results), name=f"claimer-{n}")
        for n in range(4)
    ]
    for p in processes:
        p.start()
    start.set()
    reports = _collect(results, len(processes), timeout=60)
    _join(processes)
    return reports


@pytest.mark.timeout(90)
def test_concurrent_claimers_never_share_an_item(queue: PositionQueue, uri: str) -> None:
    ids = queue.insert_many([(i, f"S{i}") for i in range(1, 401)])
    reports = _claim_in_four_processes(uri)

    claimed = [i for got in reports.values() for i in got]
    duplicates = [i for i, n in Counter(claimed).items() if n > 1]
    assert duplicates == []
    assert sorted(claimed) == sorted(ids)
    table = queue.read()
    owner = dict(zip(table["request_id"], table["claimed_by"], strict=True))
    assert all(owner[i] == run for run, got in reports.items() for i in got)
    assert set(table["status"]) == {"PROCESSING"}


@pytest.mark.timeout(90)
def test_producers_and_a_consumer_lose_nothing(uri: str) -> None:
    """Producers append while a run claims and marks, starting from no table at all (creation races too)."""
    results = SPAWN.Queue()
    producers_done = SPAWN.Event()
    producers = [
        SPAWN.Process(
            target=_produce, args=(uri, f"producer-{n}", 100_000 * (n + 1), 8, 10, results), name=f"producer-{n}"
        )
        for n in range(2)
    ]
    consumer = SPAWN.Process(target=_consume, args=(uri, "run-c", producers_done, results), name="consumer")
    for p in [*producers, consumer]:
        p.start()
    for p in producers:
        p.join(timeout=60)
    producers_done.set()
    reports = _collect(results, 3, timeout=60)
    _join([*producers, consumer])

    produced = reports["producer-0"] + reports["producer-1"]
    assert len(produced) == len(set(produced)) == 160
    assert sorted(reports["run-c"]) == sorted(produced)

    table = PositionQueue(uri).read()
    assert table.height == 160 and table["request_id"].n_unique() == 160
    assert set(table["request_id"]) == set(produced)
    expected = pl.when(pl.col("conid") % 2 == 0).then(pl.lit("SUCCESS")).otherwise(pl.lit("FAILED"))
    assert table.filter(pl.col("status") != expected).is_empty()
    assert set(table["claimed_by"]) == {"run-c"}


def _fail_every_other(uri: str, n: int) -> tuple[list[str], list[str]]:
    """n items, every other one FAILED once (retry_after long past) and the rest PENDING, in the same files."""
    q = PositionQueue(uri)
    ids = q.insert_many([(i, f"S{i}") for i in range(1, n + 1)])
    past = datetime.now(UTC) - timedelta(hours=2)
    q.claim(limit=n, claimed_by="run-setup", now=past)
    failed, pending = ids[1::2], ids[0::2]
    assert q.mark_failed_many(dict.fromkeys(failed, "first try"), claimed_by="run-setup", now=past) == len(failed)
    assert q.release(pending, claimed_by="run-setup") == len(pending)
    return failed, pending


@pytest.mark.timeout(90)
def test_concurrent_claimers_never_share_pending_or_retryable_items(queue: PositionQueue, uri: str) -> None:
    failed, pending = _fail_every_other(uri, 240)
    assert queue.claimable_count() == 240
    reports = _claim_in_four_processes(uri)

    claimed = [i for got in reports.values() for i in got]
    assert [i for i, n in Counter(claimed).items() if n > 1] == []
    assert sorted(claimed) == sorted(failed + pending)
    table = queue.read()
    owner = dict(zip(table["request_id"], table["claimed_by"], strict=True))
    assert all(owner[i] == run for run, got in reports.items() for i in got)
    assert set(table["status"]) == {"PROCESSING"}
    assert set(table["claims"]) == {2}
    by_id = {r["request_id"]: r for r in table.iter_rows(named=True)}
    assert {by_id[i]["attempts"] for i in failed} == {1} and {by_id[i]["attempts"] for i in pending} == {0}


def _claim_when_started(uri: str, run: str, ready: Any, start: Any, results: Any) -> None:
    """Child process: say it is ready (imports done), then claim batches of 5 until the queue has nothing claimable."""
    ready.put(run)
    _claim_until_empty(uri, run, 5, start, results)


@pytest.mark.timeout(90)
def test_requeue_during_concurrent_claims_loses_nothing(queue: PositionQueue, uri: str) -> None:
    """Two processes claim PENDING and retryable FAILED items while this one requeues every FAILED item."""
    failed, pending = _fail_every_other(uri, 160)
    ready, start, results = SPAWN.Queue(), SPAWN.Event(), SPAWN.Queue()
    processes = [
        SPAWN.Process(target=_claim_when_started, args=(uri, f"run-{n}", ready, start, results), name=f"claimer-{n}")
        for n in range(2)
    ]
    for p in processes:
        p.start()
    for _ in processes:
        ready.get(timeout=30)
    start.set()
    deadline = time.monotonic() + 30
    while not queue.claims_by_run():  # requeue once the claimers are under way
        assert time.monotonic() < deadline, "no claimer claimed anything"
        time.sleep(0.005)
    while True:  # like a claimer: an operator whose requeue lost every retry runs it again
        try:
            requeued = queue.requeue_failed()
            break
        except CommitFailedError:
            assert time.monotonic() < deadline, "requeue never committed"
    reports = _collect(results, len(processes), timeout=60)
    _join(processes)

    claimed = [i for got in reports.values() for i in got]
    assert [i for i, n in Counter(claimed).items() if n > 1] == []
    table = {r["request_id"]: r for r in queue.read().iter_rows(named=True)}
    assert set(table) == set(failed + pending)
    owner = {i: run for run, got in reports.items() for i in got}
    for item, row in table.items():
        if item in owner:
            assert (row["status"], row["claimed_by"]) == ("PROCESSING", owner[item])
        else:  # the claimers stopped when they found nothing; what the requeue gave back after that waits
            assert (row["status"], row["attempts"]) == ("PENDING", 0)
    # A FAILED item was either claimed before the requeue (attempts kept) or requeued (attempts 0): never both.
    claimed_first = [i for i in failed if table[i]["attempts"] == 1]
    assert requeued == len(failed) - len(claimed_first)
    assert claimed_first, "the first claim (oldest first: failed and pending alternate) came before the requeue"
    assert all(table[i]["status"] == "PROCESSING" for i in claimed_first)
    assert {table[i]["attempts"] for i in pending} == {0}
