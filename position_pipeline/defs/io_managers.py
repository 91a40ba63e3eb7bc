"""The Delta Lake IO manager for position_updates: appends with the table's own partitioning, and says what it wrote.

Dagster partitions the sync assets by the hour items were queued (`partition_expr: queued_at`, which also makes the
IO manager's "Query" metadata name the run's rows correctly), while the table itself is partitioned by the UTC day of
the snapshot, the layout readers prune on. dagster-deltalake's handler would pass the Dagster partition column to
`write_deltalake(partition_by=...)`; this one appends without it, so delta-rs uses the table's own partitioning.

Its output metadata replaces dagster-deltalake 0.29's stats, which fail on deltalake >= 1.5 ("error while computing
table stats"): the keys the UI shows specially (`dagster/row_count`, `dagster/partition_row_count` for a run of one
partition, `dagster/size_bytes`, `dagster/column_schema`), read from the table's log after the write.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from dagster_deltalake.io_manager import TableConnection
from dagster_deltalake_polars import DeltaLakePolarsIOManager, DeltaLakePolarsTypeHandler
from deltalake import write_deltalake
from pydantic import PrivateAttr

from position_pipeline.core import lake
from position_pipeline.core.table_stats import rows_between, state_of
from position_pipeline.defs.dagster_internals import DbTypeHandler, TableSlice
from position_pipeline.defs.metadata import column_schema
from position_pipeline.defs.partitions import queued_window


class AppendByTablePartitioningTypeHandler(DeltaLakePolarsTypeHandler):
    """Appends polars frames with the table's partitioning, not the Dagster partition (no partition overwrite).

    An empty batch (a backfill of hours already done, a sensor run that lost its items) writes no commit at all:
    the table's history then has one version per batch that added rows. Loading inputs is dagster-deltalake's.
    """

    def handle_output(
        self, context: dg.OutputContext, table_slice: TableSlice, obj: Any, connection: TableConnection
    ) -> None:
        mode = (context.definition_metadata or {}).get("mode") or (context.resource_config or {}).get("mode")
        if str(getattr(mode, "value", mode)) != "append":
            raise ValueError(f"{context.asset_key.to_user_string()}: this IO manager only appends, got mode {mode!r}")
        frame = obj.collect() if isinstance(obj, pl.LazyFrame) else obj
        if not isinstance(frame, pl.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()}: expected a polars frame, got {type(obj).__name__}")
        if not frame.is_empty():
            write_deltalake(
                connection.table_uri, frame.to_arrow(), mode="append", storage_options=connection.storage_options
            )
        context.add_output_metadata(
            {
                "table_uri": connection.table_uri,
                "rows_appended": frame.height,
                **_table_metadata(context, table_slice, connection),
            }
        )


def _table_metadata(context: dg.OutputContext, table_slice: TableSlice, connection: TableConnection) -> dict[str, Any]:
    """The table's rows, bytes and columns after the write; the partition's rows when the run wrote one partition."""
    dt = lake.open_existing(connection.table_uri, connection.storage_options)
    if dt is None:  # an empty batch on a lake whose table does not exist yet: nothing to describe
        return {}
    state = state_of(dt)
    schema = pl.scan_delta(dt).collect_schema()
    nullable = {field.name for field in dt.schema().fields if field.nullable}
    metadata: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(state.rows),
        "dagster/size_bytes": dg.MetadataValue.int(state.bytes),
        "dagster/column_schema": dg.MetadataValue.table_schema(column_schema(schema, nullable)),
    }
    dimensions = table_slice.partition_dimensions or []
    if len(dimensions) == 1 and context.has_asset_partitions and len(context.asset_partition_keys) == 1:
        window = queued_window(context.asset_partitions_time_window)
        rows = rows_between(dt, dimensions[0].partition_expr, window.start, window.end)
        metadata["dagster/partition_row_count"] = dg.MetadataValue.int(rows)
    return metadata


class RunBatchIOManager(dg.ConfigurableIOManager):
    """Each step's polars frame as Parquet in its run's folder: `<base_dir>/<run_id>/<step>/<output>.parquet`.

    Per run, not per asset or partition (Dagster's filesystem IO manager keeps one file per asset partition, which
    every 5-second run would overwrite, and refuses a backfill run's range of partitions): a re-execution from
    failure reads its parent run's files. `base_dir` None: the instance's storage folder, whose `<run_id>` folders the
    run history purge deletes with their runs.
    """

    base_dir: str | None = None
    _root: Path = PrivateAttr()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.base_dir is not None:
            self._root = Path(self.base_dir)
        elif context.instance is not None:
            self._root = Path(context.instance.storage_directory())
        else:
            raise dg.DagsterInvariantViolationError("RunBatchIOManager needs a base_dir or a Dagster instance")

    def _path(self, run_id: str, step_key: str, name: str) -> Path:
        return self._root / run_id / step_key / f"{name}.parquet"

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        path = self._path(context.run_id, context.step_key, context.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        obj.write_parquet(path)

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        upstream = context.upstream_output
        if upstream is None:
            raise dg.DagsterInvariantViolationError(f"{context.name}: no upstream output to load")
        return pl.read_parquet(self._path(upstream.run_id, upstream.step_key, upstream.name))


class PositionUpdatesIOManager(DeltaLakePolarsIOManager):
    """dagster-deltalake-polars' IO manager with the append-by-table-partitioning handler for polars frames."""

    @staticmethod
    def type_handlers() -> Sequence[DbTypeHandler]:
        return [AppendByTablePartitioningTypeHandler()]
