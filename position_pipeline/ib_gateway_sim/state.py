"""What the simulated gateway holds: accounts, contracts, positions and prices.

Deterministic from a seed. Prices move in seeded steps; positions can be added, changed and closed while clients
are connected, and every change is announced to listeners (the gateway pushes it to subscribed clients).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

SEC_TYPES = ("STK", "OPT", "FUT", "CASH")

# (symbol, primary exchange, base price, conid). AAPL keeps IB's real conid so the documented examples work.
_STOCKS: tuple[tuple[str, str, float], ...] = (
    ("AAPL", "NASDAQ", 228.0),
    ("MSFT", "NASDAQ", 415.0),
    ("NVDA", "NASDAQ", 135.0),
    ("AMZN", "NASDAQ", 205.0),
    ("GOOG", "NASDAQ", 175.0),
    ("META", "NASDAQ", 560.0),
    ("TSLA", "NASDAQ", 340.0),
    ("AMD", "NASDAQ", 140.0),
    ("INTC", "NASDAQ", 24.0),
    ("CSCO", "NASDAQ", 58.0),
    ("IBM", "NYSE", 222.0),
    ("JPM", "NYSE", 245.0),
    ("BAC", "NYSE", 46.0),
    ("XOM", "NYSE", 120.0),
    ("CVX", "NYSE", 160.0),
    ("KO", "NYSE", 63.0),
    ("PFE", "NYSE", 26.0),
    ("DIS", "NYSE", 115.0),
    ("WMT", "NYSE", 90.0),
    ("GS", "NYSE", 600.0),
    ("SPY", "ARCA", 595.0),
    ("QQQ", "NASDAQ", 505.0),
    ("IWM", "ARCA", 235.0),
    ("GLD", "ARCA", 245.0),
)
_REAL_CONIDS = {"AAPL": 265598}
# (root, exchange, base price, multiplier, trading class)
_FUTURES: tuple[tuple[str, str, float, int], ...] = (
    ("ES", "CME", 6000.0, 50),
    ("NQ", "CME", 21000.0, 20),
    ("CL", "NYMEX", 70.0, 1000),
    ("GC", "COMEX", 2650.0, 100),
    ("ZN", "CBOT", 110.0, 1000),
    ("6E", "CME", 1.05, 125000),
)
_FOREX: tuple[tuple[str, str, float], ...] = (
    ("EUR", "USD", 1.05),
    ("GBP", "USD", 1.26),
    ("USD", "JPY", 154.0),
    ("AUD", "USD", 0.65),
    ("USD", "CAD", 1.40),
    ("USD", "CHF", 0.89),
    ("EUR", "GBP", 0.83),
    ("NZD", "USD", 0.58),
)
# Fixed expiries (third Fridays of 2027) keep generated states identical whatever day they are made on.
_OPTION_EXPIRIES = (
    "20270115", "20270219", "20270319", "20270416", "20270521", "20270618",
    "20270716", "20270820", "20270917", "20271015", "20271119", "20271217",
)  # fmt: skip
_FUTURE_MONTHS = ("202703", "202706", "202709", "202712", "202803", "202806")


@dataclass(frozen=True)
class Contract:
    """A contract as IB describes it in position and portfolio messages."""

    conid: int
    symbol: str
    sec_type: str
    currency: str = "USD"
    exchange: str = ""
    local_symbol: str = ""
    trading_class: str = ""
    expiry: str = ""
    strike: float = 0.0
    right: str = ""
    multiplier: str = ""

    @property
    def multiplier_value(self) -> float:
        return float(self.multiplier) if self.multiplier else 1.0


@dataclass
class Holding:
    """One position of one account. `average_cost` is IB's avgCost: per unit, multiplier included."""

    account: str
    contract: Contract
    quantity: float
    average_cost: float
    realized_pnl: float = 0.0


@dataclass(frozen=True)
class Valuation:
    """A holding's values at the current price, as a portfolio update reports them."""

    market_price: float
    market_value: float
    unrealized_pnl: float
    realized_pnl: float


Listener = Callable[[Holding], None]


