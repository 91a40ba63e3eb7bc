"""`position-pipeline demo`: the whole pipeline on one machine with no IB anywhere.

Starts the simulated IB Gateway (on IB_PORT, default 4002), `dagster dev` with this code location and its sensor on,
and a producer that keeps enqueueing contracts the gateway holds plus a few it does not. Ctrl-C (or SIGTERM) stops
everything it started: the producer, `dagster dev` with its webserver, daemon and run workers, and the gateway.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from position_pipeline.cli.number_args import integer_argument, seconds_argument

if TYPE_CHECKING:
    from position_pipeline.cli.parser import Subcommands
    from position_pipeline.ib_gateway_sim import GatewayState

log = logging.getLogger(__name__)
REPO_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"
"""The repository's instance config (run monitoring, the sync runs' concurrency limit), copied into a new
DAGSTER_HOME."""
UNKNOWN_CONID = 99_000_000


def register(commands: Subcommands) -> None:
    """`demo` on the top-level parser's subcommands."""
    parser = commands.add_parser(
        "demo",
        help="run the whole pipeline on the simulated gateway: gateway, dagster dev with the sensor, a producer",
        description=(
            "Start the simulated IB Gateway (IB_PORT, default 4002), `dagster dev` with this code location and its "
            "sensor on (DAGSTER_HOME, default ./.dagster_home; lake POSITION_LAKE_URI, default ./.lake) and a "
            "producer; print the UI address. Ctrl-C stops everything it started."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `demo`: the UI port, the simulated gateway's holdings and the producer's pace."""
    parser.add_argument(
        "--ui-port", type=integer_argument, default=3000, help="Dagster UI port on 127.0.0.1 (default: %(default)s)"
    )
    parser.add_argument(
        "--positions", type=integer_argument, default=200, help="positions the gateway holds (default: %(default)s)"
    )
    parser.add_argument("--accounts", type=integer_argument, default=3, help="paper accounts (default: %(default)s)")
    parser.add_argument(
        "--seed", type=integer_argument, default=7, help="seed of the simulated state (default: %(default)s)"
    )
    parser.add_argument(
        "--enqueue-every",
        type=seconds_argument,
        default=3.0,
        metavar="SECONDS",
        help="producer interval (default: %(default)s)",
    )
    parser.add_argument(
        "--per-tick", type=integer_argument, default=10, help="items per producer tick (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    from position_pipeline.core import lake, terms
    from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread, SimulatedGateway

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists() and REPO_DAGSTER_YAML.exists():
        shutil.copy(REPO_DAGSTER_YAML, home / "dagster.yaml")
    root = lake.lake_root()
    port = int(os.environ.get("IB_PORT", terms.IB_PORT))
    state = GatewayState.generate(positions=args.positions, accounts=args.accounts, seed=args.seed)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    try:
        gateway = GatewayThread(lambda: SimulatedGateway(state, port=port)).start()
    except OSError as exc:
        raise SystemExit(f"demo: cannot start the simulated gateway on 127.0.0.1:{port}: {exc} (set IB_PORT)") from exc
    env = {**os.environ, "DAGSTER_HOME": str(home), lake.LAKE_URI_VARIABLE: root, "IB_PORT": str(gateway.port)}
    dagster = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-m", "position_pipeline.definitions",
         "-h", "127.0.0.1", "-p", str(args.ui_port)],
        env=env,
        start_new_session=True,
    )  # fmt: skip
    producer = threading.Thread(target=_produce, args=(root, state, args, stop), name="producer", daemon=True)
    try:
        url = f"http://127.0.0.1:{args.ui_port}"
        if _wait_for_ui(url, stop, dagster):
            print(f"\nDagster UI: {url}   (simulated IB Gateway on 127.0.0.1:{gateway.port}, lake {root})", flush=True)
            print("Producer enqueueing; the sensor position_sync_sensor runs every 5 s. Ctrl-C stops everything.\n")
            producer.start()
            while not stop.wait(0.5):
                if dagster.poll() is not None:
                    print(f"dagster dev exited with {dagster.returncode}", flush=True)
                    return 1
            return 0
        if stop.is_set():
            return 0
        print(f"demo: the Dagster UI did not come up at {url} (dagster dev exit code {dagster.poll()})", flush=True)
        return 1
    finally:
        stop.set()
        stop_process_group(dagster)
        gateway.stop()
        print("demo stopped: producer, dagster dev and the simulated gateway are down", flush=True)


def _produce(root: str, state: GatewayState, args: argparse.Namespace, stop: threading.Event) -> None:
    """Enqueue held contracts (with their account) and, now and then, one the gateway does not hold."""
    from position_pipeline.core import lake
    from position_pipeline.core.queue import PositionQueue

    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    holdings = list(state.positions())
    rng = random.Random(args.seed)
    while not stop.wait(args.enqueue_every):
        items: list[dict[str, object]] = [
            {"conid": h.contract.conid, "symbol": h.contract.symbol, "account": h.account}
            for h in rng.sample(holdings, min(args.per_tick, len(holdings)))
        ]
        if rng.random() < 0.3:
            items.append({"conid": UNKNOWN_CONID + rng.randint(0, 999), "symbol": "UNHELD"})
        try:
            queue.insert_many(items)
            log.info("producer enqueued %d items", len(items))
        except Exception:  # a producer hiccup must not end the demo
            log.exception("producer failed to enqueue; trying again next tick")


def _wait_for_ui(url: str, stop: threading.Event, dagster: subprocess.Popen[bytes], timeout: float = 180) -> bool:
    deadline = time.monotonic() + timeout
    while not stop.is_set() and dagster.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                return True
        except OSError:
            stop.wait(0.5)
    return False


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGINT first (dagster dev shuts its children down), then SIGTERM, then SIGKILL; never waits forever."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the group may outlive its leader: make sure workers are gone too
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
