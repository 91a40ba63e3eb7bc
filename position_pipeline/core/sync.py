"""Turns a claimed batch and one IB snapshot into results: per item, a row per account it covers, or why none.

Pure functions over polars frames. The design note's mistakes are not repeated: right, strike, expiry and multiplier
come from the contract (null where a contract has none, as for stocks), never 0 / '' / 'CALL'.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from position_pipeline.core.ib_reader import HeldPosition, IBSnapshot
from position_pipeline.core.lake import (
    DESK_VALUES,
    POSITION_UPDATES_SCHEMA,
    POSITION_VALUES,
    SNAPSHOT_RESULTS_SCHEMA,
)


def snapshot_results(batch: pl.DataFrame, snapshot: IBSnapshot) -> pl.DataFrame:
    """Per claimed item of `batch` (a frame in the queue's schema): one row per account it covers, with the values,
    or one row with `error` saying why it gets none.

    An item pinned to an account covers that account; one without covers every account read that holds its contract.
    An item's rows are all there or none is: when one holding account has no values, the item fails as a whole. The
    outcome depends only on the item's contract and pinned account, so it is worked out once per distinct pair and
    joined to the items: a backfill's 100,000 items hold a few thousand pairs.
    """
    held = snapshot.by_conid()
    outcomes: list[dict[str, object]] = []
    for conid, pinned in batch.select("conid", "account").unique().iter_rows():
        candidates = sorted((p for p in held.get(conid, []) if pinned in (None, p.account)), key=_by_account)
        error = _why_not(conid, pinned, candidates, snapshot.accounts, snapshot.taken_at)
        if error is not None:
            outcomes.append({"conid": conid, "pinned": pinned, "error": error})
        else:
            outcomes.extend({"conid": conid, "pinned": pinned, **_values(p), "error": None} for p in candidates)
    by_pair = pl.DataFrame(
        outcomes,
        schema={"conid": pl.Int64(), "pinned": pl.String(), **POSITION_VALUES, **DESK_VALUES, "error": pl.String()},
    )
    items = batch.select(
        "request_id",
        "conid",
        pl.col("account").cast(pl.String).alias("pinned"),
        pl.col("symbol").alias("queued_symbol"),
        pl.col("created_at").alias("queued_at"),
        "claimed_at",
        "claims",
        pl.lit(snapshot.taken_at).alias("snapshot_at"),
        pl.lit(snapshot.client_id).alias("client_id"),
    )
    joined = items.join(by_pair, on=["conid", "pinned"], how="left", nulls_equal=True, maintain_order="left")
    return joined.select(SNAPSHOT_RESULTS_SCHEMA.names()).cast(SNAPSHOT_RESULTS_SCHEMA)


def pinned_accounts(batch: pl.DataFrame) -> dict[int, frozenset[str]]:
    """conid -> the accounts its items name, for the contracts of `batch` whose every item names one: the read needs
    those accounts only. A contract with an item that names none needs every account holding it, so it is absent."""
    per_conid = batch.group_by("conid").agg(pl.col("account").cast(pl.String).alias("accounts"))
    return {conid: frozenset(accounts) for conid, accounts in per_conid.iter_rows() if None not in accounts}


def given_back(batch: pl.DataFrame, snapshot: IBSnapshot) -> dict[str, str]:
    """request_id -> why, for the items of `batch` that need values IB did not give: an item pinned to an account
    whose download failed (or, in the pnl mode, whose PnL for the item's contract never came), or one without an
    account whose contract reqPositions lists in such an account. They are given back (no attempt counted) rather
    than judged, so an item never succeeds without the row of every account holding it."""
    if not snapshot.unavailable:
        return {}
    if snapshot.positions_from_downloads:  # no position list: an account not read may hold any contract
        unread = ", ".join(sorted(snapshot.unavailable))
        return {
            request_id: f"IB serves no position list to this login and account(s) {unread} were not read: "
            + "; ".join(f"{a}: {why}" for a, why in sorted(snapshot.unavailable.items()))
            for request_id, pinned in batch.select("request_id", "account").iter_rows()
            if pinned is None or pinned in snapshot.unavailable
        }
    blocked: dict[int, list[str]] = {}
    for account, conid in sorted(snapshot.unread):
        blocked.setdefault(conid, []).append(account)
    back: dict[str, str] = {}
    for request_id, conid, pinned in batch.select("request_id", "conid", "account").iter_rows():
        accounts = blocked.get(conid, []) if pinned is None else [pinned] * _unread(snapshot, pinned, conid)
        if accounts:
            back[request_id] = "; ".join(f"account {a} was not read: {snapshot.unavailable[a]}" for a in accounts)
    return back


def _unread(snapshot: IBSnapshot, account: str, conid: int) -> bool:
    """Whether `account`'s values for `conid` were not read: the whole account (its download failed), or that pair
    (pnl mode: the account's other pairs were read)."""
    whole = account not in snapshot.downloads
    return account in snapshot.unavailable and (whole or (account, conid) in snapshot.unread)


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


def read_summary(results: pl.DataFrame, snapshot: IBSnapshot) -> dict[str, int | float | str]:
    """What the UI shows about one IB read of a batch: items, how many were found and in how many rows, the client
    id, the accounts, how old the values were when read, and how many quantities moved since reqPositions."""
    items = results["request_id"].n_unique()
    not_found = results.filter(pl.col("error").is_not_null()).height
    found = results.filter(pl.col("error").is_null())
    ages = values_ages(found)
    return {
        "items": items,
        "found": items - not_found,
        "not_found": not_found,
        "rows": found.height,
        "client_id": snapshot.client_id,
        "accounts": ", ".join(sorted({a for a in found["account"].to_list() if a})),
        "values_age_seconds_max": round(float(ages.max() or 0.0), 3),  # type: ignore[arg-type]
        "values_age_seconds_median": round(float(ages.median() or 0.0), 3),  # type: ignore[arg-type]
        "position_moved": len(position_moves(snapshot)),
    }


def accounts_read(snapshot: IBSnapshot) -> pl.DataFrame:
    """One row per account the read needed: its outcome (`read`, or why not), base currency, when IB computed its
    values, how old they were, the currencies it sent a rate for, and how long the download took."""
    rows: list[dict[str, object]] = [
        {
            "account": d.account,
            "outcome": "read",
            "base_currency": d.base_currency,
            "account_update_time": d.update_time,
            "values_as_of": d.values_as_of,
            "values_age_seconds": None
            if d.values_as_of is None
            else round((d.finished_at - d.values_as_of).total_seconds(), 1),
            "rates": ", ".join(f"{c} {r:g}" for c, r in sorted(d.rates.items())),
            "seconds": round(snapshot.seconds.get(d.account, 0.0), 3),
        }
        for d in snapshot.downloads.values()
    ]
    rows += [
        {"account": account, "outcome": why, "seconds": round(snapshot.seconds.get(account, 0.0), 3)}
        for account, why in snapshot.unavailable.items()
    ]
    schema = {
        "account": pl.String(), "outcome": pl.String(), "base_currency": pl.String(),
        "account_update_time": pl.String(), "values_as_of": pl.Datetime("us", "UTC"),
        "values_age_seconds": pl.Float64(), "rates": pl.String(), "seconds": pl.Float64(),
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema).sort("account")


def values_ages(rows: pl.DataFrame) -> pl.Series:
    """snapshot_at - values_as_of of each row, in seconds (null where IB gave no time)."""
    return rows.select(
        (pl.col("snapshot_at") - pl.col("values_as_of")).dt.total_milliseconds().truediv(1000).alias("age")
    ).to_series()


def position_moves(snapshot: IBSnapshot) -> list[str]:
    """One line per position whose quantity in the values' message (account download, PnL) differs from the
    connect-time reqPositions figure (a fill in between): the row carries the figure of the values' moment."""
    return [
        f"{p.account} conid {p.conid} ({p.local_symbol or p.symbol}): reqPositions said {p.connect_position:g}, the "
        f"{'PnL message' if p.values_from == 'pnl' else 'account download'} {p.position:g}; the row has {p.position:g}"
        for p in snapshot.positions
        if p.moved and p.connect_position is not None
    ]


def missing_rates(results: pl.DataFrame) -> list[str]:
    """Why some rows have no base-currency values: one line per account and currency IB sent no ExchangeRate for."""
    gaps = (
        results.filter(pl.col("error").is_null() & pl.col("fx_rate").is_null())
        .group_by("account", "currency", "base_currency")
        .len("rows")
        .sort("account", "currency")
    )
    return [
        f"account {account} (base {base or 'unknown'}) sent no ExchangeRate for {currency}: {rows} rows without "
        "base-currency values"
        for account, currency, base, rows in gaps.iter_rows()
    ]


def failures(results: pl.DataFrame) -> dict[str, str]:
    """request_id -> reason, for the items that get no row."""
    failed = results.filter(pl.col("error").is_not_null())
    return dict(zip(failed["request_id"].to_list(), failed["error"].to_list(), strict=True))


def _by_account(p: HeldPosition) -> str:
    return p.account


def _why_not(
    conid: int, pinned: str | None, candidates: list[HeldPosition], accounts: list[str], read_at: datetime
) -> str | None:
    where = pinned or ", ".join(accounts)
    if pinned is not None and pinned not in accounts:
        return f"account {pinned} is not one of the accounts read ({', '.join(accounts)})"
    if not candidates:
        return f"not held: conid {conid} is not a position in {where} (IB read at {read_at:%Y-%m-%d %H:%M:%S} UTC)"
    for p in candidates:
        if p.market_value is None and p.position != 0:
            return f"IB sent no portfolio values for conid {conid} in {p.account} (reqAccountUpdates)"
        if p.values_as_of is None:
            told = f"{p.account_update_time!r}" if p.account_update_time is not None else "none"
            return (
                f"IB sent no usable account update time for {p.account} (got {told}): the values of conid {conid} "
                "have no known time"
            )
    return None


def _values(p: HeldPosition) -> dict[str, object]:
    """A position closed today (quantity 0) without a portfolio item: its value is 0, its price unknown. Base
    values are the contract-currency values times the account's rate for that currency (null without a rate)."""
    closed = p.position == 0 and p.market_value is None
    has_expiry = p.sec_type in ("OPT", "FOP", "FUT", "WAR")
    market_value = 0.0 if closed else p.market_value
    unrealized = 0.0 if closed else p.unrealized_pnl
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
        "market_value": market_value,
        "unrealized_pnl": unrealized,
        "realized_pnl": p.realized_pnl,
        "account_update_time": p.account_update_time,
        "values_as_of": p.values_as_of,
        "base_currency": p.base_currency,
        "fx_rate": p.fx_rate,
        "market_value_base": _in_base(market_value, p.fx_rate),
        "unrealized_pnl_base": _in_base(unrealized, p.fx_rate),
        "realized_pnl_base": _in_base(p.realized_pnl, p.fx_rate),
        "daily_pnl": p.daily_pnl,
        "values_from": str(p.values_from),
    }


def _in_base(value: float | None, rate: float | None) -> float | None:
    return None if value is None or rate is None else value * rate
