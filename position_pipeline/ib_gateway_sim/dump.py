"""The state as JSON (`--state-out`, `--state`): enough to check what each account was told, and to load again.

Layout:
- `seed`, `timezone` (IANA), `accounts` (names, in order), `base_currencies` {account: code},
  `cash` {account: {currency: amount}}, `fx_rates` {currency: live USD value of one unit};
- `valuations` {account: {"valued_at": ISO 8601 UTC, "exchange_rates": {currency: rate told}}};
- `positions`: per holding its contract, quantity and cost, the values as last reported (`market_price`,
  `market_value`, `unrealized_pnl`, `realized_pnl`) and `live_price`, the price now (the next revalue's).
Reported values are derived again on load from quantity, cost and the reported price, so they cannot disagree.
Older dumps load too: no base currencies means USD, cash as one number is base-currency cash, no timezone means
the default, no fx_rates the default table, no valuations (and no live_price) means valued at load time at
`market_price`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .contracts import SEC_TYPES, Contract, Holding

if TYPE_CHECKING:
    from .state import GatewayState

_NUMBERS = ("conid", "quantity", "average_cost", "market_price", "live_price", "strike", "realized_pnl")


def to_json(state: GatewayState) -> dict[str, Any]:
    """Nulls where a contract has no such field (right, strike, expiry, multiplier)."""
    rows = []
    for h in state.holdings.values():
        c, told = h.contract, state.valuation(h)
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
                "market_price": told.market_price,
                "market_value": told.market_value,
                "unrealized_pnl": told.unrealized_pnl,
                "realized_pnl": told.realized_pnl,
                "live_price": state.prices[c.conid],
            }
        )
    valuations = {}
    for account in state.accounts:
        told_account = state.account_valuation(account)
        valuations[account] = {
            "valued_at": told_account.valued_at.astimezone(UTC).isoformat(),
            "exchange_rates": dict(told_account.rates),
        }
    return {
        "seed": state.seed,
        "timezone": state.timezone,
        "accounts": list(state.accounts),
        "base_currencies": dict(state.base_currencies),
        "cash": {account: dict(balances) for account, balances in state.cash.items()},
        "fx_rates": dict(state.fx_rates),
        "valuations": valuations,
        "positions": rows,
    }


def from_json(cls: type[GatewayState], data: dict[str, Any]) -> GatewayState:
    """Errors name the field: `positions[3].quantity: ...`, `valuations.DU1.valued_at: ...`."""
    try:
        accounts = list(data["accounts"])
        bases = {str(k): str(v) for k, v in data.get("base_currencies", {}).items()}
        cash = {
            str(account): _balances(value, bases.get(str(account), "USD"))
            for account, value in data.get("cash", {}).items()
        }
        kwargs: dict[str, Any] = {"base_currencies": bases, "cash": cash}
        if "fx_rates" in data:
            kwargs["fx_rates"] = {str(k): float(v) for k, v in data["fx_rates"].items()}
        if data.get("timezone"):
            kwargs["timezone"] = str(data["timezone"])
        state = cls(accounts=accounts, seed=int(data.get("seed", 0)), **kwargs)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"state JSON: missing or malformed accounts, seed, cash or rates: {exc!r}") from exc
    told: dict[str, dict[int, float]] = {account: {} for account in state.accounts}
    for i, row in enumerate(data.get("positions", [])):
        try:
            reported = _load_position(state, row)
            told[row["account"]][int(row["conid"])] = reported
        except KeyError as exc:
            raise ValueError(f"positions[{i}].{exc.args[0]}: missing") from exc
        except (TypeError, ValueError) as exc:
            raise ValueError(f"positions[{i}].{exc}") from exc
    for account in state.accounts:
        saved = data.get("valuations", {}).get(account)
        if saved is None:
            state.revalue(account)  # an old dump: the live price is the reported one
            continue
        try:
            valued_at = datetime.fromisoformat(saved["valued_at"])
            if valued_at.tzinfo is None:
                raise ValueError(f"{saved['valued_at']!r} has no UTC offset")
            rates = {str(k): float(v) for k, v in saved.get("exchange_rates", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"valuations.{account}.valued_at or exchange_rates: {exc}") from exc
        state.valuations[account] = state.valuation_at(account, valued_at.astimezone(UTC), told[account], rates)
    return state


def _balances(value: Any, base: str) -> dict[str, float]:
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    return {base: float(value)}


def _load_position(state: GatewayState, row: dict[str, Any]) -> float:
    """Adds the holding and its live price; returns the reported price. Errors start with the field's name."""
    for name in _NUMBERS:
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
    if row["account"] not in state.accounts:
        raise ValueError(f"account: {row['account']!r} is not in accounts")
    reported = float(row["market_price"])
    live = row.get("live_price")
    state.prices[contract.conid] = reported if live in (None, "") else float(live)
    state.holdings[(row["account"], contract.conid)] = Holding(
        row["account"], contract, float(row["quantity"]), float(row["average_cost"]),
        float(row.get("realized_pnl") or 0.0),
    )  # fmt: skip
    return reported
