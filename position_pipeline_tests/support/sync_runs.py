"""The sync assets as tests materialize them: the asset list, and resources pointing at a lake and a simulator."""

from __future__ import annotations

from typing import Any

from position_pipeline.defs.assets import ib_snapshot, position_queue, position_updates, queued_positions
from position_pipeline.defs.resources import IBResource, build_resources
from position_pipeline.ib_gateway_sim import GatewayThread

ASSETS = [position_queue, queued_positions, ib_snapshot, position_updates]
"""The graph with its source, `position_queue`, so a run can record the write-back as its materialization."""
SYNC = [queued_positions, ib_snapshot, position_updates]
"""What a sync run materializes."""


def sim_resources(root: str, sim: GatewayThread, **ib: Any) -> dict[str, Any]:
    """The code location's resources on `root`, reading the simulator with timeouts short enough for tests."""
    return build_resources(root, IBResource(port=sim.port, request_timeout=2, connect_timeout=3, **ib))
