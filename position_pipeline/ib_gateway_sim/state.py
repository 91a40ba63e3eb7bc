"""What the simulated gateway holds: accounts (each with a base currency), positions, live prices and exchange
rates, and the valuation each account was last told.

Deterministic from a seed. Prices and exchange rates move in seeded steps; positions can be added, changed and
closed while clients are connected, and every change is announced to listeners (the gateway pushes it to
subscribed clients).

Invariant: what clients are told about values (portfolio values, account values, the account update time) comes
from `valuations`, one AccountValuation per account, never from the live prices. A valuation changes only in
`revalue`: at a refresh tick, at gateway start, and when a position of that account changes (IB: the account
window refreshes about every 3 minutes unless a position changes).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import dump
from .contracts import SEC_TYPES, Contract, Holding, Valuation, round_price, value_at
from .ledger import AccountValuation, Row, account_rows, exchange_rate
from .universe import DEFAULT_FX_RATES, draw_cash, draw_desk, forex_price

__all__ = ["SEC_TYPES", "Contract", "GatewayState", "Holding", "Valuation", "state_summary"]

DEFAULT_TIMEZONE = "America/New_York"
"""IB's home zone; a real gateway reports times in the zone set at login."""
DEFAULT_CASH = 1_000_000.0
"""Cash in its base currency of an account whose cash is not given."""

Listener = Callable[[Holding], None]


