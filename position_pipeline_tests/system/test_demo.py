"""`position-pipeline demo` as a newcomer runs it: rows appear in the lake, and Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable

from position_pipeline.core import lake

pytestmark = pytest.mark.timeout(400)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def processes_with_env(marker: str) -> list[int]:
    """Every process whose environment mentions `marker` (all of the demo's children inherit its DAGSTER_HOME)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_demo_writes_rows_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    ui_port, ib_port = free_port(), free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "POSITION_LAKE_URI": str(tmp_path / "lake"),
        "IB_PORT": str(ib_port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "position_pipeline", "demo", "--ui-port", str(ui_port), "--enqueue-every", "1"],
        cwd=tmp_path,  # from anywhere, not only the repo root
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 240
        while not any(f"Dagster UI: http://127.0.0.1:{ui_port}" in line for line in output):
            assert process.poll() is None, "".join(output[-50:])
            assert time.monotonic() < deadline, "no UI address printed:\n" + "".join(output[-50:])
            time.sleep(0.5)

        updates = Path(lake.table_uri(str(tmp_path / "lake"), lake.POSITION_UPDATES_TABLE))
        while not ((updates / "_delta_log").exists() and len(DeltaTable(str(updates)).to_pyarrow_table()) > 0):
            assert process.poll() is None, "".join(output[-50:])
            assert time.monotonic() < deadline, "no rows written:\n" + "".join(output[-80:])
            time.sleep(1)

        process.send_signal(signal.SIGINT)
        assert process.wait(90) == 0, "".join(output[-50:])
        assert any("demo stopped" in line for line in output)
        assert port_closed(ui_port) and port_closed(ib_port)
        leftover_deadline = time.monotonic() + 15
        while processes_with_env(str(tmp_path / "home")) and time.monotonic() < leftover_deadline:
            time.sleep(0.5)
        assert processes_with_env(str(tmp_path / "home")) == []  # dagster dev, webserver, daemon, run workers
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
