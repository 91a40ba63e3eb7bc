"""Reading the fields of a client's request, and the two ways a request can be wrong (IB's 320 and 321).

A session answers a RequestError with that error code and keeps the connection, as IB does.
"""

from __future__ import annotations

from .messages import NO_REQ_ID, ErrorCode, In

# Position of the request id in requests that carry one (after the message id and, for most, a version field).
_REQ_ID_INDEX: dict[int, int] = {
    In.REQ_MKT_DATA: 2, In.CANCEL_MKT_DATA: 2, In.REQ_CONTRACT_DATA: 2, In.REQ_MKT_DEPTH: 2,
    In.REQ_HISTORICAL_DATA: 1, In.REQ_REAL_TIME_BARS: 2, In.REQ_ACCOUNT_SUMMARY: 2, In.REQ_POSITIONS_MULTI: 2,
    In.REQ_HISTOGRAM_DATA: 1, In.REQ_PNL: 1, In.REQ_HISTORICAL_TICKS: 1, In.REQ_TICK_BY_TICK_DATA: 1,
    In.REQ_EXECUTIONS: 2, In.REQ_ACCOUNT_UPDATES_MULTI: 2, In.REQ_PNL_SINGLE: 1,
    In.PLACE_ORDER: 1, In.CANCEL_ORDER: 2,
}  # fmt: skip


class RequestError(Exception):
    """A field of a request could not be read: IB answers 320 and keeps the connection."""

    code = ErrorCode.SERVER_ERROR_READING_REQUEST


class InvalidRequest(RequestError):
    """A request was read but names something the gateway does not have: IB answers 321."""

    code = ErrorCode.SERVER_ERROR_VALIDATING_REQUEST


def int_field(fields: list[str], index: int, name: str) -> int:
    if len(fields) <= index:
        raise RequestError(f"field {name} (#{index}) is missing")
    try:
        return int(fields[index])
    except ValueError as exc:
        raise RequestError(f"field {name} (#{index}) is not an integer: {fields[index][:20]!r}") from exc


def bool_field(fields: list[str], index: int, name: str) -> bool:
    value = int_field(fields, index, name)
    if value not in (0, 1):
        raise RequestError(f"field {name} (#{index}) is not a boolean: {value}")
    return bool(value)


def account_field(fields: list[str], index: int, accounts: list[str], allow_empty_single: bool = False) -> str:
    """The account a request names; empty means the only account where IB allows that (reqAccountUpdates)."""
    account = fields[index] if len(fields) > index else ""
    if not account and allow_empty_single and len(accounts) == 1:
        return accounts[0]
    if account not in accounts:
        raise InvalidRequest(f"account {account!r} is not managed by this gateway ({','.join(accounts)})")
    return account


def req_id_of(fields: list[str], msg_id: int, default: int = NO_REQ_ID) -> int:
    """The request id of a request that carries one, for the error that answers it; `default` otherwise."""
    index = _REQ_ID_INDEX.get(msg_id)
    if index is None or len(fields) <= index:
        return default
    try:
        return int(fields[index])
    except ValueError:
        return default