def zone_named(name: str) -> ZoneInfo:
    """The IANA zone `name`; ValueError (not ZoneInfoNotFoundError) for a name the zone database lacks."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}: give an IANA name such as {DEFAULT_TIMEZONE}") from exc


@dataclass
class GatewayState:
    """Accounts, positions, prices and valuations. Mutated only from the gateway's event loop.

    `cash`: per account, balance per currency. `base_currencies`: per account (default USD). `fx_rates`: the live
    USD value of one unit of each currency. `timezone`: the gateway's zone (IANA name). `closes`: the prior close
    per conid, from which PnL subscriptions compute the daily PnL (a conid without one closed at its price)."""

    accounts: list[str]
    holdings: dict[tuple[str, int], Holding] = field(default_factory=dict)
    prices: dict[int, float] = field(default_factory=dict)
    cash: dict[str, dict[str, float]] = field(default_factory=dict)
    seed: int = 0
    base_currencies: dict[str, str] = field(default_factory=dict)
    fx_rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FX_RATES))
    timezone: str = DEFAULT_TIMEZONE
    valuations: dict[str, AccountValuation] = field(default_factory=dict)
    closes: dict[int, float] = field(default_factory=dict)
    _rng: random.Random = field(init=False, repr=False)
    _listeners: list[Listener] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.accounts:
            raise ValueError("a gateway needs at least one account")
        unknown = (set(self.base_currencies) | set(self.cash)) - set(self.accounts)
        if unknown:
            raise ValueError(f"base currencies or cash for accounts the gateway lacks: {sorted(unknown)}")
        self._rng = random.Random(self.seed)
        self.set_timezone(self.timezone)
        for account in self.accounts:
            base = self.base_currencies.setdefault(account, "USD")
            self.cash.setdefault(account, {base: DEFAULT_CASH})

    # --- reading -------------------------------------------------------------------------------------------

    def positions(self, account: str | None = None) -> Iterator[Holding]:
        for holding in self.holdings.values():
            if account is None or holding.account == account:
                yield holding

    def holding(self, account: str, conid: int) -> Holding | None:
        return self.holdings.get((account, conid))

    def contract(self, conid: int) -> Contract | None:
        """The contract of `conid` as some account holds it; None when nobody does."""
        return next((h.contract for h in self.holdings.values() if h.contract.conid == conid), None)

    def base_currency(self, account: str) -> str:
        return self.base_currencies[account]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def account_valuation(self, account: str) -> AccountValuation:
        """The valuation `account` was last told; an account never valued is valued now (first download)."""
        if account not in self.valuations:
            self.revalue(account)
        return self.valuations[account]

    def valuation(self, holding: Holding) -> Valuation:
        """The values a client is told for `holding`: those of the account's last valuation, not the live price."""
        told = self.account_valuation(holding.account).holdings.get(holding.contract.conid)
        if told is None:
            raise KeyError(f"{holding.account}/{holding.contract.conid} was not held when its account was valued")
        return told

    def live_valuation(self, holding: Holding) -> Valuation:
        """The holding at the live price: what the next revalue will tell."""
        return value_at(holding, self.prices[holding.contract.conid])

    def daily_pnl(self, holding: Holding) -> float:
        """Today's PnL of `holding` at the live price: position x multiplier x (live - prior close), to cents."""
        conid = holding.contract.conid
        close = self.closes.get(conid, self.prices[conid])
        return round(holding.quantity * holding.contract.multiplier_value * (self.prices[conid] - close), 2)

    def valued_at(self, account: str) -> datetime:
        """When `account` was last valued (UTC, timezone-aware)."""
        return self.account_valuation(account).valued_at

    def account_update_time(self, account: str) -> str:
        """ACCT_UPDATE_TIME as sent: `valued_at` as HH:MM in the gateway's zone, truncated to the minute."""
        return self.valued_at(account).astimezone(self.zone).strftime("%H:%M")

    def exchange_rate(self, account: str, currency: str) -> float | None:
        """The ExchangeRate told for `currency` (value_in_base = value * rate); None when it has no USD value."""
        return self.account_valuation(account).rates.get(currency)

    def account_values(self, account: str) -> list[Row]:
        """(key, value, currency) rows for ACCT_VALUE, as of the account's last valuation (see ledger.py)."""
        return self.account_valuation(account).rows

    # --- changing ------------------------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every holding that changes; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _announce(self, holding: Holding) -> None:
        for listener in list(self._listeners):
            listener(holding)

    def set_timezone(self, name: str) -> None:
        zone_named(name)
        self.timezone = name

    def set_position(
        self,
        account: str,
        contract: Contract,
        quantity: float,
        average_cost: float | None = None,
        market_price: float | None = None,
    ) -> Holding:
        """Add a position or change its quantity (and cost); a new contract needs a market price. The whole
        account is revalued at this moment (live prices and rates) before the change is announced."""
        if account not in self.accounts:
            raise KeyError(f"unknown account {account!r}; the gateway manages {self.accounts}")
        if market_price is not None:
            self.prices[contract.conid] = market_price
        if contract.conid not in self.prices:
            raise ValueError(f"contract {contract.conid} has no price; pass market_price")
        existing = self.holdings.get((account, contract.conid))
        if average_cost is None:
            average_cost = (
                existing.average_cost if existing else self.prices[contract.conid] * contract.multiplier_value
            )
        holding = Holding(account, contract, quantity, average_cost, existing.realized_pnl if existing else 0.0)
        self.holdings[(account, contract.conid)] = holding
        self.revalue(account)
        self._announce(holding)
        return holding

    def close_position(self, account: str, conid: int) -> Holding:
        """Quantity goes to zero at the live price; like IB, the closed position is still reported (with 0) for
        the day. The whole account is revalued at this moment before the change is announced."""
        existing = self.holdings[(account, conid)]
        realized = existing.realized_pnl + self.live_valuation(existing).unrealized_pnl
        holding = replace(existing, quantity=0.0, realized_pnl=round(realized, 2))
        self.holdings[(account, conid)] = holding
        self.revalue(account)
        self._announce(holding)
        return holding

    def remove_position(self, account: str, conid: int) -> None:
        """Forget a position entirely, as after the daily reset: it is no longer reported at all (not announced;
        the account is revalued without it)."""
        del self.holdings[(account, conid)]
        self.revalue(account)

    def move_prices(self) -> None:
        """One seeded random-walk step (about 0.1%) for every price and every exchange rate but USD's. Forex pairs
        follow the rates (EUR.GBP = usd(EUR) / usd(GBP)). Nothing a client is told changes until a revalue."""
        pairs = {
            h.contract.conid: h.contract
            for h in self.holdings.values()
            if h.contract.sec_type == "CASH" and {h.contract.symbol, h.contract.currency} <= self.fx_rates.keys()
        }
        for conid, price in self.prices.items():
            if conid not in pairs:
                self.prices[conid] = round_price(price * math.exp(self._rng.gauss(0.0, 0.001)))
        for currency in sorted(self.fx_rates):
            if currency != "USD":
                self.fx_rates[currency] *= math.exp(self._rng.gauss(0.0, 0.001))
        for conid, contract in pairs.items():
            self.prices[conid] = forex_price(self.fx_rates, contract.symbol, contract.currency)

    def revalue(self, account: str | None = None, at: datetime | None = None) -> datetime:
        """Value `account` (every account when None) at the live prices and rates, as of `at` (timezone-aware;
        default now); returns that moment in UTC. Pushing the new values to clients is the gateway's job."""
        if at is not None and at.tzinfo is None:
            raise ValueError("revalue: `at` must be timezone-aware")
        when = (at or datetime.now(UTC)).astimezone(UTC)
        for name in self.accounts if account is None else [account]:
            if name not in self.accounts:
                raise KeyError(f"unknown account {name!r}; the gateway manages {self.accounts}")
            base = self.base_currency(name)
            rates = {
                currency: rate
                for currency in sorted({base, *self.fx_rates})
                if (rate := exchange_rate(self.fx_rates, currency, base)) is not None
            }
            self.valuations[name] = self.valuation_at(name, when, self.prices, rates)
        return when

    def valuation_at(
        self, account: str, at: datetime, prices: Mapping[int, float], rates: dict[str, float]
    ) -> AccountValuation:
        """The account's holdings valued at `prices` with `rates`, as of `at` (not stored: see `revalue`)."""
        held = list(self.positions(account))
        values = {h.contract.conid: value_at(h, prices[h.contract.conid]) for h in held}
        rows = account_rows(account, self.base_currency(account), held, values, rates, self.cash[account])
        return AccountValuation(at, values, dict(rates), rows)

    # --- building and saving ---------------------------------------------------------------------------------

    @classmethod
    def generate(cls, positions: int, accounts: int = 3, seed: int = 0) -> GatewayState:
        """`positions` holdings spread round-robin over `accounts` paper accounts, the same for the same seed.

        With two accounts or more the last one's base currency is EUR, the others' USD; some contracts are held in
        several accounts, and USD accounts hold EUR, GBP and JPY listings (see universe.py). Valued now."""
        if positions < 0 or accounts < 1:
            raise ValueError("positions must be >= 0 and accounts >= 1")
        rng = random.Random(seed)
        names = [f"DU{1_000_001 + i}" for i in range(accounts)]
        bases = {name: "USD" for name in names}
        if accounts >= 2:
            bases[names[-1]] = "EUR"
        desk = draw_desk(rng, names, positions)
        state = cls(accounts=names, seed=seed, base_currencies=bases, cash=draw_cash(rng, bases))
        closes = random.Random(seed + 1)  # its own stream: the desk drawn for a seed stays what it was
        for holding, price in desk:
            state.prices[holding.contract.conid] = price
            state.holdings[(holding.account, holding.contract.conid)] = holding
        for conid in sorted(state.prices):
            state.closes[conid] = round_price(state.prices[conid] * (1 + closes.uniform(-0.02, 0.02)))
        state.revalue()
        return state

    def to_json(self) -> dict[str, Any]:
        """Accounts, rates, valuations and every position as last reported (see dump.py)."""
        return dump.to_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GatewayState:
        """Inverse of `to_json`; also reads dumps from before base currencies and valuations (see dump.py)."""
        return dump.from_json(cls, data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> GatewayState:
        return cls.from_json(json.loads(Path(path).read_text()))


def state_summary(state: GatewayState) -> dict[str, int]:
    """Positions per sec type, for log lines."""
    counts = dict.fromkeys(SEC_TYPES, 0)
    for holding in state.holdings.values():
        counts[holding.contract.sec_type] += 1
    return counts
