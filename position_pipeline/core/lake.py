"""Where the lake's tables live and what they hold: table URIs, storage options and schemas, declared once.

Every module that reads or writes a table takes its URI from `table_uri`, its storage options from
`storage_options_for` and its columns from the schemas here, so a column has one home and a table one address. Every
table lives at `{root}/positions/{name}`: the Dagster Delta IO manager writes `{root_uri}/{schema}/{table}` and is
configured with schema `positions`, so the queue (written directly with deltalake) and the IO manager's tables share
one folder.

The root is a local folder (or file:// URI) or an S3 URI (s3://bucket/prefix, any S3-compatible store). On S3,
delta-rs commits each version with a conditional put (PutObject If-None-Match: *), so concurrent writers never
overwrite each other's commits; settings that would turn that off are refused here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable
from deltalake import Field as DeltaField
from deltalake.exceptions import DeltaError, TableNotFoundError

from position_pipeline.core.terms import LAKE_URI_VARIABLE

logger = logging.getLogger(__name__)

StorageOptions = dict[str, str]
"""delta-rs/object_store options (credentials, endpoint, region); None or {} for a local folder."""


DEFAULT_LAKE_ROOT = ".lake"
"""The lake root when POSITION_LAKE_URI is not set, relative to the current directory."""

SCHEMA_NAME = "positions"
"""The folder under the lake root that holds every table (the Delta IO manager's `schema`)."""

QUEUE_TABLE = "position_queue"
POSITION_UPDATES_TABLE = "position_updates"
ARCHIVE_TABLE = "position_queue_archive"
"""SUCCESS items moved out of the hot queue by table upkeep: same schema as position_queue, never updated by runs."""

UTC_TIMESTAMP = pl.Datetime("us", "UTC")
"""Every timestamp in the lake: microseconds, UTC, timezone-aware (Delta's `timestamp` type)."""

QUEUE_SCHEMA = pl.Schema(
    {
        "request_id": pl.String(),
        "conid": pl.Int64(),
        "symbol": pl.String(),
        "account": pl.String(),
        "priority": pl.Int32(),
        "status": pl.String(),
        "created_at": UTC_TIMESTAMP,
        "updated_at": UTC_TIMESTAMP,
        "error_message": pl.String(),
        "attempts": pl.Int32(),
        "claims": pl.Int32(),
        "retry_after": UTC_TIMESTAMP,
        "claimed_by": pl.String(),
        "claimed_at": UTC_TIMESTAMP,
    }
)
"""The `position_queue` table: one row per requested position refresh, in exactly one status.

`account` is the IB account the producer pinned (null: any configured account); `attempts` counts item-level
failures, `claims` every claim (a re-claimed item has claims > 1); `retry_after` is set while an item is FAILED and
says when it may be claimed again.
"""

QUEUE_NULLABLE = frozenset({"account", "error_message", "retry_after", "claimed_by", "claimed_at"})
"""Columns that may be null; Delta enforces NOT NULL on the rest at every write."""

LEGACY_QUEUE_SCHEMA = pl.Schema(
    {
        "request_id": pl.String(),
        "conid": pl.Int64(),
        "symbol": pl.String(),
        "priority": pl.Int64(),
        "status": pl.String(),
        "created_at": pl.String(),
        "updated_at": pl.String(),
        "error_message": pl.String(),
    }
)
"""The original design's queue table (timestamps as naive ISO-8601 strings), read only by the legacy import."""

# Without atomic put-if-absent a commit can silently replace another writer's commit, and the queue's "one claim
# per item" guarantee is gone (delta-io/delta-rs#1868, #3091).
_UNSAFE_OPTIONS = frozenset({"aws_s3_allow_unsafe_rename"})
TRUE_VALUES = frozenset({"true", "1", "yes", "on"})
"""How a boolean option or variable says yes (as object_store reads it), lower-cased."""

LOCAL_SCHEMES = frozenset({"", "file"})
"""URI schemes of a local lake ("" is a plain path): no storage options."""

S3_SCHEMES = frozenset({"s3"})
"""URI schemes of an S3 lake: storage options from S3_ENVIRONMENT."""

S3_ENVIRONMENT = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP",
)
"""The environment variables an S3 lake's storage options are taken from, under the same names (delta-rs keys).

delta-rs would also read them from the environment itself; passing them makes every reader and writer (and the
Dagster IO manager's config) use the same ones. Other AWS_* variables (AWS_PROFILE, web identity) still reach
delta-rs through its own credential chain."""

