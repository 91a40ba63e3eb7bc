"""A simulated IB Gateway: a TWS API socket-protocol server on loopback for tests, demos and benchmarks.

Self-contained (imports nothing else from position_pipeline) so it can be used on its own. Layers, each usable
alone: `framing` (bytes), `messages` (ids and layouts per server version), `state` (accounts, positions, prices),
`faults` (what goes wrong), `hub` and `session` (protocol, no I/O), `server` (asyncio and the control API).
"""

from .faults import Faults
from .hub import RequestRecord
from .messages import MAX_SERVER_VERSION, MIN_SERVER_VERSION, ErrorCode
from .server import GatewayThread, SimulatedGateway
from .state import Contract, GatewayState, Holding

__all__ = [
    "MAX_SERVER_VERSION",
    "MIN_SERVER_VERSION",
    "Contract",
    "ErrorCode",
    "Faults",
    "GatewayState",
    "GatewayThread",
    "Holding",
    "RequestRecord",
    "SimulatedGateway",
]
