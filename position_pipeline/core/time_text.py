"""Times and durations as text, one spelling each: UTC ISO-8601 with a Z, and compact ages such as 5m07s.

The read side's JSON (`core.status`), the CLI's text and the health checks' descriptions all write times this way.
Standard library only, so the CLI's parser may import it without slowing `--help`.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc(value: datetime | None, name: str | None = None) -> datetime:
    """`value` in UTC (the current time for None); a naive datetime is refused rather than guessed, and the error
    names the argument `name` when given."""
    if value is None:
        return datetime.now(UTC)
    if value.tzinfo is None or value.utcoffset() is None:
        what = f"{name} must be timezone-aware" if name else "expected a timezone-aware datetime"
        raise ValueError(f"{what}, got {value!r}")
    return value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    """A timestamp as UTC ISO-8601 with a Z (microseconds when it has them); None stays None."""
    if value is None:
        return None
    return utc(value).isoformat().replace("+00:00", "Z")


def iso_seconds(value: datetime) -> str:
    """A timestamp as UTC ISO-8601 to the second, for text output."""
    return utc(value).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def iso_microseconds(value: datetime) -> str:
    """A timestamp as UTC ISO-8601 always with six decimals and a Z (2026-11-24T15:00:00.000000Z), for CSV and JSON
    rows whose every value has the same width; a naive datetime is read as local time."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def age_text(seconds: float) -> str:
    """A compact age: 42s, 5m07s, 3h02m, 12d04h."""
    whole = max(int(seconds), 0)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