UNSAFE_RENAME_VARIABLE = "AWS_S3_ALLOW_UNSAFE_RENAME"
"""delta-rs's switch for commits without put-if-absent; refused (it reads it from the environment by itself)."""


def lake_root(environ: Mapping[str, str] | None = None) -> str:
    """The lake root: POSITION_LAKE_URI when set (and not blank), else the absolute path of `.lake` here.

    A configured root is kept as given: a folder, a file:// URI or an s3:// URI (see `storage_options_for`).
    """
    env = os.environ if environ is None else environ
    configured = env.get(LAKE_URI_VARIABLE, "").strip()
    return configured or os.path.abspath(DEFAULT_LAKE_ROOT)


def table_uri(root: str | os.PathLike[str], name: str) -> str:
    """The URI of table `name`: `{root}/positions/{name}`, for a local folder or a URI such as s3://bucket/lake."""
    if not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise ValueError(f"table name must be a single path segment, got {name!r}")
    text = os.fspath(root)
    if not text:
        raise ValueError("the lake root must not be empty")
    if "://" in text:
        return f"{text.rstrip('/')}/{SCHEMA_NAME}/{name}"
    return os.path.join(text, SCHEMA_NAME, name)


def uri_scheme(uri: str | os.PathLike[str]) -> str:
    """The lower-case scheme of a URI (`s3` for s3://bucket/lake), or "" for a plain path."""
    text = os.fspath(uri)
    return text.split("://", 1)[0].lower() if "://" in text else ""


def storage_options_for(uri: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> StorageOptions | None:
    """The delta-rs storage options for the lake root or table at `uri`: the one place that decides them.

    None for a local folder or file:// URI. For s3:// the S3_ENVIRONMENT variables set in `environ` (default
    os.environ), possibly none ({}). Raises ValueError for any other scheme, and when the environment sets
    AWS_S3_ALLOW_UNSAFE_RENAME: delta-rs would read it from there and commit without put-if-absent.
    """
    scheme = uri_scheme(uri)
    if scheme in LOCAL_SCHEMES:
        return None
    if scheme not in S3_SCHEMES:
        raise ValueError(
            f"unsupported lake URI {os.fspath(uri)!r}: the lake is a local folder, a file:// URI or an s3:// URI "
            f"(any S3-compatible store, configured with {', '.join(S3_ENVIRONMENT)})"
        )
    env = os.environ if environ is None else environ
    options = {name: env[name].strip() for name in S3_ENVIRONMENT if env.get(name, "").strip()}
    for name, value in env.items():
        if name.upper() == UNSAFE_RENAME_VARIABLE and value.strip():
            options[name] = value.strip()  # a false value is harmless; a true one is refused just below
    return checked_storage_options(options) or {}


def resolve_storage_options(uri: str | os.PathLike[str], options: Mapping[str, str] | None) -> StorageOptions | None:
    """`options` when given (checked), else `storage_options_for(uri)`: what a function taking optional options uses."""
    return storage_options_for(uri) if options is None else checked_storage_options(options)


def checked_storage_options(options: Mapping[str, str] | None) -> StorageOptions | None:
    """A copy of `options` after refusing settings that would break concurrent writers' atomic commits."""
    if not options:
        return None
    checked: StorageOptions = {}
    for key, value in options.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"storage options must map str to str, got {key!r}: {value!r}")
        if key.lower() in _UNSAFE_OPTIONS and value.strip().lower() in TRUE_VALUES:
            raise ValueError(f"storage option {key}={value} disables atomic commits; the queue needs them")
        checked[key] = value
    return checked


def arrow_schema(schema: pl.Schema, nullable: Collection[str]) -> pa.Schema:
    """The Arrow schema a Delta table is created with: the polars types, NOT NULL except for `nullable` columns."""
    empty = pl.DataFrame(schema=schema).to_arrow()
    return pa.schema([pa.field(f.name, _plain_string(f.type), nullable=f.name in nullable) for f in empty.schema])


def _plain_string(dtype: pa.DataType) -> pa.DataType:
    """Delta has one string type; Arrow `string` keeps created schemas the same across polars versions."""
    if pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return pa.string()
    return dtype


