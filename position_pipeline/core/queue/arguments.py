"""Checks on the queue's call arguments other than items: limits, run ids, request ids, attempts and times.

Each returns the value it checked (normalised: times in UTC, request ids distinct) or raises before anything is read
or written. Times are never guessed: a naive datetime is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from position_pipeline.core.queue.inputs import InputProblem, QueueInputError
from position_pipeline.core.time_text import utc

_INT32_MAX = 2**31 - 1


def utc_or_now(now: datetime | None) -> datetime:
    """`now` as an aware UTC datetime (the current time for None); naive input is refused, not guessed."""
    return utc(now, "now")


def aware(name: str, moment: datetime) -> datetime:
    """Argument `name` as an aware UTC datetime; naive input is refused."""
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {moment!r}")
    return moment.astimezone(UTC)


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    return limit


def check_run_id(claimed_by: str) -> str:
    if not isinstance(claimed_by, str) or not claimed_by.strip():
        raise ValueError(f"claimed_by must be a non-empty run id, got {claimed_by!r}")
    return claimed_by


def check_run_ids(run_ids: str | Iterable[str]) -> list[str]:
    """Distinct run ids in input order; a single string is one id (never its characters)."""
    return list(dict.fromkeys(check_run_id(r) for r in ([run_ids] if isinstance(run_ids, str) else run_ids)))


def check_request_ids(request_ids: str | Iterable[str]) -> list[str]:
    """Distinct request ids in input order; a single string is one id (never its characters)."""
    values = [request_ids] if isinstance(request_ids, str) else list(request_ids)
    problems = [
        InputProblem(i, "request_id", f"must be a non-empty string, got {v!r}")
        for i, v in enumerate(values)
        if not isinstance(v, str) or not v.strip()
    ]
    if problems:
        raise QueueInputError(problems)
    return list(dict.fromkeys(values))


def check_max_attempts(max_attempts: int) -> int:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 1 <= max_attempts <= _INT32_MAX:
        raise ValueError(f"max_attempts must be a positive int32, got {max_attempts!r}")
    return max_attempts
