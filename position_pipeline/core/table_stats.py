"""What a Delta table holds, read from its log where possible: version, data files, bytes and rows.

One home for the table statistics that upkeep reports and the Delta IO manager attaches to every write. delta-rs
1.5+ returns the add actions as an arro3 table, which `pl.DataFrame` reads directly (pyarrow's `from_batches` does
not: the failure dagster-deltalake 0.29's own stats hit).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl
from deltalake import DeltaTable

from position_pipeline.core import lake


@dataclass(frozen=True, slots=True)
class TableState:
    """A table's size at one version: data files, their bytes and rows (from the log, no data read)."""

    version: int
    files: int
    bytes: int
    rows: int


def table_state(table_uri: str, storage_options: lake.StorageOptions | None = None) -> TableState | None:
    """The table's newest version, file count, bytes and rows; None when there is no table."""
    dt = lake.open_existing(table_uri, storage_options)
    return None if dt is None else state_of(dt)


def state_of(dt: DeltaTable) -> TableState:
    """`dt`'s state at the version it was opened at."""
    actions = pl.DataFrame(dt.get_add_actions(flatten=True))
    if actions.is_empty():
        return TableState(version=dt.version(), files=0, bytes=0, rows=0)
    return TableState(
        version=dt.version(),
        files=actions.height,
        bytes=int(actions["size_bytes"].sum()),
        rows=int(actions["num_records"].sum()),
    )


def rows_between(dt: DeltaTable, column: str, start: datetime | None, end: datetime | None) -> int:
    """Rows of `dt` whose timestamp `column` is in [start, end) (None: unbounded), by a scan that Parquet statistics
    prune to the files whose range overlaps the window (each sync batch's file holds a narrow range of queued_at)."""
    window = pl.lit(True)
    if start is not None:
        window &= pl.col(column) >= start
    if end is not None:
        window &= pl.col(column) < end
    return int(pl.scan_delta(dt).filter(window).select(pl.len()).collect().item())
