"""The words and defaults every wing shares, each written once: queue statuses, priorities, retry, IB and batch
defaults.

Imports nothing heavy (no polars, deltalake or Dagster), so the CLI's parser and `--help` may use it.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class QueueStatus(StrEnum):
    """Where an item is in its life; it is in exactly one of these."""

    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


class Priority(IntEnum):
    """Why a position is queued: active strategies are refreshed before monitored ones."""

    ACTIVE = 1
    MONITORING = 2


MAX_ATTEMPTS = 3
"""Item-level failures after which a FAILED item is no longer claimed: the sync runs', checks' and status' default."""

LAKE_URI_VARIABLE = "POSITION_LAKE_URI"
"""The environment variable naming the lake root (a local folder or an object-store URI such as s3://bucket/lake)."""

IB_HOST = "127.0.0.1"
IB_PORT = 4002
"""IB Gateway's paper-trading API port (4001 live; TWS: 7496 live, 7497 paper)."""
IB_CLIENT_ID = 100
"""First client id of this code location's range (TWS binds manual orders to id 0, so never 0)."""
IB_CLIENT_ID_SPAN = 100
IB_PORT_MAX = 65_535
"""The highest TCP port; a port is 1 to this."""
IB_CLIENT_ID_MAX = 2**31 - 1
"""IB's API sends the client id as a signed 32-bit int: the last id of a range (client id + span - 1) is at most
this."""
IB_GATEWAY_TZ = "America/New_York"
"""The gateway's time zone (an IANA name): IB's account update time is a bare HH:MM in the zone the gateway was
logged in with. IB's own zone (its daily and weekly resets are set in US Eastern time) and the usual setting of
gateway containers and IBC installs; a desk whose gateway runs elsewhere sets IB_GATEWAY_TZ."""
IB_CONNECT_TIMEOUT_S = 10
IB_REQUEST_TIMEOUT_S = 30
"""Seconds one account's download may take (its own bound): past it that account's items are given back."""
IB_READ_BUDGET_S = 120
"""Seconds the whole read (connect and every account's download) may take: well under the 480-s write fence, so
a run that spent its budget still appends in time; accounts not reached within it are given back."""


class ValuesFrom(StrEnum):
    """Where a read takes the market values from (IB_VALUES_FROM); a row's `values_from` column names it."""

    ACCOUNT_UPDATES = "account_updates"
    """reqAccountUpdates per account, one account at a time (IB's rule across all clients): the account window's
    values, refreshed about every 3 minutes; no daily PnL."""
    PNL = "pnl"
    """reqPnLSingle per (account, conid), concurrently: the portfolio window's real-time values and the daily PnL.
    IB does not say which currency `value` is in: taken as the contract's, as updatePortfolio's."""


IB_VALUES_FROM = ValuesFrom.ACCOUNT_UPDATES


def values_from(text: str) -> ValuesFrom:
    """The mode `text` names; ValueError naming IB_VALUES_FROM and the choices otherwise."""
    try:
        return ValuesFrom(text)
    except ValueError:
        choices = " or ".join(repr(v.value) for v in ValuesFrom)
        raise ValueError(f"IB_VALUES_FROM must be {choices}, got {text!r}") from None


SENSOR_BATCH_SIZE = 50
"""Items a sync run requested by the sensor claims (its run config sets SyncConfig.batch_size to this)."""
BACKFILL_BATCH_SIZE = 200_000
"""Items a sync run claims unless told otherwise (SyncConfig.batch_size): a backfill takes its whole window at once."""
