"""The design note's queue rows, checked and mapped onto this queue's schema (what `queue import` adopts).

Invariants: every row is validated (all its bad fields recorded) before any is returned; naive times are wall time
in the source zone (legacy_times.py), converted to UTC; a legacy PROCESSING item comes back PENDING (its owner does
not survive the migration); a legacy FAILED item counts one attempt and is retried under the normal policy, at
`updated_at + rules.retry_delay(0)`, as if `mark_failed` had just been called when it failed.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, tzinfo
from typing import Any

import polars as pl

from position_pipeline.core import lake
from position_pipeline.core.queue.inputs import FieldError, InputProblem, QueueInputError, validate_row
from position_pipeline.core.queue.legacy_times import WallTime, wall_time_to_utc
from position_pipeline.core.queue.rules import retry_delay
from position_pipeline.core.terms import QueueStatus

LEGACY_REQUIRED = ("request_id", "conid", "symbol", "priority", "status", "created_at", "updated_at")


def parse_time(field: str, value: Any, source: tzinfo, seen: Counter[WallTime]) -> datetime:
    """ISO-8601 text or a datetime, in UTC; naive means wall time in `source`. Counts how each wall time mapped."""
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
    moment, kind = wall_time_to_utc(parsed, source)
    seen[kind] += 1
    return moment


def parse_status(value: Any) -> QueueStatus:
    text = value.strip().upper() if isinstance(value, str) else None
    if text not in set(QueueStatus):
        raise FieldError("status", f"must be one of {', '.join(QueueStatus)}, got {value!r}")
    return QueueStatus(text)


def legacy_rows(source: pl.DataFrame, zone: tzinfo) -> tuple[pl.DataFrame, Counter[WallTime]]:
    """The legacy table's rows in QUEUE_SCHEMA and how its naive times mapped, or QueueInputError naming every bad
    row and field."""
    missing = [c for c in LEGACY_REQUIRED if c not in source.columns]
    if missing:
        raise QueueInputError([InputProblem(None, c, "column is missing from the legacy table") for c in missing])
    problems: list[InputProblem] = []
    seen: dict[str, int] = {}
    times: Counter[WallTime] = Counter()
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
            ("status", parse_status),
            ("created_at", lambda v: parse_time("created_at", v, zone, times)),
        ):
            try:
                values[field] = parse(row[field])
            except FieldError as exc:
                problems.append(InputProblem(index, exc.field, exc.problem))
        updated_raw = row["updated_at"]
        try:
            # An absent updated_at costs nothing but precision: fall back to created_at rather than drop the item.
            values["updated_at"] = (
                values.get("created_at") if updated_raw is None else parse_time("updated_at", updated_raw, zone, times)
            )
        except FieldError as exc:
            problems.append(InputProblem(index, exc.field, exc.problem))
        error_message = row.get("error_message")
        if error_message is not None and not isinstance(error_message, str):
            problems.append(InputProblem(index, "error_message", f"must be a string, got {error_message!r}"))
        if problems or parsed is None:
            continue
        status = values["status"]
        failed = status is QueueStatus.FAILED
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
                "attempts": 1 if failed else 0,
                "claims": 0,
                "retry_after": values["updated_at"] + retry_delay(0) if failed else None,
                "claimed_by": None,
                "claimed_at": None,
            }
        )
    if problems:
        raise QueueInputError(problems)
    return pl.DataFrame(out, schema=lake.QUEUE_SCHEMA), times
