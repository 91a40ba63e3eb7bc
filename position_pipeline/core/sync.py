"""Turns a claimed batch and one IB snapshot into one result per item: the values, or why there are none.

Pure functions over polars frames. The design note's mistakes are not repeated: right, strike, expiry and multiplier
come from the contract (null where a contract has none, as for stocks), never 0 / '' / 'CALL'.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from position_pipeline.core.ib_reader import HeldPosition, IBSnapshot
from position_pipeline.core.lake import POSITION_UPDATES_SCHEMA, POSITION_VALUES, SNAPSHOT_RESULTS_SCHEMA


def snapshot_results(batch: pl.DataFrame, snapshot: IBSnapshot) -> pl.DataFrame:
    """One row per claimed item of `batch` (a frame in the queue's schema): its values, or why there are none.

    The outcome depends only on the item's contract and pinned account, so it is worked out once per distinct pair
    and joined to the items: a backfill's 100,000 items hold a few thousand pairs.
    """
    held = snapshot.by_conid()
    outcomes = []
    for conid, pinned in batch.select("conid", "account").unique().iter_rows():
        candidates = [p for p in held.get(conid, []) if pinned in (None, p.account)]
        error = _why_not(conid, pinned, candidates, snapshot.accounts, snapshot.taken_at)
        outcome: dict[str, object] = {"conid": conid, "pinned": pinned, "error": error}
        if error is None:
            outcome.update(_values(candidates[0]))
        outcomes.append(outcome)
    by_pair = pl.DataFrame(
        outcomes, schema={"conid": pl.Int64(), "pinned": pl.String(), **POSITION_VALUES, "error": pl.String()}
    )
    items = batch.select(
        "request_id",
        "conid",
        pl.col("account").alias("pinned"),
        pl.col("symbol").alias("queued_symbol"),
        pl.col("created_at").alias("queued_at"),
        "claimed_at",
        "claims",
        pl.lit(snapshot.taken_at).alias("snapshot_at"),
        pl.lit(snapshot.client_id).alias("client_id"),
    )
    joined = items.join(by_pair, on=["conid", "pinned"], how="left", nulls_equal=True, maintain_order="left")
    return joined.select(SNAPSHOT_RESULTS_SCHEMA.names()).cast(SNAPSHOT_RESULTS_SCHEMA)


def position_update_rows(results: pl.DataFrame, run_id: str) -> pl.DataFrame:
    """The rows `position_updates` appends: the successful results, stamped with the run and the snapshot date."""
    return (
        results.filter(pl.col("error").is_null())
        .with_columns(
            run_id=pl.lit(run_id, pl.String),
            snapshot_date=pl.col("snapshot_at").dt.date(),
        )
        .select(POSITION_UPDATES_SCHEMA.names())
        .cast(POSITION_UPDATES_SCHEMA)
    )


def read_summary(results: pl.DataFrame, snapshot: IBSnapshot) -> dict[str, int | str]:
    """What the UI shows about one IB read of a batch: items, how many were found, the client id, their accounts."""
    not_found = results.filter(pl.col("error").is_not_null()).height
    return {
        "items": results.height,
        "found": results.height - not_found,
        "not_found": not_found,
        "client_id": snapshot.client_id,
        "accounts": ", ".join(sorted({a for a in results["account"].to_list() if a})),
    }


def failures(results: pl.DataFrame) -> dict[str, str]:
    """request_id -> reason, for the items that get no row."""
    failed = results.filter(pl.col("error").is_not_null())
    return dict(zip(failed["request_id"].to_list(), failed["error"].to_list(), strict=True))


def _why_not(
    conid: int, pinned: str | None, candidates: list[HeldPosition], accounts: list[str], read_at: datetime
) -> str | None:
    where = pinned or ", ".join(accounts)
    if pinned is not None and pinned not in accounts:
        return f"account {pinned} is not one of the accounts read ({', '.join(accounts)})"
    if not candidates:
        return f"not held: conid {conid} is not a position in {where} (IB read at {read_at:%Y-%m-%d %H:%M:%S} UTC)"
    if len(candidates) > 1:
        held_in = ", ".join(p.account for p in candidates)
        return f"held in several accounts ({held_in}): enqueue the item with the account it is for"
    if candidates[0].market_value is None and candidates[0].position != 0:
        return f"IB sent no portfolio values for conid {conid} in {candidates[0].account} (reqAccountUpdates)"
    return None


def _values(p: HeldPosition) -> dict[str, object]:
    """A position closed today (quantity 0) has no portfolio item in ib_async: its value is 0, its price unknown."""
    closed = p.position == 0 and p.market_value is None
    has_expiry = p.sec_type in ("OPT", "FOP", "FUT", "WAR")
    return {
        "account": p.account,
        "symbol": p.symbol,
        "sec_type": p.sec_type,
        "right": p.right or None,
        "strike": p.strike if p.sec_type in ("OPT", "FOP", "WAR") and p.strike else None,
        "expiry": p.expiry if has_expiry and p.expiry else None,
        "multiplier": float(p.multiplier) if p.multiplier else None,
        "currency": p.currency,
        "local_symbol": p.local_symbol,
        "position": p.position,
        "average_cost": p.average_cost,
        "market_price": p.market_price,
        "market_value": 0.0 if closed else p.market_value,
        "unrealized_pnl": 0.0 if closed else p.unrealized_pnl,
        "realized_pnl": p.realized_pnl,
        "account_update_time": p.account_update_time,
    }
