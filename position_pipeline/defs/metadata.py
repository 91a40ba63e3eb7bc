"""Materialization, check and definition metadata shown in the Dagster UI."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import dagster as dg
import polars as pl

from position_pipeline.core import lake

PREVIEW_ROWS = 10


def markdown_table(frame: pl.DataFrame, limit: int = PREVIEW_ROWS) -> str:
    """The first `limit` rows as a markdown table (the UI renders it), with a count of the rest."""
    if frame.is_empty():
        return "(none)"
    head = frame.head(limit)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in head.iter_rows()]
    if frame.height > limit:
        lines.append(f"\n{frame.height - limit} more rows")
    return "\n".join(lines)


def column_schema(schema: pl.Schema, nullable: Collection[str]) -> dg.TableSchema:
    """A lake table's columns as the UI's schema tab shows them: polars type, NOT NULL unless in `nullable`."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, str(dtype), constraints=dg.TableColumnConstraints(nullable=name in nullable))
            for name, dtype in schema.items()
        ]
    )


def table_definition_metadata(table: str, schema: pl.Schema, nullable: Collection[str]) -> dict[str, Any]:
    """`dagster/table_name` and `dagster/column_schema` for an asset's definition: shown before its first run.

    The name is `positions.<table>` (the lake's schema folder and the table), the same for every lake root."""
    return {
        "dagster/table_name": f"{lake.SCHEMA_NAME}.{table}",
        "dagster/column_schema": dg.MetadataValue.table_schema(column_schema(schema, nullable)),
    }
