"""The Delta Lake IO manager for position_updates: dagster-deltalake-polars, appending, physically by snapshot_date.

Dagster partitions the sync assets by the hour items were queued (`partition_expr: queued_at`, which also makes the
IO manager's "Query" metadata name the run's rows correctly), while the table itself is partitioned by the UTC day of
the snapshot, the layout readers prune on. The stock handler would pass the Dagster partition column to
`write_deltalake(partition_by=...)`; this one appends without it, so delta-rs uses the table's own partitioning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
from dagster import OutputContext
from dagster_deltalake.io_manager import TableConnection
from dagster_deltalake_polars import DeltaLakePolarsIOManager, DeltaLakePolarsTypeHandler

from position_pipeline.defs.dagster_internals import DbTypeHandler, TableSlice


class AppendByTablePartitioningTypeHandler(DeltaLakePolarsTypeHandler):
    """Writes with the table's partitioning, not the Dagster partition (append only: no partition overwrite).

    An empty batch (a backfill of hours already done, a sensor run that lost its items) writes no commit at all:
    the table's history then has one version per batch that added rows.
    """

    def handle_output(
        self, context: OutputContext, table_slice: TableSlice, obj: Any, connection: TableConnection
    ) -> None:
        mode = (context.definition_metadata or {}).get("mode") or (context.resource_config or {}).get("mode")
        if str(getattr(mode, "value", mode)) != "append":
            raise ValueError(f"{context.asset_key.to_user_string()}: this IO manager only appends, got mode {mode!r}")
        if isinstance(obj, pl.DataFrame) and obj.is_empty():
            context.add_output_metadata({"table_uri": connection.table_uri, "rows_appended": 0})
            return
        super().handle_output(context, table_slice._replace(partition_dimensions=None), obj, connection)
        if isinstance(obj, pl.DataFrame):  # on every write, so the UI's plot of it is not only the empty batches
            context.add_output_metadata({"rows_appended": obj.height})


class PositionUpdatesIOManager(DeltaLakePolarsIOManager):
    """dagster-deltalake-polars' IO manager with the append-by-table-partitioning handler for polars frames."""

    @staticmethod
    def type_handlers() -> Sequence[DbTypeHandler]:
        return [AppendByTablePartitioningTypeHandler()]
