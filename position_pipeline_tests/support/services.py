"""What the system tests share to start the pipeline's processes: free ports, a DAGSTER_HOME, the environment the
code location reads, and stopping a process group whatever state it is in."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

from position_pipeline.core import lake
from position_pipeline_tests.support import REPO
from position_pipeline_tests.support.waiting import wait_until

DEV_INSTANCE = REPO / "dagster.yaml"
"""The instance configuration `dagster dev` and the daemon run with in development."""


def free_port() -> int:
    """A TCP port free on loopback right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_closed(port: int) -> bool:
    """Nothing accepts connections on loopback at `port`."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def dagster_home(folder: Path, instance_file: Path = DEV_INSTANCE) -> Path:
    """`folder` made a DAGSTER_HOME whose dagster.yaml is a copy of `instance_file`; a SQLite instance's storages
    are created here, once: processes started together (the daemon, its code server, a CLI) each stamp a fresh
    database's schema version, and two stamps make alembic refuse it ("more than one head present")."""
    folder.mkdir(parents=True)
    shutil.copy(instance_file, folder / "dagster.yaml")
    if instance_file == DEV_INSTANCE:
        with instance_at(folder) as instance:
            instance.get_runs(limit=1)
            instance.all_instigator_state()
            instance.get_latest_materialization_events([dg.AssetKey("position_updates")])
    return folder


def pipeline_env(home: Path, lake_root: str | Path, ib_port: int, **extra: str) -> dict[str, str]:
    """This process's environment plus what the code location reads: its instance, its lake, the gateway's port."""
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        lake.LAKE_URI_VARIABLE: str(lake_root),
        "IB_PORT": str(ib_port),
        **extra,
    }


def terminate_group(process: subprocess.Popen[Any]) -> None:
    """SIGTERM to the process's group (started with start_new_session), then SIGKILL, each wait bounded."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if process.poll() is None:
            os.killpg(process.pid, sig)
            try:
                process.wait(wait)
            except subprocess.TimeoutExpired:
                continue


def group_gone(group: int) -> bool:
    """No process of `group` is left."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


def wait_until_group_gone(group: int, timeout: float = 15) -> None:
    """The group's last members (run workers, code servers) exit a moment after their leader; wait for them, and
    kill whatever is left after `timeout`."""
    try:
        wait_until(lambda: group_gone(group), timeout, f"process group {group} gone", poll=0.2)
    except AssertionError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


@contextlib.contextmanager
def instance_at(home: str | Path) -> Iterator[dg.DagsterInstance]:
    """The Dagster instance in `home`, loaded as the daemon loads it (DAGSTER_HOME set meanwhile, then unset)."""
    before = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            yield instance
    finally:
        if before is None:
            del os.environ["DAGSTER_HOME"]
        else:
            os.environ["DAGSTER_HOME"] = before
