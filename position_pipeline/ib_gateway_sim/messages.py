"""Message ids and the field layouts the simulator sends, per negotiated server version.

Layouts follow IB's official decoder (`ibapi/decoder.py`, `ibapi/server_versions.py`) and were checked against
ib_async 2.1's decoder, which unpacks several messages as exact tuples (an extra field drops the message there).
Where a layout changes inside the supported range 157..178, the encoder takes the server version.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import IntEnum

from .contracts import Holding, Valuation
from .framing import Field

MIN_SERVER_VERSION = 157
MAX_SERVER_VERSION = 178
# ibapi/server_versions.py: the ERR_MSG gains advancedOrderRejectJson from this version on.
MIN_SERVER_VER_ADVANCED_ORDER_REJECT = 166
NO_REQ_ID = -1
# IB's "unset" double (Java's Double.MAX_VALUE), as IB's server writes it: a value not computed yet (PnL single).
UNSET_DOUBLE = 1.7976931348623157e308
UNSET_DOUBLE_TEXT = "1.7976931348623157E308"


class In(IntEnum):
    """Client -> gateway message ids: every request IB's official client sends (ibapi/message.py OUT, 10.37)."""

    REQ_MKT_DATA = 1
    CANCEL_MKT_DATA = 2
    PLACE_ORDER = 3
    CANCEL_ORDER = 4
    REQ_OPEN_ORDERS = 5
    REQ_ACCT_DATA = 6
    REQ_EXECUTIONS = 7
    REQ_IDS = 8
    REQ_CONTRACT_DATA = 9
    REQ_MKT_DEPTH = 10
    CANCEL_MKT_DEPTH = 11
    REQ_NEWS_BULLETINS = 12
    CANCEL_NEWS_BULLETINS = 13
    SET_SERVER_LOGLEVEL = 14
    REQ_AUTO_OPEN_ORDERS = 15
    REQ_ALL_OPEN_ORDERS = 16
    REQ_MANAGED_ACCTS = 17
    REQ_FA = 18
    REPLACE_FA = 19
    REQ_HISTORICAL_DATA = 20
    EXERCISE_OPTIONS = 21
    REQ_SCANNER_SUBSCRIPTION = 22
    CANCEL_SCANNER_SUBSCRIPTION = 23
    REQ_SCANNER_PARAMETERS = 24
    CANCEL_HISTORICAL_DATA = 25
    REQ_CURRENT_TIME = 49
    REQ_REAL_TIME_BARS = 50
    CANCEL_REAL_TIME_BARS = 51
    REQ_FUNDAMENTAL_DATA = 52
    CANCEL_FUNDAMENTAL_DATA = 53
    REQ_CALC_IMPLIED_VOLAT = 54
    REQ_CALC_OPTION_PRICE = 55
    CANCEL_CALC_IMPLIED_VOLAT = 56
    CANCEL_CALC_OPTION_PRICE = 57
    REQ_GLOBAL_CANCEL = 58
    REQ_MARKET_DATA_TYPE = 59
    REQ_POSITIONS = 61
    REQ_ACCOUNT_SUMMARY = 62
    CANCEL_ACCOUNT_SUMMARY = 63
    CANCEL_POSITIONS = 64
    VERIFY_REQUEST = 65
    VERIFY_MESSAGE = 66
    QUERY_DISPLAY_GROUPS = 67
    SUBSCRIBE_TO_GROUP_EVENTS = 68
    UPDATE_DISPLAY_GROUP = 69
    UNSUBSCRIBE_FROM_GROUP_EVENTS = 70
    START_API = 71
    VERIFY_AND_AUTH_REQUEST = 72
    VERIFY_AND_AUTH_MESSAGE = 73
    REQ_POSITIONS_MULTI = 74
    CANCEL_POSITIONS_MULTI = 75
    REQ_ACCOUNT_UPDATES_MULTI = 76
    CANCEL_ACCOUNT_UPDATES_MULTI = 77
    REQ_SEC_DEF_OPT_PARAMS = 78
    REQ_SOFT_DOLLAR_TIERS = 79
    REQ_FAMILY_CODES = 80
    REQ_MATCHING_SYMBOLS = 81
    REQ_MKT_DEPTH_EXCHANGES = 82
    REQ_SMART_COMPONENTS = 83
    REQ_NEWS_ARTICLE = 84
    REQ_NEWS_PROVIDERS = 85
    REQ_HISTORICAL_NEWS = 86
    REQ_HEAD_TIMESTAMP = 87
    REQ_HISTOGRAM_DATA = 88
    CANCEL_HISTOGRAM_DATA = 89
    CANCEL_HEAD_TIMESTAMP = 90
    REQ_MARKET_RULE = 91
    REQ_PNL = 92
    CANCEL_PNL = 93
    REQ_PNL_SINGLE = 94
    CANCEL_PNL_SINGLE = 95
    REQ_HISTORICAL_TICKS = 96
    REQ_TICK_BY_TICK_DATA = 97
    CANCEL_TICK_BY_TICK_DATA = 98
    REQ_COMPLETED_ORDERS = 99
    REQ_WSH_META_DATA = 100
    CANCEL_WSH_META_DATA = 101
    REQ_WSH_EVENT_DATA = 102
    CANCEL_WSH_EVENT_DATA = 103
    REQ_USER_INFO = 104
    REQ_CURRENT_TIME_IN_MILLIS = 105

    @property
    def is_cancel(self) -> bool:
        """Cancels and unsubscribes get no reply from IB, whatever they cancel."""
        return self.name.startswith(("CANCEL_", "UNSUBSCRIBE_")) or self is In.REQ_GLOBAL_CANCEL


