"""One account's valuation at one moment: each holding's values, the exchange rates, and the account values
(ACCT_VALUE rows) that IB's account window reports with them.

Pure functions of the holdings, prices, cash and exchange rates they are given. The state keeps the result and
sends it until the next refresh tick or position change, as IB does.

The ledger, per currency C the account holds (positions, cash, its base currency) and for the pseudo-currency BASE:
- `CashBalance(C)` = cash in C, plus forex positions settled as IB books them (long q EUR.GBP at avgCost a:
  +q EUR and -q*a GBP);
- `TotalCashBalance(C)` = CashBalance(C) + FuturesPNL(C) (futures are marked to market into cash);
- `StockMarketValue(C)`, `OptionMarketValue(C)`: market values of the stocks and options priced in C;
- `FuturesPNL(C)`, `UnrealizedPnL(C)`, `RealizedPnL(C)`: of the holdings priced in C (futures: unrealized PnL);
- `NetLiquidationByCurrency(C)` = TotalCashBalance(C) + StockMarketValue(C) + OptionMarketValue(C);
- `ExchangeRate(C)`: value_in_base = value_in_C * rate; exactly 1 for the base currency (sent "1.00").
Each currency's values are rounded to cents first and the identities above hold exactly in the sent values.
BASE rows are the sums over currencies of sent value * sent rate, rounded to cents. A currency without an exchange rate
(not in the state's FX table) gets its own rows but no ExchangeRate row, and is left out of the BASE sums.
Account-level keys (NetLiquidation, TotalCashValue, ...) carry the base currency's code, as IB sends them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from .contracts import Holding, Valuation

BASE = "BASE"
RATE_SIGNIFICANT_DIGITS = 6
LEDGER_KEYS = (
    "CashBalance", "TotalCashBalance", "StockMarketValue", "OptionMarketValue",
    "FuturesPNL", "UnrealizedPnL", "RealizedPnL", "NetLiquidationByCurrency",
)  # fmt: skip
LEDGER_SECTION_KEYS = frozenset({"Currency", "ExchangeRate", *LEDGER_KEYS})
"""The keys of a currency's section (BASE's too), which IB's account summary sends only for its `$LEDGER` flags."""
Row = tuple[str, str, str]  # (key, value, currency) of an ACCT_VALUE message


@dataclass(frozen=True)
class AccountValuation:
    """What an account was told at `valued_at` (UTC): each holding's values by conid, the exchange rate of every
    known currency into the account's base, and the ACCT_VALUE rows."""

    valued_at: datetime
    holdings: dict[int, Valuation]
    rates: dict[str, float]
    rows: list[Row] = field(default_factory=list)


def exchange_rate(fx_rates: dict[str, float], currency: str, base: str) -> float | None:
    """usd(currency) / usd(base), rounded to RATE_SIGNIFICANT_DIGITS; exactly 1.0 for the base; None when either
    currency has no USD value."""
    if currency == base:
        return 1.0
    if currency not in fx_rates or base not in fx_rates:
        return None
    return float(format_rate(fx_rates[currency] / fx_rates[base]))


def format_rate(rate: float) -> str:
    """Fixed notation with RATE_SIGNIFICANT_DIGITS significant digits ("0.00649351", "1.05000"); 1 is "1.00"."""
    if rate == 1.0:
        return "1.00"
    decimals = max(0, RATE_SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(rate))))
    return f"{rate:.{decimals}f}"


def account_rows(
    account: str,
    base: str,
    holdings: list[Holding],
    valuations: dict[int, Valuation],
    rates: dict[str, float],
    cash: dict[str, float],
) -> list[Row]:
    """ACCT_VALUE rows for one account, in the order sent: account codes, account-level keys, then per currency
    (BASE, the base currency, the others in alphabetical order) its Currency, ExchangeRate and ledger rows."""
    ledger: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(LEDGER_KEYS, 0.0))
    ledger[base]
    for currency, amount in cash.items():
        ledger[currency]["CashBalance"] += amount
    gross = 0.0
    for holding in holdings:
        contract, value = holding.contract, valuations[holding.contract.conid]
        rows = ledger[contract.currency]
        rows["UnrealizedPnL"] += value.unrealized_pnl
        rows["RealizedPnL"] += value.realized_pnl
        if contract.sec_type == "STK":
            rows["StockMarketValue"] += value.market_value
        elif contract.sec_type == "OPT":
            rows["OptionMarketValue"] += value.market_value
        elif contract.sec_type == "FUT":
            rows["FuturesPNL"] += value.unrealized_pnl
        elif contract.sec_type == "CASH":
            ledger[contract.symbol]["CashBalance"] += holding.quantity
            rows["CashBalance"] -= holding.quantity * holding.average_cost
        if contract.sec_type in ("STK", "OPT") and contract.currency in rates:
            gross += abs(value.market_value) * rates[contract.currency]
    for rows in ledger.values():
        for key in rows:
            rows[key] = round(rows[key], 2)
        rows["TotalCashBalance"] = round(rows["CashBalance"] + rows["FuturesPNL"], 2)
        rows["NetLiquidationByCurrency"] = round(
            rows["TotalCashBalance"] + rows["StockMarketValue"] + rows["OptionMarketValue"], 2
        )
    in_base = {
        key: round(sum(rows[key] * rates[c] for c, rows in ledger.items() if c in rates), 2) for key in LEDGER_KEYS
    }
    return [
        ("AccountCode", account, ""),
        ("AccountType", "INDIVIDUAL", ""),
        *_account_level(base, in_base, gross),
        *_currency_rows(BASE, BASE, "1.00", in_base),
        *(
            row
            for currency in sorted(ledger, key=lambda c: (c != base, c))
            for row in _currency_rows(
                currency, currency, format_rate(rates[currency]) if currency in rates else None, ledger[currency]
            )
        ),
    ]


def _account_level(base: str, in_base: dict[str, float], gross: float) -> list[Row]:
    """Margin figures of a Reg T cash-and-margin account, simplified: 25% initial and 20% maintenance margin on
    the gross value of stocks and options."""
    net_liq = round(in_base["NetLiquidationByCurrency"], 2)
    gross = round(gross, 2)
    initial, maintenance = round(gross * 0.25, 2), round(gross * 0.20, 2)
    available = max(net_liq - initial, 0.0)
    values = {
        "NetLiquidation": net_liq,
        "TotalCashValue": in_base["TotalCashBalance"],
        "GrossPositionValue": gross,
        "EquityWithLoanValue": net_liq,
        "InitMarginReq": initial,
        "MaintMarginReq": maintenance,
        "AvailableFunds": available,
        "ExcessLiquidity": max(net_liq - maintenance, 0.0),
        "BuyingPower": available * 4,
    }
    return [(key, _money(value), base) for key, value in values.items()]


def _currency_rows(currency: str, label: str, rate: str | None, ledger: dict[str, float]) -> list[Row]:
    rows: list[Row] = [("Currency", label, currency)]
    if rate is not None:
        rows.append(("ExchangeRate", rate, currency))
    rows.extend((key, _money(ledger[key]), currency) for key in LEDGER_KEYS)
    return rows


def _money(value: float) -> str:
    text = f"{round(value, 2):.2f}"
    return "0.00" if text == "-0.00" else text
