"""The real ib_async client against a simulated gateway, as the ib_gateway_sim tests drive it."""

from __future__ import annotations

from ib_async import IB

from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread


async def connect(sim: GatewayThread, client_id: int = 1, timeout: float = 5.0, **kwargs: object) -> IB:
    """A read-only ib_async client connected to `sim`."""
    ib = IB()
    await ib.connectAsync(sim.host, sim.port, clientId=client_id, readonly=True, timeout=timeout, **kwargs)
    return ib


def collect_errors(ib: IB) -> list[tuple[int, int, str]]:
    """A list that fills with every (req_id, code, text) error event `ib` receives from now on."""
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, text, contract: errors.append((req_id, code, text))
    return errors


def state_of(sim: GatewayThread) -> GatewayState:
    """The gateway's state, read on its own loop."""
    return sim.call(lambda gw: gw.state)