# Requests that take one of IB's market-data lines (the "streaming slots" the pipeline must never use).
MARKET_DATA_REQUESTS = frozenset({In.REQ_MKT_DATA, In.REQ_MKT_DEPTH, In.REQ_REAL_TIME_BARS, In.REQ_TICK_BY_TICK_DATA})
ORDER_REQUESTS = frozenset({In.PLACE_ORDER, In.CANCEL_ORDER})


class Out(IntEnum):
    """Gateway -> client message ids (ibapi/message.py IN)."""

    ERR_MSG = 4
    ACCT_VALUE = 6
    PORTFOLIO_VALUE = 7
    ACCT_UPDATE_TIME = 8
    NEXT_VALID_ID = 9
    MANAGED_ACCTS = 15
    CURRENT_TIME = 49
    OPEN_ORDER_END = 53
    ACCT_DOWNLOAD_END = 54
    EXECUTION_DATA_END = 55
    POSITION_DATA = 61
    POSITION_END = 62
    ACCOUNT_SUMMARY = 63
    ACCOUNT_SUMMARY_END = 64
    POSITION_MULTI = 71
    POSITION_MULTI_END = 72
    ACCOUNT_UPDATE_MULTI = 73
    ACCOUNT_UPDATE_MULTI_END = 74
    PNL_SINGLE = 95
    COMPLETED_ORDERS_END = 102


class ErrorCode(IntEnum):
    """IB error codes the simulator sends, with IB's standard texts in ERROR_TEXT."""

    MAX_RATE_EXCEEDED = 100
    NO_SECURITY_DEFINITION = 200
    SERVER_ERROR_READING_REQUEST = 320
    SERVER_ERROR_VALIDATING_REQUEST = 321
    CLIENT_ID_IN_USE = 326
    MARKET_DATA_NOT_SUBSCRIBED = 354
    CONNECTIVITY_LOST = 1100
    CONNECTIVITY_RESTORED_DATA_LOST = 1101
    CONNECTIVITY_RESTORED_DATA_MAINTAINED = 1102
    ACCOUNT_UPDATES_SWITCHED = 2100
    ACCOUNT_UPDATES_REFUSED = 2101
    MARKET_DATA_FARM_OK = 2104
    HMDS_FARM_OK = 2106
    TWS_SERVER_CONNECTIVITY_BROKEN = 2110
    SEC_DEF_FARM_OK = 2158