QUEUE_ARROW_SCHEMA = arrow_schema(QUEUE_SCHEMA, QUEUE_NULLABLE)


# The sync job's tables. Both are declared here so the ib_snapshot step, the position_updates step and the table's
# creation agree on every column.

POSITION_VALUES = {
    "account": pl.String(),
    "symbol": pl.String(),
    "sec_type": pl.String(),
    "right": pl.String(),
    "strike": pl.Float64(),
    "expiry": pl.String(),
    "multiplier": pl.Float64(),
    "currency": pl.String(),
    "local_symbol": pl.String(),
    "position": pl.Float64(),
    "average_cost": pl.Float64(),
    "market_price": pl.Float64(),
    "market_value": pl.Float64(),
    "unrealized_pnl": pl.Float64(),
    "realized_pnl": pl.Float64(),
    "account_update_time": pl.String(),
}
"""The position and its values from IB, as both the ib_snapshot step and position_updates carry them.

`position`, `average_cost` and the values come from one portfolio item of the account's download (one moment);
`account_update_time` is IB's bare `HH:MM` for that moment, kept beside its parsed `values_as_of`."""

DESK_VALUES = {
    "values_as_of": UTC_TIMESTAMP,
    "base_currency": pl.String(),
    "fx_rate": pl.Float64(),
    "market_value_base": pl.Float64(),
    "unrealized_pnl_base": pl.Float64(),
    "realized_pnl_base": pl.Float64(),
    "daily_pnl": pl.Float64(),
    "values_from": pl.String(),
}
"""When IB computed the values (account updates: its update time on the right day in IB_GATEWAY_TZ; pnl: when the
PnL message arrived; as UTC) and the values in the account's base currency: `fx_rate` is the account's ExchangeRate
for the row's currency (1.0 for the base currency), `*_base = * x fx_rate`; null when IB sent no rate, never a
guessed 1.0. `daily_pnl` (pnl mode only) and `values_from` (terms.ValuesFrom) say where the values came from.
Nullable, and last in position_updates, so a lake written before they existed gets them by ALTER TABLE ADD COLUMNS
(its older rows read null)."""

SNAPSHOT_RESULTS_SCHEMA = pl.Schema(
    {
        "request_id": pl.String(),
        "conid": pl.Int64(),
        "queued_symbol": pl.String(),
        "queued_at": UTC_TIMESTAMP,
        "claimed_at": UTC_TIMESTAMP,
        "claims": pl.Int32(),
        "snapshot_at": UTC_TIMESTAMP,
        "client_id": pl.Int32(),
        **POSITION_VALUES,
        **DESK_VALUES,
        "error": pl.String(),
    }
)
"""The ib_snapshot step's output: per claimed item, one row per account it covers with its values, or one row with
`error` saying why the item gets none (an item's rows are all there or none is).

`claimed_at` and `claims` are carried from the queue so the position_updates step can time the batch and look for
rows an earlier run of a re-claimed item (claims > 1) already wrote. Not a lake table: nothing here is NOT NULL.
"""

POSITION_UPDATES_SCHEMA = pl.Schema(
    {
        "request_id": pl.String(),
        "conid": pl.Int64(),
        **POSITION_VALUES,
        "queued_at": UTC_TIMESTAMP,
        "snapshot_at": UTC_TIMESTAMP,
        "run_id": pl.String(),
        "snapshot_date": pl.Date(),
        **DESK_VALUES,
    }
)
"""The `position_updates` table: the appended position history, one row per refreshed item and account holding its
contract (an item pinned to an account: that account only). No POSITION_UPDATES_KEY has two rows."""


def with_desk_values(history: pl.LazyFrame) -> pl.LazyFrame:
    """A scan of position_updates with DESK_VALUES present: a lake not yet migrated by a run reads them as null."""
    present = history.collect_schema()
    missing = [pl.lit(None, dtype).alias(name) for name, dtype in DESK_VALUES.items() if name not in present]
    return history.with_columns(missing) if missing else history


POSITION_UPDATES_KEY = ("request_id", "account")
"""What identifies a row of position_updates: written exactly once (the re-claim check, the duplicates check)."""

POSITION_UPDATES_NULLABLE = frozenset(
    {"right", "strike", "expiry", "multiplier", "account_update_time", "market_price", "realized_pnl", *DESK_VALUES}
)
"""What a contract may lack (a stock has no right, strike or expiry): null, never 0, '' or 'CALL'. A position closed
today for which IB sent no portfolio item has a value of 0 but no known price or realized PnL: null."""

