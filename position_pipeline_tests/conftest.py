"""Fixtures shared by every test tier: a lake under tmp_path with its queue, and a simulated gateway on a free
loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread, SimulatedGateway


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
