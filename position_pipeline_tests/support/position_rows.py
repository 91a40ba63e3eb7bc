"""One position_updates row as a sync run writes it, for tests that build tables by hand: a US stock held in
DU1000001, every column of the schema present, so a schema change is made once here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

AT = datetime(2030, 1, 2, 14, 30, tzinfo=UTC)
"""When the default row was read from IB."""
VALUES_AGE = timedelta(seconds=90)
"""How much older than the read IB's values are (values_as_of: that moment's minute, as IB states it)."""


def position_update_row(**values: Any) -> dict[str, Any]:
    """A full position_updates row: the defaults below, then `values`. `snapshot_at` sets the default queued_at
    (4 s before), values_as_of (the minute VALUES_AGE before) and account update time (its HH:MM), run and
    snapshot_date unless `values` name them too. The account's base is USD: the base values equal the values."""
    at: datetime = values.get("snapshot_at", AT)
    values_at = (at - VALUES_AGE).replace(second=0, microsecond=0)
    row: dict[str, Any] = {
        "request_id": f"req-{at:%d%H%M}",
        "conid": 265598,
        "account": "DU1000001",
        "symbol": "AAPL",
        "sec_type": "STK",
        "right": None,
        "strike": None,
        "expiry": None,
        "multiplier": None,
        "currency": "USD",
        "local_symbol": "AAPL",
        "position": 100.0,
        "average_cost": 150.0,
        "market_price": 190.0,
        "market_value": 19_000.0,
        "unrealized_pnl": 4_000.0,
        "realized_pnl": 0.0,
        "account_update_time": f"{values_at:%H:%M}",
        "queued_at": at - timedelta(seconds=4),
        "snapshot_at": at,
        "run_id": f"run-{at:%d%H%M}",
        "snapshot_date": at.astimezone(UTC).date(),
        "values_as_of": values_at,
        "base_currency": "USD",
        "fx_rate": 1.0,
    }
    row.update(values)
    for name in ("market_value", "unrealized_pnl", "realized_pnl"):
        if f"{name}_base" not in values:
            rate, value = row["fx_rate"], row[name]
            row[f"{name}_base"] = None if rate is None or value is None else value * rate
    return row
