"""Processes the fault suite (system/test_fault_suite.py) starts, each a Dagster run or a producer of its own.

    python -m position_pipeline_tests.support.fault_worker kill POINT ARGS_JSON
    python -m position_pipeline_tests.support.fault_worker stall ARGS_JSON
    python -m position_pipeline_tests.support.fault_worker backfill ARGS_JSON
    python -m position_pipeline_tests.support.fault_worker produce ARGS_JSON

`kill` executes the position_sync job against the Dagster instance in DAGSTER_HOME (so the run record outlives the
process, left STARTED) after patching ONE point to `os.kill(os.getpid(), SIGKILL)`, before or after the real function.
`stall` runs one whose worker stalls between its claim re-check and its append until told to go on. The hooks live
only here: production code has none. `backfill` runs the three sync assets over a range of hour partitions, as the
daemon's single run of an asset backfill does. Runs get processes of their own because two Dagster runs must not
share a process: each run's start calls logging.config.dictConfig, which deadlocks against another run logging in
another thread (seen with dagster 1.13). `produce` enqueues items in chunks and imports no Dagster, so four of them
start quickly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from position_pipeline_tests.support.waiting import wait_until

SYNC_JOB = "position_sync"


def die() -> NoReturn:
    """What a worker killed by the OOM killer or `kill -9` does: nothing more, not even flush its buffers."""
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("SIGKILL did not kill the process")  # unreachable; keeps the NoReturn honest


def _patch(owner: Any, name: str, *, after: bool, when: Callable[..., bool] = lambda *a, **k: True) -> None:
    """Replace `owner.name` by a wrapper that dies before (or after) the real call when `when(args)` holds."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not after and when(*args, **kwargs):
            die()
        result = original(*args, **kwargs)
        if after and when(*args, **kwargs):
            die()
        return result

    setattr(owner, name, wrapper)


def _dagster_event(event_type: str, step_key: str | None = None) -> Callable[..., bool]:
    """A `when` for DagsterInstance.handle_new_event: this event type (of this step) is about to be stored."""

    def matches(_instance: Any, event: Any, *args: Any, **kwargs: Any) -> bool:
        dagster_event = getattr(event, "dagster_event", None)
        if dagster_event is None or dagster_event.event_type_value != event_type:
            return False
        return step_key is None or dagster_event.step_key == step_key

    return matches


def _after_claim() -> None:
    """PositionQueue.claim returned: the items are PROCESSING, IB not asked yet."""
    from position_pipeline.core.queue import PositionQueue

    _patch(PositionQueue, "claim", after=True)


def _in_connect_handshake() -> None:
    """IB connect: TCP and the version handshake done, startApi not sent."""
    from ib_async.client import Client

    _patch(Client, "startApi", after=False)


def _mid_positions_stream() -> None:
    """The first position of the connect-time reqPositions stream arrived."""
    from ib_async.wrapper import Wrapper

    _patch(Wrapper, "position", after=False)


def _after_position_end() -> None:
    """positionEnd of the connect-time reqPositions arrived."""
    from ib_async.wrapper import Wrapper

    _patch(Wrapper, "positionEnd", after=True)


def _mid_account_download() -> None:
    """reqAccountUpdates subscribed and its first portfolio value arrived."""
    from ib_async.wrapper import Wrapper

    _patch(Wrapper, "updatePortfolio", after=False)


def _after_read_snapshot() -> None:
    """read_snapshot returned; ib_snapshot has not output it."""
    from position_pipeline.defs import resources

    _patch(resources, "read_snapshot", after=True)


def _after_release_on_ib_error() -> None:
    """The IB read failed and the run gave its items back (the gateway is down)."""
    from position_pipeline.core.queue import PositionQueue

    _patch(PositionQueue, "release", after=True)


def _before_io_write() -> None:
    """position_updates' output reached the IO manager; nothing appended."""
    from position_pipeline.defs.io_managers import AppendByTablePartitioningTypeHandler

    _patch(AppendByTablePartitioningTypeHandler, "handle_output", after=False)


def _after_delta_commit() -> None:
    """write_deltalake committed the append; nothing marked."""
    from position_pipeline.defs import io_managers

    _patch(io_managers, "write_deltalake", after=True)


def _after_mark_success() -> None:
    """mark_success committed; mark_failed_many not run."""
    from position_pipeline.core.queue import PositionQueue

    _patch(PositionQueue, "mark_success", after=True)


def _after_mark_failed() -> None:
    """mark_failed_many committed; the position_queue materialization not logged."""
    from position_pipeline.core.queue import PositionQueue

    _patch(PositionQueue, "mark_failed_many", after=True)


def _before_step_success() -> None:
    """The position_updates step is done; its STEP_SUCCESS not stored."""
    import dagster as dg

    _patch(dg.DagsterInstance, "handle_new_event", after=False, when=_dagster_event("STEP_SUCCESS", "position_updates"))


def _before_run_success() -> None:
    """Every step done; RUN_SUCCESS not stored, so the run stays STARTED."""
    import dagster as dg

    _patch(dg.DagsterInstance, "handle_new_event", after=False, when=_dagster_event("PIPELINE_SUCCESS"))


