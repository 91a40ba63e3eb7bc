"""A simulated IB Gateway: a TWS API socket-protocol server on loopback for tests, demos and benchmarks.

Self-contained (imports nothing else from position_pipeline) so it can be used on its own. Layers, each usable
alone: `framing` (bytes), `messages` (ids and layouts per server version), `contracts` (the records),
`universe` (what a generated desk holds), `ledger` (an account's valuation and account values), `state`
(accounts, positions, prices, rates, the valuations told), `dump` (state as JSON), `faults` (what goes wrong),
`filler` and `garbage` (what a real download adds, what a broken server sends), `hub`, `request_fields`,
`replies`, `account_updates`, `pnl`, `positions` and `session` (protocol, no I/O), `server` (asyncio and the control
API).
"""

from .contracts import Contract, Holding, Valuation
from .faults import Faults
from .hub import RequestRecord
from .ledger import AccountValuation
from .messages import MAX_SERVER_VERSION, MIN_SERVER_VERSION, ErrorCode
from .server import GatewayThread, SimulatedGateway
from .state import DEFAULT_TIMEZONE, GatewayState

__all__ = [
    "DEFAULT_TIMEZONE",
    "MAX_SERVER_VERSION",
    "MIN_SERVER_VERSION",
    "AccountValuation",
    "Contract",
    "ErrorCode",
    "Faults",
    "GatewayState",
    "GatewayThread",
    "Holding",
    "RequestRecord",
    "SimulatedGateway",
    "Valuation",
]
