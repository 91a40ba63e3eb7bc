"""The contracts a generated desk can hold, with starting prices and exchange rates, and the seeded draw of a desk.

Everything here is a pure function of the random generator it is given, so one seed gives one desk. Conids are
fixed per listing (AAPL keeps IB's real 265598) so states generated with different seeds name the same contracts
the same way.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable

from .contracts import Contract, Holding, round_price

DEFAULT_FX_RATES: dict[str, float] = {
    "USD": 1.0,
    "EUR": 1.05,
    "GBP": 1.26,
    "JPY": 1 / 154.0,
    "CAD": 1 / 1.40,
    "CHF": 1 / 0.89,
    "AUD": 0.65,
    "NZD": 0.58,
}
"""USD value of one unit of each currency at the start; the state moves them in seeded steps."""

# (symbol, primary exchange, currency, base price in that currency). Conids follow the row: keep the order.
_STOCKS: tuple[tuple[str, str, str, float], ...] = (
    ("AAPL", "NASDAQ", "USD", 228.0), ("MSFT", "NASDAQ", "USD", 415.0), ("NVDA", "NASDAQ", "USD", 135.0),
    ("AMZN", "NASDAQ", "USD", 205.0), ("GOOG", "NASDAQ", "USD", 175.0), ("META", "NASDAQ", "USD", 560.0),
    ("TSLA", "NASDAQ", "USD", 340.0), ("AMD", "NASDAQ", "USD", 140.0), ("INTC", "NASDAQ", "USD", 24.0),
    ("CSCO", "NASDAQ", "USD", 58.0), ("IBM", "NYSE", "USD", 222.0), ("JPM", "NYSE", "USD", 245.0),
    ("BAC", "NYSE", "USD", 46.0), ("XOM", "NYSE", "USD", 120.0), ("CVX", "NYSE", "USD", 160.0),
    ("KO", "NYSE", "USD", 63.0), ("PFE", "NYSE", "USD", 26.0), ("DIS", "NYSE", "USD", 115.0),
    ("WMT", "NYSE", "USD", 90.0), ("GS", "NYSE", "USD", 600.0), ("SPY", "ARCA", "USD", 595.0),
    ("QQQ", "NASDAQ", "USD", 505.0), ("IWM", "ARCA", "USD", 235.0), ("GLD", "ARCA", "USD", 245.0),
    ("SAP", "IBIS", "EUR", 230.0), ("SIE", "IBIS", "EUR", 185.0), ("ASML", "AEB", "EUR", 680.0),
    ("SHEL", "LSE", "GBP", 25.5), ("AZN", "LSE", "GBP", 105.0),
    ("7203", "TSEJ", "JPY", 2700.0), ("6758", "TSEJ", "JPY", 3300.0),
)  # fmt: skip
_REAL_CONIDS = {"AAPL": 265598}
_TRADING_CLASS = {"NASDAQ": "NMS", "IBIS": "XETRA"}  # elsewhere IB's trading class of a stock is its symbol
FOREIGN_STOCK_SHARE = 0.4
"""Of the stocks drawn, this share is a non-USD listing, so USD accounts hold EUR, GBP and JPY listings."""
# (root, exchange, base price, multiplier, currency)
_FUTURES: tuple[tuple[str, str, float, int, str], ...] = (
    ("ES", "CME", 6000.0, 50, "USD"),
    ("NQ", "CME", 21000.0, 20, "USD"),
    ("CL", "NYMEX", 70.0, 1000, "USD"),
    ("GC", "COMEX", 2650.0, 100, "USD"),
    ("ZN", "CBOT", 110.0, 1000, "USD"),
    ("6E", "CME", 1.05, 125000, "USD"),
    ("FESX", "EUREX", 4900.0, 10, "EUR"),
)
# (base currency, quote currency): the pair's price is the quote currency's units per base unit.
FOREX_PAIRS: tuple[tuple[str, str], ...] = (
    ("EUR", "USD"), ("GBP", "USD"), ("USD", "JPY"), ("AUD", "USD"),
    ("USD", "CAD"), ("USD", "CHF"), ("EUR", "GBP"), ("NZD", "USD"),
)  # fmt: skip
# Fixed expiries (third Fridays of 2027) keep generated states identical whatever day they are made on.
_OPTION_EXPIRIES = (
    "20270115", "20270219", "20270319", "20270416", "20270521", "20270618",
    "20270716", "20270820", "20270917", "20271015", "20271119", "20271217",
)  # fmt: skip
_FUTURE_MONTHS = ("202703", "202706", "202709", "202712", "202803", "202806")

SHARE_PROBABILITY = 0.3
"""How often an account's draw is a contract another account already holds (a desk holds contracts in several
accounts)."""

Priced = tuple[Contract, float]


def forex_price(fx_rates: dict[str, float], base: str, quote: str) -> float:
    """A pair's price from the USD values of its two currencies (the pair follows the exchange rates)."""
    return round_price(fx_rates[base] / fx_rates[quote])


