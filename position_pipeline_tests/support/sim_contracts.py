"""Hand-made contracts for the simulator's tests, spelled as IB describes them (one of each kind and currency the
tests need), so replies can be written out field by field."""

from __future__ import annotations

from position_pipeline.ib_gateway_sim.contracts import Contract

AAPL = Contract(265598, "AAPL", "STK", "USD", "NASDAQ", "AAPL", "NMS")
AAPL_CALL = Contract(
    700_000_001, "AAPL", "OPT", "USD", "SMART", "AAPL  270115C00230000", "AAPL", "20270115", 230.0, "C", "100"
)
MSFT = Contract(101_000, "MSFT", "STK", "USD", "NASDAQ", "MSFT", "NMS")
ES = Contract(500_000_000, "ES", "FUT", "USD", "CME", "ESH7", "ES", "202703", 0.0, "", "50")
EURUSD = Contract(400_000_000, "EUR", "CASH", "USD", "IDEALPRO", "EUR.USD", "EUR.USD")
SAP = Contract(124_000, "SAP", "STK", "EUR", "IBIS", "SAP", "XETRA")
SHEL = Contract(127_000, "SHEL", "STK", "GBP", "LSE", "SHEL", "SHEL")
TOYOTA = Contract(129_000, "7203", "STK", "JPY", "TSEJ", "7203", "7203")
FESX = Contract(500_000_600, "FESX", "FUT", "EUR", "EUREX", "FESXH7", "FESX", "202703", 0.0, "", "10")
HSBC_HK = Contract(990_005, "5", "STK", "HKD", "SEHK", "5", "5")  # a currency the simulator has no rate for
