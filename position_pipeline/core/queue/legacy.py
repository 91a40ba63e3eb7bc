"""The migration from the original design note's queue table: validate every row, then add the new ones at once.

Naive timestamps are UTC; legacy PROCESSING items have no owner that survives, so they come back PENDING; a legacy
FAILED item counts one attempt and has no retry_after (not retried by itself). Importing twice adds nothing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import polars as pl
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.queue import rules
from position_pipeline.core.queue.commits import queue_commit_properties
from position_pipeline.core.queue.inputs import (
    FieldError,
    InputProblem,
    Progress,
    QueueInputError,
    silent,
    validate_row,
)
from position_pipeline.core.queue.table import QueueTable, to_arrow
from position_pipeline.core.terms import QueueStatus

logger = logging.getLogger(__name__)


class LegacyImport(QueueTable):
    """The queue's import of the original design's table."""

    def import_legacy(
        self, source_uri: str, storage_options: dict[str, str] | None = None, progress: Progress | None = None
    ) -> int:
        """Adopt the original design's queue table at `source_uri`; returns how many items were added.

        Naive timestamps are taken as UTC. Items whose request_id is already here are skipped, so a second import
        adds nothing. Legacy PROCESSING items had no owner that survives the migration, so they come back PENDING.
        Every row is validated first; one bad row raises QueueInputError and nothing is written. `progress` hears
        each phase (read, validated, merged).
        """
        report = progress or silent
        options = lake.resolve_storage_options(source_uri, storage_options)
        source = pl.scan_delta(DeltaTable(source_uri, storage_options=options)).collect()
        report(f"read {source.height:,} rows from {source_uri}")
        rows = _legacy_rows(source)
        report(f"{rows.height:,} rows valid; adding those not already here in one commit")

        def attempt() -> int:
            dt = self._open()
            present = (
                self._scan(dt)
                .select("request_id")
                .filter(pl.col("request_id").is_in(rows["request_id"].implode()))
                .collect()
            )
            new = rows.filter(~pl.col("request_id").is_in(present["request_id"].implode()))
            if new.is_empty():
                return 0
            # Insert-if-absent in one MERGE: a concurrent import of the same rows conflicts instead of duplicating.
            metrics = (
                dt.merge(
                    to_arrow(new),
                    predicate=rules.merge_predicate(rules.EVERY_ROW, "request_id"),
                    source_alias=rules.SOURCE,
                    target_alias=rules.TARGET,
                    commit_properties=queue_commit_properties("import_legacy", None, new.height),
                )
                .when_not_matched_insert_all()
                .execute()
            )
            return int(metrics["num_target_rows_inserted"])

        added = self._retrying("import_legacy", attempt)
        report(f"committed {added:,} new items ({rows.height - added:,} were already here)")
        logger.info(
            "imported %d of %d legacy items from %s (%d already present)",
            added,
            rows.height,
            source_uri,
            rows.height - added,
        )
        return added


_LEGACY_REQUIRED = ("request_id", "conid", "symbol", "priority", "status", "created_at", "updated_at")


def _parse_legacy_time(field: str, value: Any) -> datetime:
    """ISO-8601 text or a datetime; naive means UTC (the design note wrote naive times)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise FieldError(field, "is missing")
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise FieldError(field, f"is not an ISO-8601 timestamp: {value!r}") from None
    else:
        raise FieldError(field, f"must be an ISO-8601 string, got {value!r}")
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _parse_legacy_status(value: Any) -> QueueStatus:
    text = value.strip().upper() if isinstance(value, str) else None
    if text not in set(QueueStatus):
        raise FieldError("status", f"must be one of {', '.join(QueueStatus)}, got {value!r}")
    return QueueStatus(text)


def _legacy_rows(source: pl.DataFrame) -> pl.DataFrame:
    """The legacy table's rows in QUEUE_SCHEMA, or QueueInputError naming every bad row and field."""
    missing = [c for c in _LEGACY_REQUIRED if c not in source.columns]
    if missing:
        raise QueueInputError([InputProblem(None, c, "column is missing from the legacy table") for c in missing])
    problems: list[InputProblem] = []
    seen: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    for index, row in enumerate(source.iter_rows(named=True)):
        request_id = row["request_id"]
        if not isinstance(request_id, str) or not request_id.strip():
            problems.append(InputProblem(index, "request_id", f"must be a non-empty string, got {request_id!r}"))
        elif request_id in seen:
            problems.append(InputProblem(index, "request_id", f"duplicates row {seen[request_id]}"))
        else:
            seen[request_id] = index
        # The original design had no account: imported items may be read from any configured account.
        parsed = validate_row(index, {**row, "account": None}, None, problems)
        values: dict[str, Any] = {}
        for field, parse in (
            ("status", _parse_legacy_status),
            ("created_at", lambda v: _parse_legacy_time("created_at", v)),
        ):
            try:
                values[field] = parse(row[field])
            except FieldError as exc:
                problems.append(InputProblem(index, exc.field, exc.problem))
        updated_raw = row["updated_at"]
        try:
            # An absent updated_at costs nothing but precision: fall back to created_at rather than drop the item.
            values["updated_at"] = (
                values.get("created_at") if updated_raw is None else _parse_legacy_time("updated_at", updated_raw)
            )
        except FieldError as exc:
            problems.append(InputProblem(index, exc.field, exc.problem))
        error_message = row.get("error_message")
        if error_message is not None and not isinstance(error_message, str):
            problems.append(InputProblem(index, "error_message", f"must be a string, got {error_message!r}"))
        if problems or parsed is None:
            continue
        status = values["status"]
        out.append(
            {
                "request_id": request_id,
                "conid": parsed.conid,
                "symbol": parsed.symbol,
                "account": parsed.account,
                "priority": parsed.priority,
                "status": QueueStatus.PENDING if status is QueueStatus.PROCESSING else status,
                "created_at": values["created_at"],
                "updated_at": values["updated_at"],
                "error_message": error_message,
                "attempts": 1 if status is QueueStatus.FAILED else 0,
                "claims": 0,
                "retry_after": None,
                "claimed_by": None,
                "claimed_at": None,
            }
        )
    if problems:
        raise QueueInputError(problems)
    return pl.DataFrame(out, schema=lake.QUEUE_SCHEMA)
