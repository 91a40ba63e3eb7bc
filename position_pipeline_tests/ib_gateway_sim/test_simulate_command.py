"""`position-pipeline simulate` as a user runs it: a real process, flags, the state file, Ctrl-C."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from ib_async import IB

from position_pipeline_tests.support.waiting import run_bounded, wait_until

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]  # each test starts the command as a process
COMMAND = [sys.executable, "-m", "position_pipeline", "simulate"]


class Running:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for_line(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no output line matching {pattern!r} within {timeout} s")


@contextmanager
def simulate(*flags: str) -> Iterator[Running]:
    process = subprocess.Popen(
        [*COMMAND, *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    try:
        yield Running(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def positions_from(port: int) -> set[tuple[str, int, float]]:
    async def main() -> set[tuple[str, int, float]]:
        ib = IB()
        await ib.connectAsync("127.0.0.1", port, clientId=1, readonly=True, timeout=5)
        try:
            return {(p.account, p.contract.conId, p.position) for p in await ib.reqPositionsAsync()}
        finally:
            ib.disconnect()

    return run_bounded(main())


def test_simulate_serves_its_state_writes_it_out_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    flags = ["--port", "0", "--positions", "200", "--accounts", "3", "--seed", "7", "--state-out", str(state_file)]
    with simulate(*flags) as running:
        port = int(running.wait_for_line(r"^Simulated IB Gateway listening on 127\.0\.0\.1:(\d+)").group(1))
        state = json.loads(state_file.read_text())
        assert state["accounts"] == ["DU1000001", "DU1000002", "DU1000003"]
        assert len(state["positions"]) == 200
        assert {p["sec_type"] for p in state["positions"]} == {"STK", "OPT", "FUT", "CASH"}
        option = next(p for p in state["positions"] if p["sec_type"] == "OPT")
        stock = next(p for p in state["positions"] if p["sec_type"] == "STK")
        assert option["right"] in ("C", "P") and option["strike"] > 0 and option["multiplier"] == "100"
        assert (stock["right"], stock["strike"], stock["expiry"]) == (None, None, None)
        for key in ("conid", "symbol", "quantity", "market_price", "market_value", "average_cost"):
            assert key in option
        assert positions_from(port) == {(p["account"], p["conid"], p["quantity"]) for p in state["positions"]}

        running.process.send_signal(signal.SIGINT)
        assert running.process.wait(15) == 0
        running.wait_for_line(r"Simulated IB Gateway stopped")


def test_same_seed_gives_the_same_state(tmp_path: Path) -> None:
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in files:
        with simulate("--port", "0", "--positions", "50", "--seed", "11", "--state-out", str(path)) as running:
            running.wait_for_line("^Simulated IB Gateway listening on")
    assert json.loads(files[0].read_text())["positions"] == json.loads(files[1].read_text())["positions"]


def test_down_for_refuses_connections_at_first(tmp_path: Path) -> None:
    with simulate("--port", "0", "--positions", "10", "--down-for", "2") as running:
        port = int(running.wait_for_line(r"^Simulated IB Gateway listening on 127\.0\.0\.1:(\d+)").group(1))
        running.wait_for_line("Refusing connections for the first 2 s")
        with pytest.raises(ConnectionRefusedError):
            positions_from(port)
        served = wait_until(
            lambda: positions_from(port), 10, "connections accepted", ignoring=(ConnectionRefusedError,)
        )
        assert len(served) == 10


def test_help_documents_every_flag() -> None:
    out = subprocess.run([*COMMAND, "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
    for flag in (
        "--host", "--port", "--positions", "--accounts", "--seed", "--state", "--state-out", "--price-interval",
        "--portfolio-refresh", "--down-for", "--drop-after", "--drop-mid-positions", "--reply-delay",
        "--no-position-end", "--no-account-download-end", "--pacing-limit", "--lock-client-id", "--log-level",
    ):  # fmt: skip
        assert flag in out, flag


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "70000"], "is not a TCP port"),
        (["--accounts", "0"], "--accounts >= 1"),
        (["--reply-delay", "-1"], "--reply-delay must be >= 0"),
        (["--state", "/nonexistent/state.json"], "cannot load --state"),
    ],
)
def test_bad_flags_exit_with_a_message(flags: list[str], message: str) -> None:
    result = subprocess.run([*COMMAND, *flags], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert message in result.stderr


def test_a_port_in_use_is_a_clear_error() -> None:
    with simulate("--port", "0", "--positions", "1") as running:
        port = running.wait_for_line(r"^Simulated IB Gateway listening on 127\.0\.0\.1:(\d+)").group(1)
        result = subprocess.run([*COMMAND, "--port", port], capture_output=True, text=True, timeout=30)
        assert result.returncode != 0
        assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_loads_a_state_file(tmp_path: Path) -> None:
    first = tmp_path / "first.json"
    with simulate("--port", "0", "--positions", "30", "--seed", "2", "--state-out", str(first)) as running:
        running.wait_for_line("^Simulated IB Gateway listening on")
    data = json.loads(first.read_text())
    with simulate("--port", "0", "--state", str(first), "--price-interval", "0") as running:
        port = int(running.wait_for_line(r"^Simulated IB Gateway listening on 127\.0\.0\.1:(\d+)").group(1))
        assert positions_from(port) == {(p["account"], p["conid"], p["quantity"]) for p in data["positions"]}
