"""Fixtures of the simulator's session tests: hubs over a generated and a hand-made gateway state."""

from __future__ import annotations

import pytest

from position_pipeline.ib_gateway_sim.hub import Hub
from position_pipeline.ib_gateway_sim.state import GatewayState
from position_pipeline_tests.support.session_driver import AAPL, AAPL_CALL, MSFT


@pytest.fixture
def hub(sim_state: GatewayState) -> Hub:
    """The generated three-account state shared by all sessions."""
    return Hub(sim_state)


@pytest.fixture
def small_hub() -> Hub:
    """Two accounts and hand-made positions, so that replies can be written out field by field."""
    state = GatewayState(accounts=["DU1", "DU2"])
    state.set_position("DU1", AAPL, 100.0, average_cost=150.25, market_price=151.5)
    state.set_position("DU1", AAPL_CALL, -3.0, average_cost=512.5, market_price=6.0)
    state.set_position("DU2", MSFT, 20.0, average_cost=400.0, market_price=415.0)
    return Hub(state)
