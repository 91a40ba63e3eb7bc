"""deploy/dagster.postgres.yaml against a real, throwaway PostgreSQL server: runs and event logs land in PostgreSQL,
and purge_runs and the purge_run_history job delete them there."""

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg2
import pytest
import yaml

from position_pipeline.defs.dagster_internals import freeze_time
from position_pipeline.defs.run_retention import purge_run_history, purge_runs
from position_pipeline_tests.support import REPO
from position_pipeline_tests.support.services import dagster_home, free_port

DEPLOY_FILE = REPO / "deploy" / "dagster.postgres.yaml"
PG_USER = "dagster"
PG_PASSWORD = "not-a-secret 'quoted' @:/"  # characters a connection URL must escape
INITDB_OPTIONS = ["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"]


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int

    def connect(self, dbname: str = "postgres") -> Any:
        return psycopg2.connect(
            host=self.host, port=self.port, user=PG_USER, password=PG_PASSWORD, dbname=dbname, connect_timeout=10
        )


def postgres_bin_dir() -> Path | None:
    """The newest server from Debian's packages (`postgresql-NN`), which `.ci/run` installs."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")]
    return max(found, key=lambda p: [int(part) for part in p.parent.name.split(".") if part.isdigit()], default=None)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A server of its own on a free loopback port, with password authentication, stopped whatever happens.

    PostgreSQL refuses to run as root: as root the server runs as the `postgres` user, in a folder it owns (pytest's
    tmp_path is private to root, hence a folder of our own under the system temp dir)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server on this machine (/usr/lib/postgresql/*/bin/pg_ctl); .ci/run installs one")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="position-pipeline-pg-"))
    data, password_file, server_log = root / "data", root / "password", root / "server.log"
    password_file.write_text(PG_PASSWORD + "\n")
    if as_postgres:
        shutil.chown(root, "postgres")
        shutil.chown(password_file, "postgres")

    def run(*args: str) -> None:
        done = subprocess.run([*as_postgres, *args], cwd=root, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            log = server_log.read_text() if server_log.exists() else ""
            pytest.fail(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{log}")

    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", "30"]  # waits bounded at 30 s
    port = free_port()
    server = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={password_file}", *INITDB_OPTIONS)
        run(*pg_ctl, "-l", str(server_log), "-o", server, "start")
        yield PostgresServer("127.0.0.1", port)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*as_postgres, *pg_ctl, "-m", "immediate", "stop"], cwd=root, capture_output=True, timeout=60
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    """A new database for each test, so each starts from Dagster's empty schema."""
    name = f"dagster_{uuid.uuid4().hex[:12]}"
    conn = postgres.connect()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return name


@pytest.fixture
def instance(
    postgres: PostgresServer, database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    """The instance an operator gets: deploy/dagster.postgres.yaml as $DAGSTER_HOME/dagster.yaml and the env vars."""
    home = dagster_home(tmp_path / "dagster_home", DEPLOY_FILE)
    for name, value in {
        "DAGSTER_PG_USERNAME": PG_USER,
        "DAGSTER_PG_PASSWORD": PG_PASSWORD,
        "DAGSTER_PG_HOST": postgres.host,
        "DAGSTER_PG_DB": database,
        "DAGSTER_PG_PORT": str(postgres.port),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as loaded:
        yield loaded


def rows(postgres: PostgresServer, database: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = postgres.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def stored_runs(postgres: PostgresServer, database: str) -> dict[str, str]:
    return dict(rows(postgres, database, "SELECT run_id, status FROM runs"))  # type: ignore[arg-type]


def event_counts(postgres: PostgresServer, database: str) -> dict[str, int]:
    return dict(rows(postgres, database, "SELECT run_id, count(*) FROM event_logs GROUP BY run_id"))  # type: ignore[arg-type]


@dg.op
def tiny_step(context: dg.OpExecutionContext) -> int:
    context.log.info("a line in the event log")
    return 1


@dg.job(executor_def=dg.in_process_executor, tags={"pipeline": "test"})
def tiny_job() -> None:
    tiny_step()


def run_tiny(instance: dg.DagsterInstance) -> str:
    result = tiny_job.execute_in_process(instance=instance)
    assert result.success
    return result.run_id


def test_deploy_file_is_the_dev_instance_plus_postgres_storage() -> None:
    deploy = yaml.safe_load(DEPLOY_FILE.read_text())
    dev = yaml.safe_load((REPO / "dagster.yaml").read_text())
    storage = deploy.pop("storage")
    assert deploy == dev
    assert storage == {
        "postgres": {
            "postgres_db": {
                "username": {"env": "DAGSTER_PG_USERNAME"},
                "password": {"env": "DAGSTER_PG_PASSWORD"},
                "hostname": {"env": "DAGSTER_PG_HOST"},
                "db_name": {"env": "DAGSTER_PG_DB"},
                "port": {"env": "DAGSTER_PG_PORT"},
                "scheme": "postgresql+psycopg2",
            }
        }
    }


def test_runs_and_event_logs_are_stored_in_postgres_and_purged_there(
    instance: dg.DagsterInstance, postgres: PostgresServer, database: str
) -> None:
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"

    finished = [run_tiny(instance) for _ in range(4)]
    active = instance.add_run(
        dg.DagsterRun(job_name="tiny_job", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED)
    )
    instance.report_engine_event("worker says hello", active)

    runs = stored_runs(postgres, database)
    assert runs == {**dict.fromkeys(finished, "SUCCESS"), active.run_id: "STARTED"}
    events = event_counts(postgres, database)
    assert all(events[run_id] >= 5 for run_id in finished)  # start, step, log line, output, success ...
    assert rows(postgres, database, "SELECT count(*) FROM run_tags WHERE key = 'pipeline'") == [(4,)]

    assert purge_runs(instance, timedelta(days=7), now=datetime.now(UTC) + timedelta(days=8), batch_size=3) == 4

    assert stored_runs(postgres, database) == {active.run_id: "STARTED"}
    assert event_counts(postgres, database) == {active.run_id: 1}
    assert rows(postgres, database, "SELECT count(*) FROM run_tags WHERE key = 'pipeline'") == [(0,)]


def test_purge_job_runs_in_the_postgres_instance(
    instance: dg.DagsterInstance, postgres: PostgresServer, database: str
) -> None:
    with freeze_time(datetime.now(UTC) - timedelta(days=10)):
        old = [run_tiny(instance) for _ in range(3)]
    recent = run_tiny(instance)

    result = purge_run_history.execute_in_process(instance=instance)

    assert result.success
    assert result.output_for_node("purge_finished_runs") == 3
    assert set(stored_runs(postgres, database)) == {recent, result.run_id}
    assert not set(event_counts(postgres, database)) & set(old)
    assert stored_runs(postgres, database)[result.run_id] == "SUCCESS"