@dataclass
class GatewayState:
    """Accounts, positions and prices. Mutated only from the gateway's event loop."""

    accounts: list[str]
    holdings: dict[tuple[str, int], Holding] = field(default_factory=dict)
    prices: dict[int, float] = field(default_factory=dict)
    cash: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _listeners: list[Listener] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.accounts:
            raise ValueError("a gateway needs at least one account")
        self._rng = random.Random(self.seed)
        for account in self.accounts:
            self.cash.setdefault(account, 1_000_000.0)

    # --- reading -------------------------------------------------------------------------------------------

    def positions(self, account: str | None = None) -> Iterator[Holding]:
        for holding in self.holdings.values():
            if account is None or holding.account == account:
                yield holding

    def holding(self, account: str, conid: int) -> Holding | None:
        return self.holdings.get((account, conid))

    def valuation(self, holding: Holding) -> Valuation:
        price = self.prices[holding.contract.conid]
        market_value = round(holding.quantity * price * holding.contract.multiplier_value, 2)
        unrealized = round(market_value - holding.quantity * holding.average_cost, 2)
        return Valuation(price, market_value, unrealized, holding.realized_pnl)

    def account_values(self, account: str) -> list[tuple[str, str, str]]:
        """(key, value, currency) rows for ACCT_VALUE, derived from the holdings so they stay consistent."""
        holdings = list(self.positions(account))
        values = [self.valuation(h) for h in holdings]
        gross = round(sum(abs(v.market_value) for v in values), 2)
        unrealized = round(sum(v.unrealized_pnl for v in values), 2)
        realized = round(sum(v.realized_pnl for v in values), 2)
        cash = round(self.cash[account], 2)
        net_liq = round(cash + sum(v.market_value for v in values), 2)
        return [
            ("AccountCode", account, ""),
            ("AccountType", "INDIVIDUAL", ""),
            ("Currency", "USD", "USD"),
            ("NetLiquidation", f"{net_liq:.2f}", "USD"),
            ("TotalCashValue", f"{cash:.2f}", "USD"),
            ("GrossPositionValue", f"{gross:.2f}", "USD"),
            ("UnrealizedPnL", f"{unrealized:.2f}", "USD"),
            ("RealizedPnL", f"{realized:.2f}", "USD"),
            ("BuyingPower", f"{max(net_liq, 0.0) * 4:.2f}", "USD"),
            ("AvailableFunds", f"{max(net_liq - gross * 0.25, 0.0):.2f}", "USD"),
        ]

    # --- changing ------------------------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every holding that changes; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _announce(self, holding: Holding) -> None:
        for listener in list(self._listeners):
            listener(holding)

    def set_position(
        self,
        account: str,
        contract: Contract,
        quantity: float,
        average_cost: float | None = None,
        market_price: float | None = None,
    ) -> Holding:
        """Add a position or change its quantity (and cost); a new contract needs a market price."""
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
        self._announce(holding)
        return holding

    def close_position(self, account: str, conid: int) -> Holding:
        """Quantity goes to zero; like IB, the closed position is still reported (with 0) for the day."""
        existing = self.holdings[(account, conid)]
        realized = existing.realized_pnl + self.valuation(existing).unrealized_pnl
        holding = replace(existing, quantity=0.0, realized_pnl=round(realized, 2))
        self.holdings[(account, conid)] = holding
        self._announce(holding)
        return holding

    def remove_position(self, account: str, conid: int) -> None:
        """Forget a position entirely, as after the daily reset: it is no longer reported at all."""
        del self.holdings[(account, conid)]

    def move_prices(self) -> None:
        """One seeded random-walk step for every price (about 0.1% per step)."""
        for conid, price in self.prices.items():
            step = math.exp(self._rng.gauss(0.0, 0.001))
            self.prices[conid] = _round_price(price * step)

    # --- building and saving ---------------------------------------------------------------------------------

    @classmethod
    def generate(cls, positions: int, accounts: int = 3, seed: int = 0) -> GatewayState:
        """`positions` holdings spread round-robin over `accounts` paper accounts, the same for the same seed."""
        if positions < 0 or accounts < 1:
            raise ValueError("positions must be >= 0 and accounts >= 1")
        rng = random.Random(seed)
        names = [f"DU{1_000_001 + i}" for i in range(accounts)]
        state = cls(accounts=names, seed=seed)
        universe = _ContractUniverse(rng)
        held_by: dict[str, set[int]] = {}
        for i in range(positions):
            account = names[i % accounts]
            held = held_by.setdefault(account, set())
            contract, price = universe.draw(held.__contains__)
            held.add(contract.conid)
            quantity = _draw_quantity(rng, contract.sec_type)
            cost_price = _round_price(price * math.exp(rng.gauss(0.0, 0.05)))
            state.prices[contract.conid] = price
            state.holdings[(account, contract.conid)] = Holding(
                account, contract, quantity, round(cost_price * contract.multiplier_value, 4)
            )
        return state

    def to_json(self) -> dict[str, Any]:
        """Accounts and every position with its contract and prices; nulls where a contract has no such field."""
        rows = []
        for h in self.holdings.values():
            c, v = h.contract, self.valuation(h)
            rows.append(
                {
                    "account": h.account,
                    "conid": c.conid,
                    "symbol": c.symbol,
                    "sec_type": c.sec_type,
                    "right": c.right or None,
                    "strike": c.strike if c.sec_type == "OPT" else None,
                    "expiry": c.expiry or None,
                    "multiplier": c.multiplier or None,
                    "currency": c.currency,
                    "exchange": c.exchange,
                    "local_symbol": c.local_symbol,
                    "trading_class": c.trading_class,
                    "quantity": h.quantity,
                    "average_cost": h.average_cost,
                    "market_price": v.market_price,
                    "market_value": v.market_value,
                    "unrealized_pnl": v.unrealized_pnl,
                    "realized_pnl": v.realized_pnl,
                }
            )
        return {
            "seed": self.seed,
            "accounts": list(self.accounts),
            "cash": dict(self.cash),
            "positions": rows,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GatewayState:
        """Inverse of `to_json`; market_value and PnL are derived from quantity, cost and price on load."""
        try:
            state = cls(accounts=list(data["accounts"]), seed=int(data.get("seed", 0)))
            state.cash.update({k: float(v) for k, v in data.get("cash", {}).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"state JSON: missing or malformed accounts, seed or cash: {exc!r}") from exc
        for i, row in enumerate(data.get("positions", [])):
            try:
                state._load_position(row)
            except KeyError as exc:
                raise ValueError(f"positions[{i}].{exc.args[0]}: missing") from exc
            except (TypeError, ValueError) as exc:
                raise ValueError(f"positions[{i}].{exc}") from exc
        return state

    def _load_position(self, row: dict[str, Any]) -> None:
        """Errors start with the field's name, so the caller can say `positions[i].field: ...`."""
        for name in ("conid", "quantity", "average_cost", "market_price", "strike", "realized_pnl"):
            if row.get(name) not in (None, "") and not isinstance(row[name], int | float):
                try:
                    float(row[name])
                except (TypeError, ValueError):
                    raise ValueError(f"{name}: {row[name]!r} is not a number") from None
        contract = Contract(
            conid=int(row["conid"]),
            symbol=str(row["symbol"]),
            sec_type=str(row["sec_type"]),
            currency=str(row.get("currency") or "USD"),
            exchange=str(row.get("exchange") or ""),
            local_symbol=str(row.get("local_symbol") or row["symbol"]),
            trading_class=str(row.get("trading_class") or ""),
            expiry=str(row.get("expiry") or ""),
            strike=float(row.get("strike") or 0.0),
            right=str(row.get("right") or ""),
            multiplier=str(row.get("multiplier") or ""),
        )
        if contract.sec_type not in SEC_TYPES:
            raise ValueError(f"sec_type: {contract.sec_type!r} is not one of {SEC_TYPES}")
        if row["account"] not in self.accounts:
            raise ValueError(f"account: {row['account']!r} is not in accounts")
        self.prices[contract.conid] = float(row["market_price"])
        self.holdings[(row["account"], contract.conid)] = Holding(
            row["account"], contract, float(row["quantity"]), float(row["average_cost"]),
            float(row.get("realized_pnl") or 0.0),
        )  # fmt: skip

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> GatewayState:
        return cls.from_json(json.loads(Path(path).read_text()))


def _round_price(price: float) -> float:
    return round(price, 4) if price < 10 else round(price, 2)


def _draw_quantity(rng: random.Random, sec_type: str) -> float:
    sign = 1 if rng.random() < 0.8 else -1
    if sec_type == "STK":
        return float(sign * rng.randint(1, 50) * 10)
    if sec_type == "OPT":
        return float(sign * rng.randint(1, 20))
    if sec_type == "FUT":
        return float(sign * rng.randint(1, 5))
    return float(sign * rng.randint(10, 100) * 1000)


class _ContractUniverse:
    """Draws contracts with prices: stocks, options on them, futures and forex, in seeded proportions."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._stocks = [self._stock(i) for i in range(len(_STOCKS))]
        self._futures = [
            (self._future(i, month), price) for i, (_, _, price, _) in enumerate(_FUTURES) for month in _FUTURE_MONTHS
        ]
        self._forex = [self._forex_pair(i) for i in range(len(_FOREX))]
        self._options: dict[tuple[str, str, float, str], tuple[Contract, float]] = {}

    def _stock(self, i: int) -> tuple[Contract, float]:
        symbol, exchange, price = _STOCKS[i]
        conid = _REAL_CONIDS.get(symbol, 100_000 + 1_000 * i)
        return Contract(conid, symbol, "STK", "USD", exchange, symbol, "NMS" if exchange == "NASDAQ" else symbol), price

    def _future(self, i: int, month: str) -> Contract:
        root, exchange, _, multiplier = _FUTURES[i]
        codes = {"03": "H", "06": "M", "09": "U", "12": "Z"}
        local = f"{root}{codes[month[4:]]}{month[3]}"
        conid = 500_000_000 + 100 * i + _FUTURE_MONTHS.index(month)
        return Contract(conid, root, "FUT", "USD", exchange, local, root, month, 0.0, "", str(multiplier))

    def _forex_pair(self, i: int) -> tuple[Contract, float]:
        base, quote, price = _FOREX[i]
        return Contract(400_000_000 + i, base, "CASH", quote, "IDEALPRO", f"{base}.{quote}", f"{base}.{quote}"), price

    def _option(self) -> tuple[Contract, float]:
        underlying, underlying_price = self._rng.choice(self._stocks)
        expiry = self._rng.choice(_OPTION_EXPIRIES)
        right = self._rng.choice("CP")
        step = 5.0 if underlying_price >= 100 else 1.0
        strike = round(underlying_price * self._rng.uniform(0.7, 1.3) / step) * step
        intrinsic = max(0.0, underlying_price - strike if right == "C" else strike - underlying_price)
        key = (underlying.symbol, expiry, strike, right)
        if key not in self._options:
            price = _round_price(intrinsic + self._rng.uniform(0.2, 0.08 * underlying_price))
            conid = 700_000_000 + len(self._options)
            symbol = underlying.symbol
            local = f"{symbol:<6}{expiry[2:]}{right}{int(strike * 1000):08d}"
            contract = Contract(conid, symbol, "OPT", "USD", "SMART", local, symbol, expiry, strike, right, "100")
            self._options[key] = (contract, price)
        return self._options[key]

    def draw(self, taken: Callable[[int], bool]) -> tuple[Contract, float]:
        """A contract not yet held by the account (`taken(conid)`); options never run out."""
        roll = self._rng.random()
        pool: list[tuple[Contract, float]]
        if roll < 0.45:
            pool = self._stocks
        elif roll < 0.55:
            pool = self._futures
        elif roll < 0.65:
            pool = self._forex
        else:
            pool = []
        free = [item for item in pool if not taken(item[0].conid)]
        if free:
            return self._rng.choice(free)
        while True:  # the option space (24 x 12 x 2 x ~25 strikes) is far larger than any account's holdings
            option = self._option()
            if not taken(option[0].conid):
                return option


def state_summary(state: GatewayState) -> dict[str, int]:
    """Positions per sec type, for log lines."""
    counts = dict.fromkeys(SEC_TYPES, 0)
    for holding in state.holdings.values():
        counts[holding.contract.sec_type] += 1
    return counts
