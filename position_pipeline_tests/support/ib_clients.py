"""The real ib_async client against a simulated gateway, as the ib_gateway_sim tests drive it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ib_async import IB

from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread, SimulatedGateway
from position_pipeline_tests.support.waiting import wait_until_async


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


def pushing_to(sim: GatewayThread, client_id: int) -> str | None:
    """The account the gateway has granted client `client_id` account updates for, its download delivered."""

    def look(gw: SimulatedGateway) -> str | None:
        session = gw.hub.sessions.get(client_id)
        return None if session is None else session.account_updates.pushing

    return sim.call(look)


@asynccontextmanager
async def holding_account_updates(
    sim: GatewayThread, account: str, client_id: int = 1, timeout: float = 5.0
) -> AsyncIterator[IB]:
    """An outside ib_async client (a trading bot) holding the account-updates slot for `account` while the block
    runs: IB then refuses every other client another account (2101) and shares this one. Connected, subscribed and
    granted by the gateway (its download delivered) before the block starts, disconnected however it ends; the
    client is the block's to use (to let go early: `ib.client.reqAccountUpdates(False, account)`)."""
    ib = await connect(sim, client_id, timeout)
    try:
        download = asyncio.ensure_future(ib.reqAccountUpdatesAsync(account))
        try:
            what = f"the gateway granting client {client_id} account updates for {account}"
            await wait_until_async(lambda: pushing_to(sim, client_id) == account, timeout, what)
            await asyncio.wait_for(download, timeout)  # ib_async saw the download's end too
        finally:
            download.cancel()  # a no-op once it ended
        yield ib
    finally:
        ib.disconnect()
