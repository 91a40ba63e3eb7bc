"""What the IB reader tests share: settings for a simulated gateway, its state and request record, and checks
of what a read left behind."""

from __future__ import annotations

import time

import pytest

from position_pipeline.core.ib_reader import (
    HeldPosition,
    IBError,
    IBSettings,
    read_snapshot,
)
from position_pipeline.core.queue import PositionQueue
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread
from position_pipeline.ib_gateway_sim.hub import RequestRecord
from position_pipeline_tests.support.waiting import wait_until

NOT_HELD = 999_999_999  # no account holds this conid
# What the gateway sends from startApi until ib_async's connect-time reqPositions: the handshake reply,
# MANAGED_ACCTS, NEXT_VALID_ID and three farm notices.
MESSAGES_BEFORE_POSITIONS = 6


def settings_for(sim: GatewayThread, **changes: object) -> IBSettings:
    values: dict[str, object] = {"host": sim.host, "port": sim.port, "connect_timeout": 5.0, "request_timeout": 5.0}
    values.update(changes)
    return IBSettings(**values)  # type: ignore[arg-type]


def state_of(sim: GatewayThread) -> GatewayState:
    return sim.call(lambda gw: gw.state)


def conids_by_account(state: GatewayState) -> dict[str, set[int]]:
    held: dict[str, set[int]] = {account: set() for account in state.accounts}
    for holding in state.positions():
        held[holding.account].add(holding.contract.conid)
    return held


def holders_of(state: GatewayState) -> dict[int, set[str]]:
    """conid -> the accounts that hold it (closed-today positions included: IB still reports them)."""
    held: dict[int, set[str]] = {}
    for h in state.positions():
        held.setdefault(h.contract.conid, set()).add(h.account)
    return held


def held_only_by(state: GatewayState, account: str) -> set[int]:
    held = conids_by_account(state)
    others = set().union(*(conids for name, conids in held.items() if name != account))
    return held[account] - others


def desk_items(
    queue: PositionQueue, state: GatewayState, per_account: int = 3, pinned: bool = False
) -> dict[str, list[str]]:
    """Items for contracts held only in the first account, only in the second (`per_account` each), and one held in
    both; with `pinned`, also that shared contract pinned to the first account."""
    first, second, _ = state.accounts
    shared = next(c for c, accounts in sorted(holders_of(state).items()) if {first, second} <= accounts)
    items = {
        "first": queue.insert_many([(c, "S") for c in sorted(held_only_by(state, first))[:per_account]]),
        "second": queue.insert_many([(c, "S") for c in sorted(held_only_by(state, second))[:per_account]]),
        "shared": queue.insert_many([(shared, "S")]),
    }
    if pinned:
        items["pinned"] = queue.insert_many([{"conid": shared, "symbol": "S", "account": first}])
    return items


def assert_no_client_left(sim: GatewayThread, timeout: float = 5.0) -> None:
    wait_until(lambda: not sim.call(lambda gw: gw.connected_clients), timeout, "no connected client on the gateway")


def requests_of(sim: GatewayThread, client_id: int) -> list[RequestRecord]:
    return [r for r in sim.requests() if r.client_id == client_id]


def expect_error(kind: type[IBError], settings: IBSettings, conids: set[int], seed: str) -> tuple[IBError, float]:
    started = time.monotonic()
    with pytest.raises(kind) as caught:
        read_snapshot(settings, conids, seed)
    return caught.value, time.monotonic() - started


def assert_matches_state(position: HeldPosition, state: GatewayState) -> None:
    holding = state.holding(position.account, position.conid)
    assert holding is not None, f"{position.account}/{position.conid} is not in the simulator's state"
    c, value = holding.contract, state.valuation(holding)
    got = (
        position.symbol, position.sec_type, position.expiry, position.strike, position.right, position.multiplier,
        position.currency, position.local_symbol, position.trading_class, position.exchange,
        position.position, position.average_cost,
        position.market_price, position.market_value, position.unrealized_pnl, position.realized_pnl,
    )  # fmt: skip
    expected = (
        c.symbol, c.sec_type, c.expiry, c.strike, c.right, c.multiplier,
        c.currency, c.local_symbol, c.trading_class, c.exchange,
        holding.quantity, holding.average_cost,
        value.market_price, value.market_value, value.unrealized_pnl, value.realized_pnl,
    )  # fmt: skip
    assert got == expected, f"{position.account}/{position.conid}"


def pnl_ended(sim: GatewayThread) -> None:
    """A pnl-mode read left no PnL subscription open: it sends no cancels, and closing its connection ended them."""
    wait_until(
        lambda: not sim.call(lambda gw: gw.open_pnl_subscriptions),
        5.0,
        "the read's PnL subscriptions to end with its connection",
        explain=lambda: repr(sim.call(lambda gw: gw.open_pnl_subscriptions)[:5]),
    )
