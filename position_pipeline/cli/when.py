"""The WHEN argument of `requeue --since` and `backfill --from/--to`: an age back from now or an ISO-8601 timestamp."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta

_AGE = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")  # ASCII digits only
_EXAMPLES = "e.g. 2h, 30m, 1d or 2026-11-24T15:00:00Z"


def when_argument(text: str) -> datetime:
    """An age back from now (30m, 2h, 1d12h, 5m07s: as status prints ages) or an ISO-8601 timestamp, naive read as
    UTC; always an aware UTC datetime. argparse names the flag in the message of a refused value."""
    value = text.strip()
    age = _AGE.fullmatch(value.lower())
    if value and age:
        try:
            days, hours, minutes, seconds = (int(part or 0) for part in age.groups())
            return datetime.now(UTC) - timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        except (OverflowError, ValueError):
            raise argparse.ArgumentTypeError(f"age {text!r} reaches back before year 1") from None
    if value[-1:] == "z":
        value = value[:-1] + "Z"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an age or an ISO-8601 timestamp: {text!r} ({_EXAMPLES})") from None
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: in UTC it falls outside years 1 to 9999") from None