class ContractUniverse:
    """Draws contracts with prices: stocks (some non-USD), options on US stocks, futures and forex."""

    def __init__(self, rng: random.Random, fx_rates: dict[str, float] | None = None) -> None:
        self._rng = rng
        fx = fx_rates or DEFAULT_FX_RATES
        stocks = [self._stock(i) for i in range(len(_STOCKS))]
        self._us_stocks = [s for s in stocks if s[0].currency == "USD"]
        self._foreign_stocks = [s for s in stocks if s[0].currency != "USD"]
        self._futures = [(self._future(i, month), row[2]) for i, row in enumerate(_FUTURES) for month in _FUTURE_MONTHS]
        self._forex = [
            (self._forex_pair(i), forex_price(fx, base, quote)) for i, (base, quote) in enumerate(FOREX_PAIRS)
        ]
        self._options: dict[tuple[str, str, float, str], Priced] = {}

    def _stock(self, i: int) -> Priced:
        symbol, exchange, currency, price = _STOCKS[i]
        conid = _REAL_CONIDS.get(symbol, 100_000 + 1_000 * i)
        trading_class = _TRADING_CLASS.get(exchange, symbol)
        return Contract(conid, symbol, "STK", currency, exchange, symbol, trading_class), price

    def _future(self, i: int, month: str) -> Contract:
        root, exchange, _, multiplier, currency = _FUTURES[i]
        codes = {"03": "H", "06": "M", "09": "U", "12": "Z"}
        local = f"{root}{codes[month[4:]]}{month[3]}"
        conid = 500_000_000 + 100 * i + _FUTURE_MONTHS.index(month)
        return Contract(conid, root, "FUT", currency, exchange, local, root, month, 0.0, "", str(multiplier))

    def _forex_pair(self, i: int) -> Contract:
        base, quote = FOREX_PAIRS[i]
        return Contract(400_000_000 + i, base, "CASH", quote, "IDEALPRO", f"{base}.{quote}", f"{base}.{quote}")

    def _option(self) -> Priced:
        underlying, underlying_price = self._rng.choice(self._us_stocks)
        expiry = self._rng.choice(_OPTION_EXPIRIES)
        right = self._rng.choice("CP")
        step = 5.0 if underlying_price >= 100 else 1.0
        strike = round(underlying_price * self._rng.uniform(0.7, 1.3) / step) * step
        intrinsic = max(0.0, underlying_price - strike if right == "C" else strike - underlying_price)
        key = (underlying.symbol, expiry, strike, right)
        if key not in self._options:
            price = round_price(intrinsic + self._rng.uniform(0.2, 0.08 * underlying_price))
            conid = 700_000_000 + len(self._options)
            symbol = underlying.symbol
            local = f"{symbol:<6}{expiry[2:]}{right}{int(strike * 1000):08d}"
            contract = Contract(conid, symbol, "OPT", "USD", "SMART", local, symbol, expiry, strike, right, "100")
            self._options[key] = (contract, price)
        return self._options[key]

    def draw(self, taken: Callable[[int], bool]) -> Priced:
        """A contract not yet held by the account (`taken(conid)`); options never run out."""
        roll = self._rng.random()
        pool: list[Priced]
        if roll < 0.45:
            foreign = self._rng.random() < FOREIGN_STOCK_SHARE
            pool = self._foreign_stocks if foreign else self._us_stocks
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


def draw_desk(rng: random.Random, accounts: list[str], positions: int) -> list[tuple[Holding, float]]:
    """`positions` holdings spread round-robin over `accounts`, each with its contract's price.

    An account never holds one conid twice. With probability SHARE_PROBABILITY (when there are two accounts or
    more) an account's draw is a contract some other account already holds, with its own quantity and cost."""
    universe = ContractUniverse(rng)
    drawn: list[Priced] = []  # every contract held so far, in the order first drawn
    position_of: dict[int, int] = {}  # conid -> its index in `drawn`
    held_by: dict[str, set[int]] = {account: set() for account in accounts}
    held_at: dict[str, list[int]] = {account: [] for account in accounts}  # indexes in `drawn`, ascending
    desk: list[tuple[Holding, float]] = []
    for i in range(positions):
        account = accounts[i % len(accounts)]
        held = held_by[account]
        shareable = len(drawn) - len(held) if len(accounts) > 1 else 0  # drawn by others, not held here
        if shareable and rng.random() < SHARE_PROBABILITY:
            contract, price = drawn[_skip_held(rng.choice(range(shareable)), held_at[account])]
        else:
            contract, price = universe.draw(held.__contains__)
        if contract.conid not in position_of:
            position_of[contract.conid] = len(drawn)
            drawn.append((contract, price))
        held.add(contract.conid)
        bisect.insort(held_at[account], position_of[contract.conid])
        quantity = _draw_quantity(rng, contract.sec_type)
        cost_price = round_price(price * math.exp(rng.gauss(0.0, 0.05)))
        desk.append((Holding(account, contract, quantity, round(cost_price * contract.multiplier_value, 4)), price))
    return desk


def _skip_held(k: int, held_at: list[int]) -> int:
    """The index in the drawn list of its k-th contract (from 0) that is not at one of the ascending `held_at`
    indexes: the same pick as choosing from the list of those contracts, in linear time of the account's holdings
    rather than of the desk."""
    index = k
    for held in held_at:
        if held > index:
            break
        index += 1
    return index


def draw_cash(rng: random.Random, base_currencies: dict[str, str]) -> dict[str, dict[str, float]]:
    """Each account: 1,000,000 in its base currency and, every other account or so, some of one other currency."""
    cash: dict[str, dict[str, float]] = {}
    for account, base in base_currencies.items():
        balances = {base: 1_000_000.0}
        if rng.random() < 0.5:
            other = rng.choice([c for c in ("EUR", "GBP", "JPY", "USD") if c != base])
            balances[other] = round(rng.uniform(20_000, 200_000) / DEFAULT_FX_RATES[other], -2)
        cash[account] = balances
    return cash


def _draw_quantity(rng: random.Random, sec_type: str) -> float:
    sign = 1 if rng.random() < 0.8 else -1
    if sec_type == "STK":
        return float(sign * rng.randint(1, 50) * 10)
    if sec_type == "OPT":
        return float(sign * rng.randint(1, 20))
    if sec_type == "FUT":
        return float(sign * rng.randint(1, 5))
    return float(sign * rng.randint(10, 100) * 1000)
