"""Materialization and check metadata shown in the Dagster UI."""

from __future__ import annotations

import polars as pl

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
