"""End to end: the real Dagster daemon runs this code location's sensor against the simulated gateway.

300 items on a three-account desk (shared holdings, EUR/GBP/JPY listings, a EUR-base account; every third item names
no account, as the design note's producers do) must each end SUCCESS with one row per account it covers, whose
values equal what the simulator told, in the contract's and the account's base currency;
items the gateway does not hold must end FAILED with a reason and no row; and the gateway must have seen no order and
no market-data request. The measured latencies go to `e2e_figures.json` in the test's temp folder and to stdout.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.defs.jobs import SYNC_JOB_NAME
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread, SimulatedGateway
from position_pipeline_tests.support import REPO
from position_pipeline_tests.support.fault_pipeline import invariant, written_keys
from position_pipeline_tests.support.ib_reads import holders_of
from position_pipeline_tests.support.services import dagster_home, instance_at, pipeline_env, terminate_group
from position_pipeline_tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def daemon_env(tmp_path: Path) -> Iterator[tuple[dict[str, str], GatewayThread, GatewayState, Path]]:
    state = GatewayState.generate(positions=330, accounts=3, seed=11)
    home = dagster_home(tmp_path / "dagster_home")
    with GatewayThread(lambda: SimulatedGateway(state, port=0, price_interval=None)) as sim:
        yield pipeline_env(home, tmp_path / "lake", sim.port), sim, state, tmp_path


@pytest.fixture
def daemon(daemon_env: tuple[dict[str, str], GatewayThread, GatewayState, Path]) -> Iterator[subprocess.Popen[bytes]]:
    env, *_, tmp_path = daemon_env
    log = (tmp_path / "daemon.log").open("wb")
    command = [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", "position_pipeline.definitions"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        terminate_group(process)
        log.close()


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    """Wait while the daemon lives; a failure shows the daemon log's tail. Each look reads tables: 4 a second."""

    def tail() -> str:
        return "daemon log tail:\n" + log.read_text()[-3000:]

    wait_until(predicate, timeout, what, process=process, explain=tail, poll=0.25)


def test_the_daemon_keeps_position_updates_current(daemon_env, daemon) -> None:  # type: ignore[no-untyped-def]
    env, sim, state, tmp_path = daemon_env
    log = tmp_path / "daemon.log"
    root = env["POSITION_LAKE_URI"]
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    holdings = list(state.positions())[:300]
    assert len({h.account for h in holdings}) == 3

    seen_at: dict[str, float] = {}
    enqueued_at: dict[str, float] = {}

    def poll_rows() -> int:
        uri = lake.table_uri(root, lake.POSITION_UPDATES_TABLE)
        if not (Path(uri) / "_delta_log").exists():
            return 0
        ids = pl.from_arrow(DeltaTable(uri).to_pyarrow_table(columns=["request_id"]))["request_id"].to_list()  # type: ignore[index]
        now = time.time()
        for request_id in ids:
            seen_at.setdefault(request_id, now)
        return len(ids)

    holders = holders_of(state)
    items = [
        {"conid": h.contract.conid, "symbol": h.contract.symbol, "account": None if i % 3 == 2 else h.account}
        for i, h in enumerate(holdings)
    ]
    expected_rows = sum(1 if item["account"] else len(holders[item["conid"]]) for item in items)  # type: ignore[index]
    assert expected_rows > 300

    for start in range(0, 300, 50):  # producers enqueue while the sensor runs
        at = time.time()
        ids = queue.insert_many(items[start : start + 50])
        enqueued_at.update(dict.fromkeys(ids, at))
        for _ in range(8):  # the producers' pace (50 items per 2 s), sampling arrivals meanwhile
            poll_rows()
            time.sleep(0.25)

    wait_for(
        lambda: poll_rows() >= expected_rows and queue.counts()[QueueStatus.SUCCESS] == 300,
        300,
        "300 SUCCESS",
        daemon,
        log,
    )

    outcome = invariant(queue.read(), written_keys(root), list(enqueued_at), holders)
    assert (outcome.succeeded, outcome.lost, outcome.duplicated) == (300, 0, 0), outcome.problems[:10]
    rows = pl.from_arrow(DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).to_pyarrow_table())
    assert isinstance(rows, pl.DataFrame)
    assert rows.height == expected_rows and rows["request_id"].n_unique() == 300
    assert {"EUR", "GBP", "JPY"} <= set(rows["currency"].to_list())
    assert set(rows["base_currency"].to_list()) == {"USD", "EUR"}
    for row in rows.iter_rows(named=True):
        holding = state.holding(row["account"], row["conid"])
        assert holding is not None
        value = state.valuation(holding)
        assert (row["position"], row["market_price"], row["market_value"]) == (
            holding.quantity,
            value.market_price,
            value.market_value,
        )
        rate = state.exchange_rate(row["account"], row["currency"])
        assert (row["base_currency"], row["fx_rate"]) == (state.base_currency(row["account"]), rate)
        assert row["market_value_base"] == pytest.approx(value.market_value * rate)  # type: ignore[operator]
        assert row["values_as_of"] == state.valued_at(row["account"]).replace(second=0, microsecond=0)

    unknown = queue.insert_many([(88_000_000 + i, f"NOPE{i}") for i in range(5)])
    wait_for(
        lambda: set(queue.read().filter(pl.col("request_id").is_in(unknown))["status"].to_list()) == {"FAILED"},
        120,
        "unknown items FAILED",
        daemon,
        log,
    )
    failed = queue.read().filter(pl.col("request_id").is_in(unknown))
    assert all("not held" in message for message in failed["error_message"].to_list())
    assert poll_rows() == expected_rows

    records = sim.requests()
    assert not any(r.is_order or r.is_market_data for r in records)

    latencies = sorted(seen_at[i] - enqueued_at[i] for i in enqueued_at)
    figures = {"items": 300, **_latency_figures(latencies), **_run_figures(env["DAGSTER_HOME"])}
    (tmp_path / "e2e_figures.json").write_text(json.dumps(figures, indent=1))
    print("\nend-to-end figures:", json.dumps(figures, indent=1))


