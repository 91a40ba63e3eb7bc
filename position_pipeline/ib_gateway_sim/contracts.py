"""The records the gateway holds and reports: a contract, one account's holding of it, and a holding's valuation.

No behaviour beyond arithmetic on one record, so every other module (universe, ledger, state, messages) can share
them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

SEC_TYPES = ("STK", "OPT", "FUT", "CASH")


@dataclass(frozen=True)
class Contract:
    """A contract as IB describes it in position and portfolio messages.

    `currency` is the currency its prices and values are in; for a forex pair (CASH, symbol EUR, local symbol
    EUR.GBP) that is the quote currency (GBP)."""

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
    """One position of one account. `average_cost` is IB's avgCost: per unit, multiplier included, in the
    contract's currency."""

    account: str
    contract: Contract
    quantity: float
    average_cost: float
    realized_pnl: float = 0.0


@dataclass(frozen=True)
class Valuation:
    """A holding's values at one price, in the contract's currency, as a portfolio update reports them."""

    market_price: float
    market_value: float
    unrealized_pnl: float
    realized_pnl: float


def value_at(holding: Holding, price: float) -> Valuation:
    """The holding valued at `price`: market value and unrealized PnL rounded to cents, as IB sends them."""
    market_value = round(holding.quantity * price * holding.contract.multiplier_value, 2)
    unrealized = round(market_value - holding.quantity * holding.average_cost, 2)
    return Valuation(price, market_value, unrealized, holding.realized_pnl)


def round_price(price: float) -> float:
    """Prices below 10 keep four decimals (forex, cheap stocks), others two."""
    return round(price, 4) if price < 10 else round(price, 2)
