"""Fixtures shared by every test tier: a simulated gateway on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
