"""The fault suite's world (system/test_fault_suite*.py): a Pipeline per scenario (the simulated gateway, a temp lake,
a Dagster instance and the sensor's cursor), driven the way production drives it, and the invariant every scenario
ends with. Each scenario's verdict becomes a row of REPORT, which system/conftest.py prints after the session."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.definitions import defs
from position_pipeline.defs.jobs import SYNC_JOB_NAME
from position_pipeline.defs.resources import LakeResource
from position_pipeline.defs.sensors import position_sync_sensor
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread, SimulatedGateway
from position_pipeline_tests.support.fault_worker import sync_resources
from position_pipeline_tests.support.ib_reads import holders_of

NOT_HELD_CONID = 99_000_000  # the generated gateways hold conids from 101000 and from 700000000, none here
NOT_HELD_SYMBOL = "GONE"
SUBPROCESS_TIMEOUT_S = 90
REPORT: list[dict[str, Any]] = []
COLUMNS = (
    "scenario",
    "enqueued",
    "succeeded",
    "failed",
    "lost",
    "duplicated",
    "runs",
    "failed_runs",
    "seconds",
    "note",
)


def report_table(rows: list[dict[str, Any]]) -> list[str]:
    """The report as aligned text: names and notes left, numbers right."""
    widths = {c: max([len(c), *(len(str(r[c])) for r in rows)]) for c in COLUMNS}

    def line(cells: dict[str, Any]) -> str:
        text = [
            str(cells[c]).ljust(widths[c]) if c in {"scenario", "note"} else str(cells[c]).rjust(widths[c])
            for c in COLUMNS
        ]
        return "  ".join(text).rstrip()

    header = line({c: c for c in COLUMNS})
    title = "fault suite: every item enqueued ends SUCCESS with one row or FAILED with a reason"
    return [title, header, "-" * len(header), *(line(r) for r in rows)]


@dataclass
class Outcome:
    """The invariant's verdict over a set of enqueued items."""

    enqueued: int
    succeeded: int
    failed: int
    lost: int
    duplicated: int
    problems: list[str]


def invariant(
    queue: pl.DataFrame, written: list[tuple[str, str]], enqueued: list[str], holders: dict[int, set[str]]
) -> Outcome:
    """Classify every enqueued item from the queue table and the (request_id, account) keys of position_updates'
    rows. An item pinned to an account needs that account's row; one without needs a row for every account that
    holds its contract (`holders`, from the gateway's state), and no key may have two rows."""
    rows = Counter(written)
    by_item: dict[str, set[str]] = {}
    for request_id, account in rows:
        by_item.setdefault(request_id, set()).add(account)
    columns = ("request_id", "status", "error_message", "conid", "account")
    items = {r["request_id"]: r for r in queue.select(columns).iter_rows(named=True)}
    problems: list[str] = []
    if queue.height != len(items):
        problems.append(f"the queue holds {queue.height - len(items)} request_ids twice")
    twice = {key: count for key, count in rows.items() if count > 1}
    succeeded = failed = lost = duplicated = 0
    for request_id in dict.fromkeys(enqueued):
        item, accounts = items.get(request_id), by_item.get(request_id, set())
        doubled = sorted(a for (rid, a) in twice if rid == request_id)
        if doubled:
            duplicated += 1
            problems.append(f"{request_id}: two rows or more for account(s) {', '.join(doubled)}")
        elif item is None:
            lost += 1
            problems.append(f"{request_id}: not in the queue")
        elif item["status"] == QueueStatus.SUCCESS and accounts and accounts == _expected(item, holders):
            succeeded += 1
        elif item["status"] == QueueStatus.FAILED and (item["error_message"] or "").strip() and not accounts:
            failed += 1
        else:
            lost += 1
            problems.append(
                f"{request_id}: {item['status']} with rows for {sorted(accounts)} (expected "
                f"{sorted(_expected(item, holders))}), error {item['error_message']!r}"
            )
    strays = set(by_item) - set(enqueued)
    if strays:
        duplicated += len(strays)
        problems.append(f"rows for {len(strays)} request_ids never enqueued: {sorted(strays)[:5]}")
    return Outcome(len(set(enqueued)), succeeded, failed, lost, duplicated, problems)


def _expected(item: dict[str, Any], holders: dict[int, set[str]]) -> set[str]:
    return {item["account"]} if item["account"] else holders.get(item["conid"], set())


def written_keys(root: str) -> list[tuple[str, str]]:
    """Every row's (request_id, account) in position_updates (none when the table was never written)."""
    uri = lake.table_uri(root, lake.POSITION_UPDATES_TABLE)
    if not (Path(uri) / "_delta_log").exists():
        return []
    table = pl.from_arrow(DeltaTable(uri).to_pyarrow_table(columns=["request_id", "account"]))
    return list(table.iter_rows())  # type: ignore[union-attr]


