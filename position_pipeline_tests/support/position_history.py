"""A position_updates history that the read-side tests share, written the way the sync job commits: every batch one
append, with snapshot_date the UTC day of snapshot_at. Four batches over three UTC days (2030-01-04 has none)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from position_pipeline.core import lake
from position_pipeline_tests.support.position_rows import position_update_row

DU1, DU2 = "DU1000001", "DU1000002"
AAPL, MSFT, SPY_PUT = 265598, 272093, 700001

B1 = datetime(2030, 1, 2, 14, 30, tzinfo=UTC)
B2 = datetime(2030, 1, 3, 0, 30, tzinfo=UTC)  # still 2030-01-02 in New York
B3 = datetime(2030, 1, 3, 20, 0, tzinfo=UTC)
B4 = datetime(2030, 1, 5, 15, 0, tzinfo=UTC)
AFTER_ALL = datetime(2030, 1, 6, 12, 0, tzinfo=UTC)

OUTPUT_COLUMNS = [
    "account", "conid", "symbol", "sec_type", "right", "strike", "expiry", "multiplier", "currency", "local_symbol",
    "position", "average_cost", "market_price", "market_value", "unrealized_pnl", "realized_pnl",
    "account_update_time", "snapshot_at", "request_id", "run_id", "values_as_of", "base_currency", "fx_rate",
    "market_value_base", "unrealized_pnl_base", "realized_pnl_base", "daily_pnl", "values_from", "age_seconds",
    "values_age_seconds",
]  # fmt: skip


def position_row(at: datetime, account: str, conid: int, position: float, **values: Any) -> dict[str, Any]:
    """One position_updates row; a stock unless `values` say otherwise."""
    symbol = {AAPL: "AAPL", MSFT: "MSFT"}.get(conid, "SPY")
    price = values.pop("market_price", 190.0)
    known = 0.0 if price is None else price  # a closed position may come without a price
    return position_update_row(
        **{
            "request_id": f"req-{account}-{conid}-{at:%d%H%M}",
            "conid": conid,
            "account": account,
            "symbol": symbol,
            "local_symbol": symbol,
            "position": position,
            "market_price": price,
            "market_value": position * known,
            "unrealized_pnl": position * (known - 150.0),
            "snapshot_at": at,
            **values,
        }
    )


def spy_put_row(at: datetime, position: float) -> dict[str, Any]:
    return position_row(
        at,
        DU1,
        SPY_PUT,
        position,
        sec_type="OPT",
        right="P",
        strike=450.0,
        expiry="20300118",
        multiplier=100.0,
        local_symbol="SPY   300118P00450000",
        market_price=3.25,
    )


def append_batch(uri: str, rows: list[dict[str, Any]]) -> None:
    """One batch: one commit."""
    write_deltalake(uri, pa.Table.from_pylist(rows, schema=lake.POSITION_UPDATES_ARROW_SCHEMA), mode="append")


def write_history(root: str) -> str:
    """The shared history under lake `root`; returns the table's URI."""
    uri = lake.ensure_position_updates_table(root)
    append_batch(
        uri,
        [
            position_row(B1, DU1, AAPL, 100.0),
            spy_put_row(B1, 5.0),
            position_row(B1, DU2, AAPL, 50.0),
            position_row(B1, DU2, MSFT, 10.0),  # never refreshed again: still the latest known
        ],
    )
    append_batch(
        uri,
        [position_row(B2, DU1, AAPL, 150.0), position_row(B2, DU2, AAPL, 0.0, market_price=None, realized_pnl=None)],
    )
    append_batch(uri, [position_row(B3, DU1, AAPL, 120.0), spy_put_row(B3, 7.0)])
    append_batch(uri, [position_row(B4, DU1, AAPL, 80.0)])
    return uri


def history_lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh lake holding the shared history, for a module-scoped fixture; returns its root."""
    root = str(tmp_path_factory.mktemp("history") / "lake")
    write_history(root)
    return root