KILL_POINTS: dict[str, Callable[[], None]] = {
    install.__name__.lstrip("_"): install
    for install in (
        _after_claim,
        _in_connect_handshake,
        _mid_positions_stream,
        _after_position_end,
        _mid_account_download,
        _after_read_snapshot,
        _after_release_on_ib_error,
        _before_io_write,
        _after_delta_commit,
        _after_mark_success,
        _after_mark_failed,
        _before_step_success,
        _before_run_success,
    )
}
"""Point name -> the function that arms it; each function's docstring says where the worker dies."""


def sync_resources(lake_root: str, port: int, **ib: Any) -> dict[str, Any]:
    """The resources a sync run gets in the fault suite: the simulator's port, short IB timeouts, a temp lake."""
    from position_pipeline.defs.resources import IBResource, build_resources

    settings = {"connect_timeout": 3, "request_timeout": 2, **ib}
    return build_resources(lake_root, IBResource(port=port, **settings))


def _execute_sync_run(args: dict[str, Any]) -> Any:
    """One position_sync run as the sensor requested it, on the instance in DAGSTER_HOME."""
    import dagster as dg

    from position_pipeline.definitions import defs

    with dg.DagsterInstance.get() as instance:
        return defs.resolve_job_def(SYNC_JOB).execute_in_process(
            instance=instance,
            partition_key=args["partition_key"],
            run_config=args["run_config"],
            tags=args.get("tags") or {},
            run_id=args["run_id"],
            resources=sync_resources(args["lake_root"], args["port"]),
            raise_on_error=False,
        )


def run_killed(point: str, args: dict[str, Any]) -> int:
    """Execute one sync run with `point` armed. It never returns unless the point was not reached (exit 3)."""
    KILL_POINTS[point]()
    result = _execute_sync_run(args)
    print(f"kill point {point} never reached; run {result.run_id} success={result.success}", file=sys.stderr)
    return 3


def run_stalled(args: dict[str, Any]) -> int:
    """Execute one sync run that stalls right after position_updates re-checked its claims (PositionQueue.held_by),
    before its append: it touches `paused_file`, waits (at most `max_wait_s`) for `resume_file`, then goes on.

    A worker that is slow there (a hung object-store PUT, a stopped VM) while Dagster reports its run finished."""
    from position_pipeline.core.queue import PositionQueue

    paused, resume = Path(args["paused_file"]), Path(args["resume_file"])
    original = PositionQueue.held_by

    @functools.wraps(original)
    def held_by_then_stall(self: PositionQueue, *a: Any, **k: Any) -> set[str]:
        held = original(self, *a, **k)
        paused.touch()
        with contextlib.suppress(AssertionError):  # not told in time: go on anyway, as the docstring says
            wait_until(resume.exists, args.get("max_wait_s", 60), "resume_file", poll=0.05)
        return held

    PositionQueue.held_by = held_by_then_stall  # type: ignore[method-assign]
    result = _execute_sync_run(args)
    print(json.dumps({"run_id": result.run_id, "success": result.success}))
    return 0


def run_backfill(args: dict[str, Any]) -> int:
    """Materialize the sync assets over partitions first..last in one run; print its outcome as JSON."""
    import dagster as dg

    from position_pipeline.defs.assets import ib_snapshot, position_queue, position_updates, queued_positions
    from position_pipeline.defs.backfill import BACKFILL_TAGS
    from position_pipeline.defs.partitions import partition_range_tags

    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            [position_queue, queued_positions, ib_snapshot, position_updates],
            selection=[queued_positions, ib_snapshot, position_updates],
            instance=instance,
            tags={**BACKFILL_TAGS, **partition_range_tags(args["first"], args["last"])},
            resources=sync_resources(args["lake_root"], args["port"]),
            raise_on_error=False,
        )
    # One materialization per partition of the range, each with the run's one batch as its metadata.
    claimed = {m.metadata["claimed"].value for m in result.asset_materializations_for_node("queued_positions")}
    assert len(claimed) <= 1, claimed
    print(json.dumps({"run_id": result.run_id, "success": result.success, "claimed": next(iter(claimed), 0)}))
    return 0 if result.success else 1


def produce(args: dict[str, Any]) -> int:
    """Enqueue `count` items cycling through `items`, `chunk` per insert_many, `pause_s` apart; write their ids."""
    from position_pipeline.core.queue import PositionQueue

    queue = PositionQueue(args["queue_uri"])
    items = [{"conid": conid, "symbol": symbol, "account": account} for conid, symbol, account in args["items"]]
    count, chunk, offset = args["count"], args["chunk"], args.get("offset", 0)
    ids: list[str] = []
    while len(ids) < count:
        size = min(chunk, count - len(ids))
        start = offset + len(ids)
        ids += queue.insert_many([items[(start + i) % len(items)] for i in range(size)])
        time.sleep(args.get("pause_s", 0.0))  # the producer's pace: chunks spread over the runs going on
    Path(args["out"]).write_text(json.dumps(ids))
    return 0


def main(argv: list[str]) -> int:
    command, *rest = argv
    if command == "kill":
        point, raw = rest
        return run_killed(point, json.loads(raw))
    if command == "stall":
        (raw,) = rest
        return run_stalled(json.loads(raw))
    if command == "backfill":
        (raw,) = rest
        return run_backfill(json.loads(raw))
    if command == "produce":
        (raw,) = rest
        return produce(json.loads(raw))
    raise SystemExit(f"unknown command {command!r}: kill POINT ARGS_JSON | stall | backfill | produce ARGS_JSON")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
