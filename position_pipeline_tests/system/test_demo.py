"""`position-pipeline demo` as a newcomer runs it: rows appear in the lake, and Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline_tests.support import REPO
from position_pipeline_tests.support.services import free_port, pipeline_env, port_closed
from position_pipeline_tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(400)


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
    env = pipeline_env(tmp_path / "home", tmp_path / "lake", ib_port)  # the demo makes its DAGSTER_HOME itself
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
        deadline = time.monotonic() + 240  # one bound for the UI and the first rows together

        def last(count: int) -> Callable[[], str]:
            return lambda: "".join(output[-count:])

        def left() -> float:
            return deadline - time.monotonic()

        address = f"Dagster UI: http://127.0.0.1:{ui_port}"
        wait_until(
            lambda: any(address in line for line in output),
            left(),
            "the UI address printed",
            process=process,
            explain=last(50),
            poll=0.5,
        )
        # The instance config the demo runs under is the repository's (run monitoring, the sync concurrency limit).
        assert (tmp_path / "home" / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()

        updates = Path(lake.table_uri(str(tmp_path / "lake"), lake.POSITION_UPDATES_TABLE))
        wait_until(
            lambda: (updates / "_delta_log").exists() and len(DeltaTable(str(updates)).to_pyarrow_table()) > 0,
            left(),
            "rows written",
            process=process,
            explain=last(80),
            poll=1,
        )

        process.send_signal(signal.SIGINT)
        assert process.wait(90) == 0, "".join(output[-50:])
        assert any("demo stopped" in line for line in output)
        assert port_closed(ui_port) and port_closed(ib_port)
        home = str(tmp_path / "home")
        wait_until(
            lambda: not processes_with_env(home),
            15,
            "the demo's processes gone",
            explain=lambda: str(processes_with_env(home)),
            poll=0.5,
        )
        assert processes_with_env(home) == []  # dagster dev, webserver, daemon, run workers
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