POSITION_UPDATES_PARTITION = "snapshot_date"
"""The physical (Hive) partition column of position_updates: one folder `snapshot_date=YYYY-MM-DD` per UTC day."""

POSITION_UPDATES_ARROW_SCHEMA = arrow_schema(POSITION_UPDATES_SCHEMA, POSITION_UPDATES_NULLABLE)


def open_existing(uri: str, storage_options: Mapping[str, str] | None = None) -> DeltaTable | None:
    """The table at `uri` at its newest version, or None when there is none: nothing is created.

    `storage_options` None: those `storage_options_for(uri)` gives."""
    try:
        return DeltaTable(uri, storage_options=resolve_storage_options(uri, storage_options))
    except TableNotFoundError:
        return None


def open_or_create(
    uri: str,
    schema: pa.Schema,
    *,
    name: str,
    description: str,
    partition_by: list[str] | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> DeltaTable:
    """The table at `uri` at its newest version, created empty first if absent.

    Losing a creation race to another process is fine: both then open the one table that won. Callers check the
    schema they found, since an existing table is opened whatever its columns.
    """
    existing = open_existing(uri, storage_options)
    if existing is not None:
        return existing
    options = resolve_storage_options(uri, storage_options)
    try:
        DeltaTable.create(
            uri,
            schema,
            mode="ignore",
            partition_by=partition_by,
            name=name,
            description=description,
            storage_options=options,
        )
        logger.info("created %s", uri)
    except DeltaError as exc:
        logger.info("%s was created concurrently (%s)", uri, exc)
    return DeltaTable(uri, storage_options=options)


def ensure_position_updates_table(root: str, storage_options: Mapping[str, str] | None = None) -> str:
    """The URI of `position_updates` under `root`, after creating the table if it is absent.

    Created with POSITION_UPDATES_SCHEMA and partitioned by snapshot_date, so appends without `partition_by` (the
    Dagster IO manager's) land in `snapshot_date=YYYY-MM-DD` folders. Losing a creation race to another process is
    fine; a table found with other columns or partitioning raises ValueError rather than being written to.
    `storage_options` None: those `storage_options_for(root)` gives.
    """
    uri = table_uri(root, POSITION_UPDATES_TABLE)
    dt = open_or_create(
        uri,
        POSITION_UPDATES_ARROW_SCHEMA,
        name=POSITION_UPDATES_TABLE,
        description="Position history: one row per successfully refreshed queue item.",
        partition_by=[POSITION_UPDATES_PARTITION],
        storage_options=resolve_storage_options(root, storage_options),
    )
    found = pl.scan_delta(dt).collect_schema()
    if found != POSITION_UPDATES_SCHEMA and _add_missing_columns(dt, found):
        dt = DeltaTable(uri, storage_options=resolve_storage_options(uri, storage_options))
        found = pl.scan_delta(dt).collect_schema()
    partitions = dt.metadata().partition_columns
    if found != POSITION_UPDATES_SCHEMA or partitions != [POSITION_UPDATES_PARTITION]:
        raise ValueError(
            f"{uri} is not a position_updates table: columns {dict(found)} partitioned by {partitions}, "
            f"expected {dict(POSITION_UPDATES_SCHEMA)} partitioned by {[POSITION_UPDATES_PARTITION]}"
        )
    return uri


def _add_missing_columns(dt: DeltaTable, found: pl.Schema) -> bool:
    """Give a position_updates table written before DESK_VALUES existed those columns (one ALTER TABLE commit);
    False, changing nothing, for any other difference. Safe when two processes do it at once."""
    expected = list(POSITION_UPDATES_SCHEMA.items())
    missing = [name for name in POSITION_UPDATES_SCHEMA if name not in found]
    if not missing or list(found.items()) != expected[: len(found)] or set(missing) - set(DESK_VALUES):
        return False
    fields = [f for f in POSITION_UPDATES_ARROW_SCHEMA if f.name in missing]
    try:
        dt.alter.add_columns([DeltaField.from_arrow(f) for f in fields])
        logger.info("added %s to %s", ", ".join(missing), dt.table_uri)
    except DeltaError as exc:
        logger.info("%s: columns added concurrently (%s)", dt.table_uri, exc)
    return True
