"""The lake on an object store: both tables on a real S3-compatible server (moto's server mode) on loopback.

The server (support/s3_store.py) decides put-if-absent atomically, as S3 does, so the two-writer test checks delta-rs
and the queue, not moto's race; it records every PUT, so the tests can see that delta-rs committed each Delta version
with If-None-Match: *.
"""

from __future__ import annotations

import json
import multiprocessing
import queue as stdlib_queue
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import polars as pl
import pytest
from botocore.exceptions import ClientError
from dagster_deltalake import LocalConfig, S3Config
from deltalake import CommitProperties, DeltaTable, write_deltalake

from position_pipeline.cli import main as cli
from position_pipeline.core import lake
from position_pipeline.core.positions import latest_positions
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.core.status import collect_status
from position_pipeline.defs.assets import ib_snapshot, position_queue, position_updates, queued_positions
from position_pipeline.defs.partitions import hour_key, partition_range_tags
from position_pipeline.defs.resources import (
    IBResource,
    LakeResource,
    build_resources,
    delta_io_manager,
    delta_storage_config,
)
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread
from position_pipeline_tests.support.s3_store import S3_ENV, S3Server, assert_contiguous_log, running_s3_server

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """An S3-compatible server on a free loopback port, in its own process, for this module's tests."""
    with running_s3_server() as server:
        yield server


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A new bucket per test, so tests share the server but no tables."""
    name = f"lake-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_lake(s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """POSITION_LAKE_URI and the AWS_* variables of an operator pointing the pipeline at the bucket."""
    root = f"s3://{bucket}/lake"
    for name in ("AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**S3_ENV, "AWS_ENDPOINT_URL": s3_server.endpoint, lake.LAKE_URI_VARIABLE: root}.items():
        monkeypatch.setenv(name, value)
    return root


# The storage options: one helper decides them for every reader and writer.


def test_storage_options_come_from_the_uri_scheme_and_the_aws_variables() -> None:
    env = {**S3_ENV, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_SESSION_TOKEN": " ", "HOME": "/root"}
    assert lake.storage_options_for("/srv/lake", env) is None
    assert lake.storage_options_for("file:///srv/lake", env) is None
    assert lake.storage_options_for("s3://bucket/lake", env) == {**S3_ENV, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    assert lake.storage_options_for("s3://bucket/lake", {}) == {}
    assert lake.storage_options_for("s3://bucket/lake", {**env, "AWS_S3_ALLOW_UNSAFE_RENAME": "false"}) == {
        **S3_ENV,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_S3_ALLOW_UNSAFE_RENAME": "false",
    }


@pytest.mark.parametrize("name", ["AWS_S3_ALLOW_UNSAFE_RENAME", "aws_s3_allow_unsafe_rename"])
def test_an_environment_allowing_unsafe_renames_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="disables atomic commits"):
        lake.storage_options_for("s3://bucket/lake", {**S3_ENV, name: "true"})
    assert lake.storage_options_for("/srv/lake", {name: "true"}) is None  # a local lake never reads it


@pytest.mark.parametrize("uri", ["gs://bucket/lake", "az://container/lake", "memory:///lake"])
def test_other_schemes_are_refused_with_the_uri_named(uri: str) -> None:
    with pytest.raises(ValueError, match=f"unsupported lake URI '{re.escape(uri)}'.*s3://"):
        lake.storage_options_for(uri, {})
    with pytest.raises(ValueError, match="unsupported lake URI"):
        delta_storage_config(uri)


def test_the_io_manager_config_follows_the_scheme_and_names_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in lake.S3_ENVIRONMENT:
        monkeypatch.setenv(name, "true" if name == "AWS_ALLOW_HTTP" else f"value of {name}")
    assert delta_storage_config("/srv/lake") == (LocalConfig(), None)
    assert delta_storage_config("file:///srv/lake") == (LocalConfig(), None)
    storage, client = delta_storage_config("s3://bucket/lake")
    assert isinstance(storage, S3Config)
    assert client is not None and client.allow_http is True
    # Every variable reaches the config, by name: resolved in the run's process, secrets never in the UI.
    names = {
        getattr(storage, f).env_var_name
        for f in ("access_key_id", "secret_access_key", "token", "region", "endpoint")
        if isinstance(getattr(storage, f), dg.EnvVar)
    }
    assert names | {"AWS_ALLOW_HTTP"} == set(lake.S3_ENVIRONMENT)
    monkeypatch.setenv(lake.LAKE_URI_VARIABLE, "s3://bucket/lake")
    assert isinstance(delta_io_manager().storage_options, S3Config)


# The store.


def test_the_store_refuses_a_second_put_if_absent(s3_server: S3Server, bucket: str) -> None:
    """What delta-rs relies on for safe commits: PutObject If-None-Match: * fails when the key exists."""
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"


# The queue and position_updates on S3.


def test_the_queue_inserts_claims_and_marks_on_s3(s3_server: S3Server, bucket: str, s3_lake: str) -> None:
    queue = LakeResource(root_uri=s3_lake).queue()
    assert queue.table_uri == f"{s3_lake}/positions/position_queue"
    ids = queue.insert_many([(265598, "AAPL", 1), (272093, "MSFT"), (8314, "IBM", 2, "DU1000001")])
    batch = queue.claim(None, 2, claimed_by="run-a")
    assert batch["request_id"].to_list() == ids[:2]  # priority 1 first, then oldest
    assert queue.claim(None, 5, claimed_by="run-b")["request_id"].to_list() == [ids[2]]
    assert queue.mark_success([ids[0]], claimed_by="run-a") == 1
    assert queue.mark_failed(ids[1], "not held", claimed_by="run-a") == 1
    assert queue.mark_success([ids[2]], claimed_by="run-a") == 0  # run-b holds it
    assert queue.counts() == {
        QueueStatus.PENDING: 0,
        QueueStatus.PROCESSING: 1,
        QueueStatus.SUCCESS: 1,
        QueueStatus.FAILED: 1,
    }
    version = assert_contiguous_log(s3_server, bucket, s3_lake, lake.QUEUE_TABLE)
    commits = s3_server.commits(bucket)
    assert len(commits) == version + 1
    assert all(c.if_none_match == "*" and c.status == 200 for c in commits)


def test_the_sync_assets_write_position_updates_to_s3(
    s3_server: S3Server, bucket: str, s3_lake: str, sim: GatewayThread, sim_state: GatewayState
) -> None:
    """The real resources and IO manager, as definitions.py builds them from the environment."""
    queue = LakeResource(root_uri=s3_lake).queue()
    holdings = list(sim_state.positions())[:12]
    ids = queue.insert_many([(h.contract.conid, h.contract.symbol, 2, h.account) for h in holdings])
    resources = build_resources(ib=IBResource(port=sim.port, connect_timeout=5, request_timeout=5))
    assert isinstance(resources["delta_io_manager"].storage_options, S3Config)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [position_queue, queued_positions, ib_snapshot, position_updates],
            selection=[queued_positions, ib_snapshot, position_updates],
            resources=resources,
            instance=instance,
            # The last two hours, so items queued just before an hour turned are still taken.
            tags=partition_range_tags(hour_key(datetime.now(UTC) - timedelta(hours=1)), hour_key(datetime.now(UTC))),
            raise_on_error=False,
        )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    uri = lake.table_uri(s3_lake, lake.POSITION_UPDATES_TABLE)
    rows = pl.scan_delta(DeltaTable(uri, storage_options=lake.storage_options_for(uri))).collect()
    assert sorted(rows["request_id"].to_list()) == sorted(ids)
    assert queue.counts()[QueueStatus.SUCCESS] == len(ids)
    assert set(rows["run_id"].to_list()) == {result.run_id}
    assert latest_positions(s3_lake).height == len({(h.account, h.contract.conid) for h in holdings})
    for table in (lake.QUEUE_TABLE, lake.POSITION_UPDATES_TABLE):
        assert_contiguous_log(s3_server, bucket, s3_lake, table)
    assert all(c.if_none_match == "*" and c.status == 200 for c in s3_server.commits(bucket))


# Two writers at once.

WRITERS = 2
BATCHES = 6
BATCH_SIZE = 4


def position_rows(batch: pl.DataFrame, run_id: str) -> pl.DataFrame:
    """position_updates rows for claimed queue items, as a sync run appends them."""
    now = datetime.now(UTC)
    n = batch.height
    return pl.DataFrame(
        {
            "request_id": batch["request_id"],
            "conid": batch["conid"],
            "account": ["DU1000001"] * n,
            "symbol": batch["symbol"],
            "sec_type": ["STK"] * n,
            "right": [None] * n,
            "strike": [None] * n,
            "expiry": [None] * n,
            "multiplier": [None] * n,
            "currency": ["USD"] * n,
            "local_symbol": batch["symbol"],
            "position": [100.0] * n,
            "average_cost": [10.0] * n,
            "market_price": [11.0] * n,
            "market_value": [1100.0] * n,
            "unrealized_pnl": [100.0] * n,
            "realized_pnl": [0.0] * n,
            "account_update_time": [None] * n,
            "queued_at": batch["created_at"],
            "snapshot_at": [now] * n,
            "run_id": [run_id] * n,
            "snapshot_date": [now.date()] * n,
            **{name: [None] * n for name in lake.DESK_VALUES},
        },
        schema=lake.POSITION_UPDATES_SCHEMA,
    )


def concurrent_writer(name: str, root: str, start: Any, results: Any) -> None:
    """One writer process: BATCHES times claim a batch, append its rows in one commit, mark it SUCCESS.

    The same calls LakeResource makes (`lake.storage_options_for` from this process's environment). Reports the
    request ids of each claim, or the error.
    """
    try:
        options = lake.storage_options_for(root)
        queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE), options)
        uri = lake.ensure_position_updates_table(root, options)
        start.wait(timeout=30)
        claims = []
        for number in range(BATCHES):
            batch = queue.claim(None, BATCH_SIZE, claimed_by=name)
            write_deltalake(
                uri,
                position_rows(batch, name).to_arrow().cast(lake.POSITION_UPDATES_ARROW_SCHEMA),
                mode="append",
                storage_options=options,
                commit_properties=CommitProperties(custom_metadata={"writer": name, "batch": str(number)}),
            )
            queue.mark_success(batch["request_id"].to_list(), claimed_by=name)
            claims.append(batch["request_id"].to_list())
        results.put((name, claims, None))
    except Exception as exc:  # reported to the test, which fails with it
        results.put((name, [], repr(exc)))


def test_two_writers_commit_to_both_tables_at_once(s3_server: S3Server, bucket: str, s3_lake: str) -> None:
    """Two processes claim from one queue and append to one table concurrently: every commit lands, once."""
    options = lake.storage_options_for(s3_lake)
    queue = PositionQueue(lake.table_uri(s3_lake, lake.QUEUE_TABLE), options)
    total = WRITERS * BATCHES * BATCH_SIZE
    ids = queue.insert_many([(1000 + i, f"S{i}") for i in range(total)])
    lake.ensure_position_updates_table(s3_lake, options)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(WRITERS)
    results = context.Queue()
    names = [f"writer-{i}" for i in range(WRITERS)]
    processes = [context.Process(target=concurrent_writer, args=(n, s3_lake, start, results)) for n in names]
    # Their first claims read the same queue version and commit the next one at the same moment: one must lose.
    s3_server.race_next_commits(WRITERS)
    for process in processes:
        process.start()
    try:
        reports = [results.get(timeout=45) for _ in names]
    except stdlib_queue.Empty:
        pytest.fail("a writer did not finish in 45 s")
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    assert [error for _, _, error in reports] == [None] * WRITERS
    claimed = [request_id for _, claims, _ in reports for batch in claims for request_id in batch]
    assert all(len(batch) == BATCH_SIZE for _, claims, _ in reports for batch in claims)
    assert sorted(claimed) == sorted(ids)  # every item claimed, none twice

    final = queue.read()
    assert final["status"].to_list() == [QueueStatus.SUCCESS.value] * total
    assert final["claims"].to_list() == [1] * total
    uri = lake.table_uri(s3_lake, lake.POSITION_UPDATES_TABLE)
    table = DeltaTable(uri, storage_options=options)
    rows = pl.scan_delta(table).collect()
    assert rows.height == total
    assert sorted(rows["request_id"].to_list()) == sorted(ids)
    # Every append landed as its own version: one per (writer, batch), none lost or repeated.
    appended = sorted((c["writer"], c["batch"]) for c in table.history() if "writer" in c)
    assert appended == sorted((n, str(b)) for n in names for b in range(BATCHES))
    for name, claims, _ in reports:
        assert rows.filter(pl.col("run_id") == name).height == len(claims) * BATCH_SIZE
    assert assert_contiguous_log(s3_server, bucket, s3_lake, lake.POSITION_UPDATES_TABLE) == WRITERS * BATCHES
    assert_contiguous_log(s3_server, bucket, s3_lake, lake.QUEUE_TABLE)
    commits = s3_server.commits(bucket)
    assert all(c.if_none_match == "*" for c in commits)
    refused = [c for c in commits if c.status == 412]
    assert any(f"/{lake.QUEUE_TABLE}/" in c.path for c in refused)  # the racing claim lost, re-read, claimed others
    print(f"{len(commits)} commit PUTs, {len(refused)} refused by put-if-absent and retried")


def test_an_append_that_loses_the_race_lands_at_the_next_version(
    s3_server: S3Server, bucket: str, s3_lake: str
) -> None:
    """Two appends commit version 1 at the same moment: the store refuses one, and delta-rs commits it as version 2."""
    options = lake.storage_options_for(s3_lake)
    uri = lake.ensure_position_updates_table(s3_lake, options)
    queue = PositionQueue(lake.table_uri(s3_lake, lake.QUEUE_TABLE), options)
    queue.insert_many([(1, "A"), (2, "B")])
    items = queue.read()

    def append(index: int) -> None:
        rows = position_rows(items[index : index + 1], f"run-{index}")
        write_deltalake(
            uri, rows.to_arrow().cast(lake.POSITION_UPDATES_ARROW_SCHEMA), mode="append", storage_options=options
        )

    s3_server.race_next_commits(2)
    threads = [threading.Thread(target=append, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=40)
    assert not any(thread.is_alive() for thread in threads)
    table = DeltaTable(uri, storage_options=options)
    assert sorted(pl.scan_delta(table).collect()["run_id"].to_list()) == ["run-0", "run-1"]
    assert assert_contiguous_log(s3_server, bucket, s3_lake, lake.POSITION_UPDATES_TABLE) == 2
    updates = [c for c in s3_server.commits(bucket) if f"/{lake.POSITION_UPDATES_TABLE}/" in c.path]
    assert [(c.path[-25:], c.status) for c in updates] == [
        ("00000000000000000000.json", 200),
        ("00000000000000000001.json", 200),
        ("00000000000000000001.json", 412),
        ("00000000000000000002.json", 200),
    ]


# The operator's commands.


def test_status_and_positions_commands_read_an_s3_lake(
    s3_server: S3Server, s3_lake: str, capsys: pytest.CaptureFixture[str]
) -> None:
    queue = LakeResource(root_uri=s3_lake).queue()
    ids = queue.insert_many([(265598, "AAPL"), (272093, "MSFT"), (8314, "IBM")])
    batch = queue.claim(None, 2, claimed_by="run-a")
    uri = lake.ensure_position_updates_table(s3_lake)
    write_deltalake(
        uri,
        position_rows(batch, "run-a").to_arrow().cast(lake.POSITION_UPDATES_ARROW_SCHEMA),
        mode="append",
        storage_options=lake.storage_options_for(uri),
    )
    queue.mark_success(batch["request_id"].to_list(), claimed_by="run-a")

    status = collect_status(s3_lake)
    assert (status.queue.exists, status.position_updates.rows) == (True, 2)
    assert status.by_status == {"PENDING": 1, "PROCESSING": 0, "SUCCESS": 2, "FAILED": 0}
    assert status.last_batch is not None and status.last_batch.run_id == "run-a"

    def command(*argv: str) -> str:
        with pytest.raises(SystemExit) as exited:
            cli.main(list(argv))
        out, err = capsys.readouterr()
        assert exited.value.code == 0, err
        return out

    report = json.loads(command("status", "--json"))  # the lake from POSITION_LAKE_URI
    assert report["lake"] == s3_lake
    assert report["queue"]["by_status"] == {"PENDING": 1, "PROCESSING": 0, "SUCCESS": 2, "FAILED": 0}
    assert report["position_updates"]["table"] == uri
    assert report["position_updates"]["rows"] == 2
    positions = json.loads(command("positions", "--format", "json", "--lake", s3_lake))
    assert sorted(p["request_id"] for p in positions) == sorted(ids[:2])
    assert "2 positions" in command("positions")
    counts = json.loads(command("queue", "counts", "--json"))
    assert (counts["exists"], counts["total"]) == (True, 3)
