"""Filler account values: the rows a real account download sends beyond the ledger (per-segment margin figures,
per-currency bond and fund values, day-trade counts, ...), so that a download can carry what a real one carries (a
few hundred ACCT_VALUE messages) when a benchmark asks for it (`Faults.account_value_volume`).

Pure. Invariants: `filler_rows(rows, n)` returns exactly `n` rows; none repeats a (key, currency) of `rows` or of
another filler row (ib_async keys account values by account, tag, currency and model code, so each row counts);
the same input gives the same rows. The values carry no meaning (mostly "0.00"); the ledger's identities involve
only the ledger's own keys, which filler rows never use.
"""

from __future__ import annotations

from collections.abc import Iterator

from .ledger import Row

# Account-level keys IB's account window sends, each also per segment: "-C" (commodities) and "-S" (securities).
ACCOUNT_KEYS = (
    "AccruedCash", "AccruedDividend", "AvailableFunds", "Billable", "BuyingPower", "Cushion", "DayTradesRemaining",
    "DayTradesRemainingT+1", "DayTradesRemainingT+2", "DayTradesRemainingT+3", "DayTradesRemainingT+4",
    "EquityWithLoanValue", "ExcessLiquidity", "FullAvailableFunds", "FullExcessLiquidity", "FullInitMarginReq",
    "FullMaintMarginReq", "GrossPositionValue", "Guarantee", "IndianStockHaircut", "InitMarginReq", "Leverage",
    "LookAheadAvailableFunds", "LookAheadExcessLiquidity", "LookAheadInitMarginReq", "LookAheadMaintMarginReq",
    "LookAheadNextChange", "MaintMarginReq", "NLVAndMarginInReview", "NetLiquidation", "NetLiquidationUncertainty",
    "PASharesValue", "PhysicalCertificateValue", "PostExpirationExcess", "PostExpirationMargin",
    "PreviousDayEquityWithLoanValue", "RegTEquity", "RegTMargin", "SMA", "TotalCashValue",
    "TotalDebitCardPendingCharges", "TradingType", "WhatIfPMEnabled", "ColumnPrio", "SegmentTitle",
)  # fmt: skip
SEGMENTS = ("", "-C", "-S")
# Per-currency keys beyond the ledger's, sent in each currency block.
CURRENCY_KEYS = (
    "AccruedCash", "AccruedDividend", "CorporateBondValue", "Cryptocurrency", "FundValue", "FuturesOptionValue",
    "IssuerOptionValue", "MoneyMarketFundValue", "MutualFundValue", "NetDividend", "RealCurrency", "TBillValue",
    "TBondValue", "WarrantValue",
)  # fmt: skip
# Currencies for more blocks once the account's own are used up.
MORE_CURRENCIES = (
    "AUD", "CAD", "CHF", "CNH", "CZK", "DKK", "EUR", "GBP", "HKD", "HUF", "ILS", "INR", "JPY", "KRW", "MXN", "NOK",
    "NZD", "PLN", "SEK", "SGD", "USD", "ZAR",
)  # fmt: skip
SPECIAL_VALUES = {"Cushion": "1", "DayTradesRemaining": "-1", "TradingType": "STKNOPT", "WhatIfPMEnabled": "true"}


def filler_rows(rows: list[Row], n: int) -> list[Row]:
    """`n` filler rows for an account whose ledger rows are `rows` (see the module's invariants)."""
    taken = {(key, currency) for key, _, currency in rows}
    out: list[Row] = []
    for row in _candidates(rows):
        if len(out) >= n:
            break
        if (row[0], row[2]) not in taken:
            taken.add((row[0], row[2]))
            out.append(row)
    return out


def _candidates(rows: list[Row]) -> Iterator[Row]:
    base = next((currency for key, _, currency in rows if key == "NetLiquidation"), "USD")
    held = [value for key, value, _ in rows if key == "Currency"]
    for key in ACCOUNT_KEYS:
        for segment in SEGMENTS:
            value = SPECIAL_VALUES.get(key, "0.00")
            yield key + segment, value, "" if key in SPECIAL_VALUES else base
    for currency in [*held, *(c for c in MORE_CURRENCIES if c not in held)]:
        for key in CURRENCY_KEYS:
            yield key, "0.00", currency
    serial = 0
    while True:  # past every realistic key: numbered ones, so that any volume can be asked for
        serial += 1
        yield f"FillerValue{serial}", "0.00", base
