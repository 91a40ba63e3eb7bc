"""What an IB read is told and what it returns: the settings, a held position with its values, and the snapshot of
one read. Plain records, shared by the reader (`ib_reader`) and its two ways to the values (`account_download`,
`pnl_values`). No Dagster here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ib_async import Contract

from position_pipeline.core import terms
from position_pipeline.core.account_download import AccountDownload
from position_pipeline.core.account_time import gateway_zone
from position_pipeline.core.ib_errors import Notices


@dataclass(frozen=True)
class IBSettings:
    """Where the gateway is and how long to wait; the resource fills it from its config."""

    host: str = terms.IB_HOST
    port: int = terms.IB_PORT
    client_id: int = terms.IB_CLIENT_ID
    client_id_span: int = terms.IB_CLIENT_ID_SPAN
    accounts: tuple[str, ...] = ()
    connect_timeout: float = terms.IB_CONNECT_TIMEOUT_S
    request_timeout: float = terms.IB_REQUEST_TIMEOUT_S
    client_id_attempts: int = 5
    gateway_tz: str = terms.IB_GATEWAY_TZ
    read_budget: float = terms.IB_READ_BUDGET_S
    values_from: terms.ValuesFrom = terms.IB_VALUES_FROM

    def __post_init__(self) -> None:
        gateway_zone(self.gateway_tz)  # refused here, before any connection: ValueError naming IB_GATEWAY_TZ
        object.__setattr__(self, "values_from", terms.values_from(self.values_from))  # ValueError listing the choices
        if not self.read_budget > 0 or not math.isfinite(self.read_budget):
            raise ValueError(f"IB_READ_BUDGET must be a positive number of seconds, got {self.read_budget!r}")

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def zone(self) -> ZoneInfo:
        return gateway_zone(self.gateway_tz)


@dataclass(frozen=True)
class HeldPosition:
    """A position with its contract and, when IB sent them, its values and what IB said about them: `position` and
    `average_cost` are those of the values' moment (the portfolio item, or the PnL message's position) when there is
    one, else the connect-time reqPositions figures, which `connect_position` always keeps."""

    account: str
    conid: int
    symbol: str
    sec_type: str
    expiry: str
    strike: float
    right: str
    multiplier: str
    currency: str
    local_symbol: str
    trading_class: str
    exchange: str
    position: float
    average_cost: float
    market_price: float | None = None
    market_value: float | None = None
    unrealized_pnl: float | None = None
    realized_pnl: float | None = None
    account_update_time: str | None = None
    values_as_of: datetime | None = None
    base_currency: str | None = None
    fx_rate: float | None = None
    connect_position: float | None = None
    daily_pnl: float | None = None
    values_from: terms.ValuesFrom = terms.ValuesFrom.ACCOUNT_UPDATES

    @classmethod
    def of(cls, account: str, c: Contract, exchange: str, **values: Any) -> HeldPosition:
        """`account`'s position in contract `c` (ib_async's), with these values."""
        return cls(
            account=account, conid=c.conId, symbol=c.symbol, sec_type=c.secType,
            expiry=c.lastTradeDateOrContractMonth, strike=c.strike, right=c.right, multiplier=c.multiplier,
            currency=c.currency, local_symbol=c.localSymbol, trading_class=c.tradingClass, exchange=exchange,
            **values,
        )  # fmt: skip

    @property
    def moved(self) -> bool:
        """The quantity changed between the connect-time reqPositions and the values' moment (a fill)."""
        return self.connect_position is not None and self.connect_position != self.position


@dataclass
class IBSnapshot:
    """What one read saw: every position of the wanted contracts in the configured accounts."""

    taken_at: datetime
    client_id: int
    server_version: int
    managed_accounts: list[str]
    accounts: list[str]  # the accounts this read covered: the configured ones, else every managed one
    positions: list[HeldPosition] = field(default_factory=list)
    notices: Notices = field(default_factory=list)
    downloads: dict[str, AccountDownload] = field(default_factory=dict)  # by account, each account read once
    unavailable: dict[str, str] = field(default_factory=dict)  # account -> why (some of) its values were not read
    unread: set[tuple[str, int]] = field(default_factory=set)  # (account, conid) held there, values not read
    seconds: dict[str, float] = field(default_factory=dict)  # account -> seconds spent on it, read or not
    positions_from_downloads: bool = False  # IB refused reqPositions: every account read, holdings from downloads

    def by_conid(self) -> dict[int, list[HeldPosition]]:
        found: dict[int, list[HeldPosition]] = {}
        for position in self.positions:
            found.setdefault(position.conid, []).append(position)
        return found