ERROR_TEXT: dict[ErrorCode, str] = {
    ErrorCode.MAX_RATE_EXCEEDED: "Max rate of messages per second has been exceeded:max={limit} rec={received}",
    ErrorCode.NO_SECURITY_DEFINITION: "No security definition has been found for the request",
    ErrorCode.SERVER_ERROR_READING_REQUEST: "Error reading request. {detail}",
    ErrorCode.SERVER_ERROR_VALIDATING_REQUEST: "Error validating request.-'{request}' : cause - {detail}",
    ErrorCode.CLIENT_ID_IN_USE: "Unable to connect as the client id is already in use. Retry with a unique client id.",
    ErrorCode.MARKET_DATA_NOT_SUBSCRIBED: "Requested market data is not subscribed.",
    ErrorCode.CONNECTIVITY_LOST: "Connectivity between IB and Trader Workstation has been lost.",
    ErrorCode.CONNECTIVITY_RESTORED_DATA_LOST: (
        "Connectivity between IB and Trader Workstation has been restored - data lost."
    ),
    ErrorCode.CONNECTIVITY_RESTORED_DATA_MAINTAINED: (
        "Connectivity between IB and Trader Workstation has been restored - data maintained."
    ),
    ErrorCode.ACCOUNT_UPDATES_SWITCHED: (
        "New account data requested from TWS. API client has been unsubscribed from account data."
    ),
    ErrorCode.ACCOUNT_UPDATES_REFUSED: (
        "Unable to subscribe to account as the following clients are subscribed to a different account."
    ),
    ErrorCode.MARKET_DATA_FARM_OK: "Market data farm connection is OK:usfarm",
    ErrorCode.HMDS_FARM_OK: "HMDS data farm connection is OK:ushmds",
    ErrorCode.TWS_SERVER_CONNECTIVITY_BROKEN: (
        "Connectivity between Trader Workstation and server is broken. It will be restored automatically."
    ),
    ErrorCode.SEC_DEF_FARM_OK: "Sec-def data farm connection is OK:secdefil",
}

READ_ONLY_DETAIL = "The API interface is currently in Read-Only mode."


def error_text(code: ErrorCode, **values: object) -> str:
    return ERROR_TEXT[code].format(**values)


def refused_text(client_ids: list[int]) -> str:
    """2101's text ends with the client ids holding the other account, in braces (as users quote it: `...a
    different account.{1}`)."""
    return ERROR_TEXT[ErrorCode.ACCOUNT_UPDATES_REFUSED] + "{" + ",".join(str(i) for i in client_ids) + "}"


POSITIONS_REFUSED_DETAIL = (
    "reqPositions is not available for a login with more than 50 accounts; use reqPositionsMulti per account"
)


def err_msg(server_version: int, req_id: int, code: int, text: str) -> list[Field]:
    """ERR_MSG: version 2; advancedOrderRejectJson from server version 166 (no errorTime below 194)."""
    fields: list[Field] = [Out.ERR_MSG, 2, req_id, code, text]
    if server_version >= MIN_SERVER_VER_ADVANCED_ORDER_REJECT:
        fields.append("")
    return fields


def next_valid_id(order_id: int) -> list[Field]:
    return [Out.NEXT_VALID_ID, 1, order_id]


def managed_accounts(accounts: list[str]) -> list[Field]:
    return [Out.MANAGED_ACCTS, 1, ",".join(accounts)]


def current_time(epoch_seconds: int) -> list[Field]:
    return [Out.CURRENT_TIME, 1, epoch_seconds]


def open_order_end() -> list[Field]:
    return [Out.OPEN_ORDER_END, 1]


def completed_orders_end() -> list[Field]:
    """COMPLETED_ORDERS_END carries no version field."""
    return [Out.COMPLETED_ORDERS_END]


def execution_data_end(req_id: int) -> list[Field]:
    return [Out.EXECUTION_DATA_END, 1, req_id]


def position_end() -> list[Field]:
    return [Out.POSITION_END, 1]