def _latency_figures(latencies: list[float]) -> dict[str, float]:
    return {
        "enqueue_to_row_median_s": round(statistics.median(latencies), 2),
        "enqueue_to_row_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
        "enqueue_to_row_worst_s": round(latencies[-1], 2),
    }


def _run_figures(home: str) -> dict[str, float]:
    """Per run: queued -> started (launch), started -> first step, and the batch steps themselves."""
    with instance_at(home) as instance:
        records = instance.get_run_records(dg.RunsFilter(job_name=SYNC_JOB_NAME))
        launch, batch, total = [], [], []
        for record in records:
            if record.start_time is None or record.end_time is None:
                continue
            created = record.create_timestamp.replace(tzinfo=UTC).timestamp()
            logs = instance.all_logs(record.dagster_run.run_id)
            events = [(e.timestamp, e.dagster_event.event_type) for e in logs if e.dagster_event is not None]
            starts = [at for at, kind in events if kind == dg.DagsterEventType.STEP_START]
            ends = [
                at
                for at, kind in events
                if kind in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE)
            ]
            if not starts or not ends:
                continue
            launch.append(starts[0] - created)
            batch.append(max(ends) - min(starts))
            total.append(record.end_time - created)
    return {
        "runs": len(total),
        "run_launch_median_s": round(statistics.median(launch), 2),
        "batch_in_run_median_s": round(statistics.median(batch), 2),
        "batch_in_run_max_s": round(max(batch), 2),
        "run_total_median_s": round(statistics.median(total), 2),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),  # type: ignore[dict-item]
    }


def test_a_backfill_through_the_daemon_catches_up_an_outage_while_the_sensor_runs(daemon_env, daemon) -> None:  # type: ignore[no-untyped-def]
    """Items queued over three past hours wait out an outage; `position-pipeline backfill --wait` stores an asset
    backfill that the daemon launches as one run, next to the sensor's runs. Each item ends SUCCESS with one row; the
    same backfill again adds no row."""
    env, sim, state, tmp_path = daemon_env
    root = env["POSITION_LAKE_URI"]
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    holdings = list(state.positions())[:300]
    now = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
    ids: list[str] = []
    for hours_ago, chunk in ((3, holdings[:100]), (2, holdings[100:200]), (1, holdings[200:])):
        items = [{"conid": h.contract.conid, "symbol": h.contract.symbol, "account": h.account} for h in chunk]
        ids += queue.insert_many(items, queued_at=now - timedelta(hours=hours_ago))
    window = ["--from", (now - timedelta(hours=3)).isoformat(), "--to", (now - timedelta(hours=1)).isoformat()]

    def backfill() -> dict[str, object]:
        command = [
            sys.executable,
            "-m",
            "position_pipeline",
            "backfill",
            *window,
            "--wait",
            "--json",
            "--timeout",
            "240",
        ]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr + (tmp_path / "daemon.log").read_text()[-3000:]
        return json.loads(done.stdout)

    first = backfill()
    assert first["partitions"] == 3 and first["status"] == "COMPLETED_SUCCESS", first
    rows = pl.from_arrow(DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).to_pyarrow_table())
    assert isinstance(rows, pl.DataFrame)
    assert sorted(rows["request_id"].to_list()) == sorted(ids)  # each item exactly once, sensor and backfill together
    assert queue.counts()[QueueStatus.SUCCESS] == 300
    assert (rows["snapshot_at"] > rows["queued_at"] + timedelta(minutes=30)).all()  # as of the backfill, not the hour

    with instance_at(env["DAGSTER_HOME"]) as instance:
        runs = instance.get_run_records(dg.RunsFilter.for_backfill(str(first["backfill_id"])))
        assert len(runs) == 1  # single-run backfill policy: three hours, one run
        tags = runs[0].dagster_run.tags
        first_key = (now - timedelta(hours=3)).strftime("%Y-%m-%d-%H:00")
        assert tags["dagster/asset_partition_range_start"] == first_key
        claimed = [
            e.asset_materialization.metadata["claimed"].value  # type: ignore[union-attr]
            for e in instance.all_logs(runs[0].dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
            if e.asset_materialization is not None and e.asset_materialization.asset_key.path == ["queued_positions"]
        ]
        sensor_runs = instance.get_run_records(dg.RunsFilter(job_name=SYNC_JOB_NAME))
    # The sensor drained 50 at a time meanwhile; the backfill took what was left in one batch.
    assert claimed and claimed[0] + 50 * len(sensor_runs) >= 300, (claimed, len(sensor_runs))

    version = DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).version()
    second = backfill()
    assert second["status"] == "COMPLETED_SUCCESS"
    again = pl.from_arrow(DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).to_pyarrow_table())
    assert isinstance(again, pl.DataFrame)
    assert again.height == 300  # nothing added
    # Not even empty commits. The daemon also runs table upkeep's schedule: a compaction (OPTIMIZE, no data change)
    # may land meanwhile, and is the only commit allowed.
    history = DeltaTable(lake.table_uri(root, lake.POSITION_UPDATES_TABLE)).history()
    later = [c for c in history if c["version"] > version]
    assert [c["operation"] for c in later if c["operation"] != "OPTIMIZE"] == [], later
    assert not any(r.is_order or r.is_market_data for r in sim.requests())
