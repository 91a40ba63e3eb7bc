"""The resources: IB Gateway/TWS (read-only, through ib_async), the lake, and the Delta IO manager.

Every per-deployment value comes from an environment variable through `dg.EnvVar`, so the Dagster UI shows which
variable configures it. A variable that is not set leaves the field at its default, which points at a local IB
Gateway's paper port (127.0.0.1:4002) and a `.lake` folder in the working directory. An s3:// lake takes its
credentials, region and endpoint from the AWS_* variables `lake.storage_options_for` names.
"""

import os
from collections.abc import Iterable, Mapping, Set
from typing import Any

import dagster as dg
from dagster_deltalake import LocalConfig, S3Config, WriteMode
from dagster_deltalake.config import ClientConfig
from pydantic import Field

from position_pipeline.core import lake, terms
from position_pipeline.core.account_time import gateway_zone
from position_pipeline.core.ib_reader import IBSettings, IBSnapshot, read_snapshot
from position_pipeline.core.queue import PositionQueue
from position_pipeline.defs.io_managers import PositionUpdatesIOManager, RunBatchIOManager


class IBResource(dg.ConfigurableResource):
    """IB Gateway or TWS, read-only. Each run connects with its own client id and always disconnects."""

    host: str = Field(default=terms.IB_HOST, description="Gateway host (IB_HOST).")
    port: int = Field(
        default=terms.IB_PORT, description="API port (IB_PORT): 4001/4002 Gateway live/paper, 7496/7497 TWS live/paper."
    )
    client_id: int = Field(
        default=terms.IB_CLIENT_ID,
        description="First client id of this code location's range (IB_CLIENT_ID, at least 1: TWS binds manual "
        "orders to id 0); each run picks one in the range from its run id and moves on if IB answers 326.",
    )
    client_id_span: int = Field(
        default=terms.IB_CLIENT_ID_SPAN, description="How many client ids the range holds (IB_CLIENT_ID_SPAN)."
    )
    accounts: str = Field(
        default="", description="Comma-separated accounts to read (IB_ACCOUNTS); empty: every managed account."
    )
    connect_timeout: int = Field(
        default=terms.IB_CONNECT_TIMEOUT_S,
        description="Seconds for the handshake and the position read ib_async makes at connect (IB_CONNECT_TIMEOUT).",
    )
    request_timeout: int = Field(
        default=terms.IB_REQUEST_TIMEOUT_S,
        description="Seconds for each account's portfolio download (IB_REQUEST_TIMEOUT).",
    )
    read_budget: int = Field(
        default=terms.IB_READ_BUDGET_S,
        description="Seconds the whole IB read may take, connect and every account's download (IB_READ_BUDGET); "
        "accounts not reached within it have their items given back.",
    )
    gateway_tz: str = Field(
        default=terms.IB_GATEWAY_TZ,
        description="The gateway's time zone, an IANA name (IB_GATEWAY_TZ): IB states when it computed the values as "
        "a bare HH:MM in the zone the gateway was logged in with.",
    )

    values_from: str = Field(
        default=str(terms.IB_VALUES_FROM),
        description="Where the values come from (IB_VALUES_FROM): 'account_updates' (reqAccountUpdates, one "
        "account at a time; the account window's values, refreshed about every 3 minutes) or 'pnl' (reqPnLSingle "
        "per position, all accounts at once; real-time values and the daily PnL; IB does not document the currency "
        "of its value, taken as the contract's). docs/design.md says which to choose.",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Refuse bad settings when a run builds the resource, before any step claims an item."""
        self.settings()

    def settings(self) -> IBSettings:
        """The validated settings; DagsterInvalidConfigError naming the field and its variable when one is out of
        range (ports 1-65535; client ids 1 to 2**31-1, the whole range included; span and timeouts at least 1)."""
        ids_left = terms.IB_CLIENT_ID_MAX - self.client_id + 1  # the span that still fits IB's 32-bit client id
        bounds = {
            "port": (1, terms.IB_PORT_MAX),
            "client_id": (1, terms.IB_CLIENT_ID_MAX),
            "client_id_span": (1, ids_left),
            "connect_timeout": (1, None),
            "request_timeout": (1, None),
            "read_budget": (1, None),
        }
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            where = f"{value} (IB_{name.upper()})"
            if value < low:
                raise dg.DagsterInvalidConfigError(f"IBResource.{name} must be at least {low}, got {where}", [], None)
            if high is not None and value > high:
                why = ": IB's client id is a 32-bit int, up to 2**31-1 for the range's last id" if "id" in name else ""
                raise dg.DagsterInvalidConfigError(
                    f"IBResource.{name} must be at most {high}, got {where}{why}", [], None
                )
        try:
            gateway_zone(self.gateway_tz)
        except ValueError as exc:
            raise dg.DagsterInvalidConfigError(f"IBResource.gateway_tz: {exc}", [], None) from exc
        try:
            values_from = terms.values_from(self.values_from)
        except ValueError as exc:
            raise dg.DagsterInvalidConfigError(f"IBResource.values_from: {exc}", [], None) from exc
        return IBSettings(
            values_from=values_from,
            gateway_tz=self.gateway_tz,
            host=self.host,
            port=self.port,
            client_id=self.client_id,
            client_id_span=self.client_id_span,
            accounts=tuple(a.strip() for a in self.accounts.split(",") if a.strip()),
            connect_timeout=self.connect_timeout,
            request_timeout=self.request_timeout,
            read_budget=self.read_budget,
        )

    def read_snapshot(
        self, conids: Iterable[int], run_id: str, pinned: Mapping[int, Set[str]] | None = None
    ) -> IBSnapshot:
        """One polling read of the positions and portfolio values of these contracts (those in `pinned` in its
        accounts only: `sync.pinned_accounts`)."""
        return read_snapshot(self.settings(), conids, seed=run_id, pinned=pinned)


class LakeResource(dg.ConfigurableResource):
    """Where the queue and position_updates live: a local folder or an object-store URI (POSITION_LAKE_URI)."""

    root_uri: str = Field(description="Lake root (POSITION_LAKE_URI); tables live under {root_uri}/positions/.")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Refuse a blank root or an unsupported scheme when a run or the sensor builds the resource."""
        try:
            lake.table_uri(self.root_uri, lake.QUEUE_TABLE)
            self.storage_options()
        except ValueError as exc:
            raise dg.DagsterInvalidConfigError(f"LakeResource.root_uri: {exc}", [], None) from exc

    def storage_options(self) -> lake.StorageOptions | None:
        """delta-rs options for this lake, from the environment of the process using it (a run, the sensor)."""
        return lake.storage_options_for(self.root_uri)

    def queue(self) -> PositionQueue:
        return PositionQueue(lake.table_uri(self.root_uri, lake.QUEUE_TABLE), self.storage_options())


def _env_or(name: str, default: Any, kind: type = str) -> Any:
    """`dg.EnvVar(name)` when the variable is set (and not blank), else the default: Dagster has no EnvVar default."""
    if not os.environ.get(name, "").strip():
        return default
    return dg.EnvVar.int(name) if kind is int else dg.EnvVar(name)


def ib_resource() -> IBResource:
    return IBResource(
        host=_env_or("IB_HOST", terms.IB_HOST),
        port=_env_or("IB_PORT", terms.IB_PORT, int),
        client_id=_env_or("IB_CLIENT_ID", terms.IB_CLIENT_ID, int),
        client_id_span=_env_or("IB_CLIENT_ID_SPAN", terms.IB_CLIENT_ID_SPAN, int),
        accounts=_env_or("IB_ACCOUNTS", ""),
        connect_timeout=_env_or("IB_CONNECT_TIMEOUT", terms.IB_CONNECT_TIMEOUT_S, int),
        request_timeout=_env_or("IB_REQUEST_TIMEOUT", terms.IB_REQUEST_TIMEOUT_S, int),
        read_budget=_env_or("IB_READ_BUDGET", terms.IB_READ_BUDGET_S, int),
        gateway_tz=_env_or("IB_GATEWAY_TZ", terms.IB_GATEWAY_TZ),
        values_from=_env_or("IB_VALUES_FROM", str(terms.IB_VALUES_FROM)),
    )


def lake_resource() -> LakeResource:
    return LakeResource(root_uri=_env_or(lake.LAKE_URI_VARIABLE, lake.lake_root()))


def delta_io_manager(root_uri: str | None = None) -> PositionUpdatesIOManager:
    """The IO manager appending position_updates under `root_uri`; None: the lake POSITION_LAKE_URI names (else
    `.lake`), resolved in the run's own process. Appends only: overwrite mode would replace whole partitions of
    position history."""
    storage, client = delta_storage_config(lake.lake_root() if root_uri is None else root_uri)
    return PositionUpdatesIOManager(
        root_uri=_env_or(lake.LAKE_URI_VARIABLE, lake.lake_root()) if root_uri is None else root_uri,
        schema=lake.SCHEMA_NAME,
        mode=WriteMode.append,
        storage_options=storage,
        client_options=client,
    )


def build_resources(root_uri: str | None = None, ib: IBResource | None = None) -> dict[str, Any]:
    """The resources the sync assets run with, by key: definitions.py, the tests and the benchmarks all call this.

    `root_uri` None: the lake from POSITION_LAKE_URI (else `.lake`), as a deployment configures it; else that lake,
    for both the queue and the Delta IO manager. `ib` None: the gateway the IB_* variables name. The batch handed
    between the three sync assets is kept per run in the instance's storage, so a failed run can be re-executed from
    its failed step (defs/reexecution.py).
    """
    return {
        "ib": ib_resource() if ib is None else ib,
        "lake": lake_resource() if root_uri is None else LakeResource(root_uri=root_uri),
        "delta_io_manager": delta_io_manager(root_uri),
        "batch_io_manager": RunBatchIOManager(),
    }


_S3_CONFIG_FIELDS = {
    "AWS_ACCESS_KEY_ID": "access_key_id",
    "AWS_SECRET_ACCESS_KEY": "secret_access_key",
    "AWS_SESSION_TOKEN": "token",
    "AWS_REGION": "region",
    "AWS_ENDPOINT_URL": "endpoint",
}
"""S3Config's field for each of lake.S3_ENVIRONMENT but AWS_ALLOW_HTTP, which is ClientConfig.allow_http."""


def delta_storage_config(root: str) -> tuple[LocalConfig | S3Config, ClientConfig | None]:
    """The Delta IO manager's storage config for lake `root`: the options `lake.storage_options_for` decides.

    LocalConfig for a folder or file:// URI. For s3:// an S3Config whose fields are `dg.EnvVar`s of the variables set
    now: values resolve in the run's own process and secrets stay out of the UI. ValueError for other schemes.
    """
    options = lake.storage_options_for(root)
    if options is None:
        return LocalConfig(), None
    fields: dict[str, Any] = {field: dg.EnvVar(name) for name, field in _S3_CONFIG_FIELDS.items() if name in options}
    allow_http = options.get("AWS_ALLOW_HTTP")
    client = None if allow_http is None else ClientConfig(allow_http=allow_http.lower() in lake.TRUE_VALUES)
    return S3Config(**fields), client
