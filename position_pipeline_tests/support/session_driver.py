"""Driving the simulator's per-connection protocol state machine (Session) with bytes and no sockets, as the
ib_gateway_sim/test_session_*.py tests do: frames in, the field lists it answers, and hand-made contracts."""

from __future__ import annotations

import re

from position_pipeline.ib_gateway_sim.framing import HANDSHAKE_PREFIX, Field, FrameDecoder, encode_frame, encode_raw
from position_pipeline.ib_gateway_sim.hub import Hub
from position_pipeline.ib_gateway_sim.messages import In
from position_pipeline.ib_gateway_sim.session import Phase, Session
from position_pipeline.ib_gateway_sim.state import GatewayState
from position_pipeline_tests.support.sim_contracts import AAPL as AAPL  # the session tests' contracts
from position_pipeline_tests.support.sim_contracts import AAPL_CALL as AAPL_CALL
from position_pipeline_tests.support.sim_contracts import MSFT as MSFT

CONNECTION_TIME = re.compile(r"^\d{8} \d{2}:\d{2}:\d{2} [A-Z]{3,5}$")  # local time and zone: EST, EDT, JST
HH_MM = re.compile(r"^\d{2}:\d{2}$")
READ_ONLY = "The API interface is currently in Read-Only mode."


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def handshake(offer: str = "v157..178") -> bytes:
    return HANDSHAKE_PREFIX + encode_raw(offer.encode())


def start_api(client_id: int) -> bytes:
    return encode_frame([In.START_API, 2, client_id, ""])


def req(*fields: Field) -> bytes:
    return encode_frame(fields)


def sent(session: Session) -> list[list[str]]:
    """Everything the session wants to send since the last call, as field lists; asserts whole frames only."""
    decoder = FrameDecoder()
    frames = [payload for chunk in session.data_to_send() for payload in decoder.feed(chunk)]
    assert decoder.pending_bytes == 0
    return [payload.decode().split("\0")[:-1] for payload in frames]


def errors(frames: list[list[str]]) -> list[tuple[int, int]]:
    return [(int(f[2]), int(f[3])) for f in frames if f[0] == "4"]


def err(req_id: int, code: int, text: str) -> list[str]:
    """ERR_MSG as sent at server version 166+: version 2 and a trailing empty advancedOrderRejectJson."""
    return ["4", "2", str(req_id), str(code), text, ""]


def connect(hub: Hub, client_id: int = 1, offer: str = "v157..178", clock: Clock | None = None) -> Session:
    """A session past startApi with its greeting drained."""
    session = Session(hub, connection=client_id + 1000, clock=clock or Clock())
    session.receive_data(handshake(offer) + start_api(client_id))
    assert session.phase is Phase.READY, session.close_reason
    sent(session)
    return session


def account_with_positions(state: GatewayState) -> str:
    return next(h.account for h in state.positions())