def written_ids(root: str) -> list[str]:
    """Every row's request_id in position_updates (an item held in several accounts appears once per account)."""
    return [request_id for request_id, _ in written_keys(root)]


def worker(command: str, *args: str) -> list[str]:
    """The argv of a fault_worker process."""
    return [sys.executable, "-m", "position_pipeline_tests.support.fault_worker", command, *args]


def step_failure(result: dg.ExecuteInProcessResult) -> str:
    """The message of the run's failed step (what an operator reads in the UI)."""
    failure = next(e for e in result.all_events if e.is_step_failure)
    return failure.step_failure_data.error.message  # type: ignore[union-attr]


@dataclass
class Pipeline:
    """One scenario's world: the simulated gateway, a temp lake, a Dagster instance, and the sensor's cursor."""

    sim: GatewayThread
    state: GatewayState
    root: str
    instance: dg.DagsterInstance
    home: Path
    cursor: str | None = None
    enqueued: list[str] = field(default_factory=list)
    runs: dict[str, bool] = field(default_factory=dict)  # run id -> succeeded
    started: float = field(default_factory=time.monotonic)

    @property
    def queue(self) -> PositionQueue:
        return PositionQueue(lake.table_uri(self.root, lake.QUEUE_TABLE))

    def items(self, held: int, not_held: int = 0, start: int = 0) -> list[dict[str, Any]]:
        """Items for `held` contracts the gateway holds and `not_held` it does not. Every third held item names no
        account, as the design note's producers do: it covers every account holding its contract (a desk's
        shared holdings give those several rows); the others name their holding's account."""
        holdings = list(self.state.positions())[start : start + held]
        assert len(holdings) == held, f"the gateway holds only {len(holdings)} positions from {start}"
        assert not any(NOT_HELD_CONID <= h.contract.conid < NOT_HELD_CONID + not_held for h in self.state.positions())
        return [
            {"conid": h.contract.conid, "symbol": h.contract.symbol, "account": None if i % 3 == 2 else h.account}
            for i, h in enumerate(holdings, start)
        ] + [{"conid": NOT_HELD_CONID + i, "symbol": f"{NOT_HELD_SYMBOL}{i}"} for i in range(not_held)]

    def enqueue(self, held: int, not_held: int = 0, *, start: int = 0, queued_at: datetime | None = None) -> list[str]:
        ids = self.queue.insert_many(self.items(held, not_held, start), queued_at=queued_at)
        self.enqueued += ids
        return ids

    def tick(self) -> dg.SensorResult | dg.SkipReason:
        """One evaluation of the production sensor; its cursor carries over to the next tick."""
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources={"lake": LakeResource(root_uri=self.root)}
        )
        result = position_sync_sensor(context)
        if isinstance(result, dg.SensorResult) and result.cursor is not None:
            self.cursor = result.cursor
        elif context.cursor_updated:  # a skipped tick keeps the highest queue version it saw
            self.cursor = context.cursor
        return result  # type: ignore[return-value]

    def request(self) -> dg.RunRequest:
        """A tick that must request a run."""
        result = self.tick()
        assert isinstance(result, dg.SensorResult), f"the sensor skipped: {result.skip_message}"  # type: ignore[union-attr]
        (request,) = result.run_requests or []
        return request

    def execute(
        self, request: dg.RunRequest, *, batch_size: int | None = None, run_id: str | None = None, **ib: Any
    ) -> dg.ExecuteInProcessResult:
        """Run what the sensor requested, as the run worker would (in process, same instance and lake)."""
        run_config = request.run_config
        if batch_size is not None:
            run_config = {"ops": {"queued_positions": {"config": {"batch_size": batch_size}}}}
        result = defs.resolve_job_def(SYNC_JOB_NAME).execute_in_process(
            instance=self.instance,
            partition_key=request.partition_key,
            run_config=run_config,
            tags=request.tags,
            run_id=run_id,
            resources=sync_resources(self.root, self.sim.port, **ib),
            raise_on_error=False,
        )
        self.runs[result.run_id] = result.success
        return result

    def worker_env(self) -> dict[str, str]:
        """The environment of a fault_worker process: this scenario's instance."""
        return {**os.environ, "DAGSTER_HOME": str(self.home)}

    def run_args(self, request: dg.RunRequest, run_id: str, **extra: Any) -> dict[str, Any]:
        """What a fault_worker needs to execute `request` as run `run_id` against this scenario's gateway and lake."""
        return {
            "lake_root": self.root,
            "port": self.sim.port,
            "partition_key": request.partition_key,
            "run_config": request.run_config,
            "tags": dict(request.tags),
            "run_id": run_id,
            **extra,
        }

    def tick_and_run(self, **kwargs: Any) -> dg.ExecuteInProcessResult:
        return self.execute(self.request(), **kwargs)

    def failed_run_gave_items_back(self, result: dg.ExecuteInProcessResult, ids: list[str], says: str) -> None:
        """The run failed saying `says`, and every item of `ids` (those it claimed among them) is PENDING again, with
        no attempt used: an IB failure is not the item's failure."""
        assert not result.success
        assert says in step_failure(result), step_failure(result)
        items = self.queue.read().filter(pl.col("request_id").is_in(ids))
        assert set(items["status"].to_list()) == {QueueStatus.PENDING}, items.group_by("status").len()
        assert set(items["attempts"].to_list()) == {0}

    def skip_backoff(self) -> str:
        """The tick after a failed run: the sensor gives back the claims of finished runs, then backs off. Check
        that, then delete the failed run records (they hold no claims any more) so the next tick need not wait."""
        result = self.tick()
        assert isinstance(result, dg.SkipReason), "the sensor did not back off after a failed run"
        message = result.skip_message or ""
        assert "sync run(s) failed" in message, message
        self.forget_failed_runs()
        return message

    def age_claims(self, run_id: str, seconds: float) -> None:
        """Move a run's claim time `seconds` back: stands for that much waiting, as production would do (run
        monitoring reports a dead run failed only at its max runtime, and the sensor hands a finished run's claims on
        only once they are MAX_RUNTIME_SECONDS old). The sensor reads the wall clock, so the claims move instead."""
        queue = DeltaTable(lake.table_uri(self.root, lake.QUEUE_TABLE))
        queue.update(
            predicate=f"claimed_by = '{run_id}' AND status = 'PROCESSING'",
            updates={"claimed_at": f"claimed_at - INTERVAL '{int(seconds)} seconds'"},
        )

    def forget_failed_runs(self) -> None:
        held = self.queue.claims_by_run()
        records = self.instance.get_run_records(
            dg.RunsFilter(job_name=SYNC_JOB_NAME, statuses=[dg.DagsterRunStatus.FAILURE])
        )
        for record in records:
            assert record.dagster_run.run_id not in held, f"failed run {record.dagster_run.run_id} still holds claims"
            self.instance.delete_run(record.dagster_run.run_id)

    def drain(self, max_ticks: int = 20, **kwargs: Any) -> None:
        """Sensor ticks and their runs until the sensor finds nothing claimable (at most `max_ticks` ticks)."""
        for _ in range(max_ticks):
            result = self.tick()
            if isinstance(result, dg.SkipReason):
                message = result.skip_message or ""
                if "no claimable items" in message:
                    return
                if "sync run(s) failed" in message:
                    self.forget_failed_runs()
                    continue
                raise AssertionError(f"the sensor skipped unexpectedly: {message}")
            for request in result.run_requests or []:
                self.execute(request, **kwargs)
        raise AssertionError(f"the queue was not drained in {max_ticks} ticks: {self.queue.counts()}")

    def check(self, scenario: str, extra_runs: dict[str, bool] | None = None, note: str = "") -> Outcome:
        """Apply the invariant, add the scenario's row to the report, and assert it."""
        outcome = invariant(self.queue.read(), written_keys(self.root), self.enqueued, holders_of(self.state))
        runs = {**self.runs, **(extra_runs or {})}
        REPORT.append(
            {
                "scenario": scenario,
                "enqueued": outcome.enqueued,
                "succeeded": outcome.succeeded,
                "failed": outcome.failed,
                "lost": outcome.lost,
                "duplicated": outcome.duplicated,
                "runs": len(runs),
                "failed_runs": sum(not ok for ok in runs.values()),
                "seconds": round(time.monotonic() - self.started, 1),
                "note": note,
            }
        )
        assert outcome.lost == 0 and outcome.duplicated == 0, outcome.problems[:20]
        assert outcome.succeeded + outcome.failed == outcome.enqueued, outcome.problems[:20]
        assert not outcome.problems, outcome.problems[:20]
        return outcome


def pipeline_in(tmp_path: Path, state: GatewayState) -> Iterator[Pipeline]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    with (
        GatewayThread(lambda: SimulatedGateway(state, port=0, price_interval=None)) as sim,
        dg.instance_for_test(temp_dir=str(home)) as instance,
    ):
        yield Pipeline(sim, state, str(tmp_path / "lake"), instance, home)
        assert not any(r.is_order or r.is_market_data for r in sim.requests())  # read-only, whatever went wrong
