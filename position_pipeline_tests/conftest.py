"""Fixtures shared by every test tier (a lake under tmp_path with its queue, a simulated gateway on a free
loopback port) and the rule that sorts each test into one tier: `pure`, `tables` or `system` (registered in
pyproject.toml; run the fast tier with `pytest -m "not system"`).

The rule needs no upkeep as tests come and go:
1. a tier marker on the test itself, its class or its module (`pytestmark`) wins;
2. every test under `system/` is `system`;
3. a test that uses (directly or through other fixtures) a fixture in `REAL_PARTS_FIXTURES` is `tables`;
4. every other test is `pure`.
A test elsewhere that starts processes (subprocess, multiprocessing's spawn) or is too slow for the fast tier carries
`@pytest.mark.system` itself (rule 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread, SimulatedGateway

TIERS = ("pure", "tables", "system")
"""pure: no files, no sockets, no subprocesses. tables: real Delta tables in temp folders, the simulator on loopback
in process, single Dagster runs on a temp instance. system: processes and services (daemon, dagster dev, PostgreSQL,
Chromium, the S3 server, the demo, spawned workers) and tests too slow for the fast tier."""

REAL_PARTS_FIXTURES = frozenset(
    {
        "tmp_path",  # folders: Delta tables, state files, DAGSTER_HOME
        "tmp_path_factory",
        "sim",  # the simulated gateway on a loopback socket
        "instance",  # dg.instance_for_test (a temp folder) in defs/ and system/
    }
)
"""Fixtures that make real parts; every fixture of the repo that builds a table, a gateway or an instance uses one
of these (`sim_state` is a GatewayState in memory: pure)."""

SYSTEM_DIR = Path(__file__).parent / "system"


def tier_of(item: pytest.Item) -> str:
    """The tier `item` belongs to, by the rule in this module's docstring."""
    for marker in item.iter_markers():
        if marker.name in TIERS:
            return marker.name
    if SYSTEM_DIR in Path(item.path).parents:
        return "system"
    if REAL_PARTS_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "tables"
    return "pure"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every collected test exactly one tier marker, so `-m pure|tables|system` selects by tier."""
    for item in items:
        tier = tier_of(item)
        if item.get_closest_marker(tier) is None:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture
def sim_state() -> GatewayState:
    """Three accounts with stocks, options, futures and forex; frozen prices so values can be compared exactly."""
    return GatewayState.generate(positions=60, accounts=3, seed=7)


@pytest.fixture
def sim(sim_state: GatewayState) -> Iterator[GatewayThread]:
    """A simulated gateway on a free port in its own thread; prices frozen unless a test moves them."""
    with GatewayThread(lambda: SimulatedGateway(sim_state, port=0, price_interval=None)) as gateway:
        yield gateway


@pytest.fixture
def root(tmp_path: Path) -> str:
    """A lake root that holds no table yet."""
    return str(tmp_path / "lake")


@pytest.fixture
def uri(root: str) -> str:
    """Where the queue table of `root` lives; absent until the first write."""
    return lake.table_uri(root, lake.QUEUE_TABLE)


@pytest.fixture
def queue(uri: str) -> PositionQueue:
    """The queue of `root` (created by its first write)."""
    return PositionQueue(uri)