def account_value(key: str, value: str, currency: str, account: str) -> list[Field]:
    """ACCT_VALUE version 2 (account name present since version 2)."""
    return [Out.ACCT_VALUE, 2, key, value, currency, account]


def account_update_time(hh_mm: str) -> list[Field]:
    return [Out.ACCT_UPDATE_TIME, 1, hh_mm]


def account_download_end(account: str) -> list[Field]:
    return [Out.ACCT_DOWNLOAD_END, 1, account]


def account_summary(req_id: int, account: str, tag: str, value: str, currency: str) -> list[Field]:
    return [Out.ACCOUNT_SUMMARY, 1, req_id, account, tag, value, currency]


def account_summary_end(req_id: int) -> list[Field]:
    return [Out.ACCOUNT_SUMMARY_END, 1, req_id]


def account_update_multi(
    req_id: int, account: str, model_code: str, key: str, value: str, currency: str
) -> list[Field]:
    return [Out.ACCOUNT_UPDATE_MULTI, 1, req_id, account, model_code, key, value, currency]


def account_update_multi_end(req_id: int) -> list[Field]:
    return [Out.ACCOUNT_UPDATE_MULTI_END, 1, req_id]


def pnl_single(
    req_id: int,
    position: float,
    daily_pnl: float,
    unrealized_pnl: float,
    realized_pnl: float,
    value: float,
    unset: Collection[str] = (),
) -> list[Field]:
    """PNL_SINGLE has no version field; unrealized (118) and realized (119) PnL are present in 157+. Fields named in
    `unset` (dailyPnL, unrealizedPnL, realizedPnL, value) go out as IB's unset double."""
    values = {"dailyPnL": daily_pnl, "unrealizedPnL": unrealized_pnl, "realizedPnL": realized_pnl, "value": value}
    sent = [UNSET_DOUBLE_TEXT if name in unset else number for name, number in values.items()]
    return [Out.PNL_SINGLE, req_id, position, *sent]


def position_exchange(holding: Holding) -> str:
    """The exchange of a position message: IB leaves it empty for futures (its docs: "the exchange field is not
    populated in the position callback for futures"); portfolio messages keep it."""
    return "" if holding.contract.sec_type == "FUT" else holding.contract.exchange


def position_data(holding: Holding) -> list[Field]:
    """POSITION_DATA version 3: account, the contract (exchange, no primary exchange), position, avgCost."""
    c = holding.contract
    return [
        Out.POSITION_DATA, 3, holding.account,
        c.conid, c.symbol, c.sec_type, c.expiry, c.strike, c.right, c.multiplier, position_exchange(holding),
        c.currency, c.local_symbol, c.trading_class,
        holding.quantity, holding.average_cost,
    ]  # fmt: skip


def position_multi(req_id: int, holding: Holding, model_code: str = "") -> list[Field]:
    """POSITION_MULTI version 1 (ibapi decoder processPositionMultiMsg): reqId, account, the contract as in
    POSITION_DATA, position, avgCost, modelCode."""
    c = holding.contract
    return [
        Out.POSITION_MULTI, 1, req_id, holding.account,
        c.conid, c.symbol, c.sec_type, c.expiry, c.strike, c.right, c.multiplier, position_exchange(holding),
        c.currency, c.local_symbol, c.trading_class,
        holding.quantity, holding.average_cost, model_code,
    ]  # fmt: skip


def position_multi_end(req_id: int) -> list[Field]:
    return [Out.POSITION_MULTI_END, 1, req_id]


def portfolio_value(holding: Holding, valuation: Valuation) -> list[Field]:
    """PORTFOLIO_VALUE version 8: the contract (primary exchange, no exchange), then values, then the account."""
    c = holding.contract
    return [
        Out.PORTFOLIO_VALUE, 8,
        c.conid, c.symbol, c.sec_type, c.expiry, c.strike, c.right, c.multiplier, c.exchange, c.currency,
        c.local_symbol, c.trading_class,
        holding.quantity, valuation.market_price, valuation.market_value, holding.average_cost,
        valuation.unrealized_pnl, valuation.realized_pnl, holding.account,
    ]  # fmt: skip
