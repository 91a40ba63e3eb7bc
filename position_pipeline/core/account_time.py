"""When IB computed an account's portfolio values: its account update time (`HH:MM`, no date, no zone) placed on
the right day in the gateway's time zone.

IB refreshes the account window's values about every 3 minutes (sooner when a position changes) and sends the time
of that refresh as `HH:MM` in the zone the gateway was logged in with. The values are never from the future and
never more than a few minutes old while the gateway is up, so the update time belongs to the latest day on which it
is not later than the read: a read at 00:01 that is told `23:59` means yesterday's 23:59. A gateway clock a little
ahead of ours (up to CLOCK_SKEW) still counts as today. Standard library only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

CLOCK_SKEW = timedelta(minutes=5)
"""How far the gateway's clock may run ahead of ours before an update time is read as the previous day's."""

_HH_MM = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")


def gateway_zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (IB_GATEWAY_TZ); ValueError naming the setting when it is not one."""
    text = name.strip() if isinstance(name, str) else ""
    try:
        if not text:
            raise ZoneInfoNotFoundError(name)
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"IB_GATEWAY_TZ {name!r} is not an IANA time zone (e.g. America/New_York, Europe/Zurich, Asia/Tokyo): "
            "set it to the zone the gateway was logged in with"
        ) from exc


def values_as_of(update_time: str, read_at: datetime, zone: ZoneInfo) -> datetime | None:
    """The UTC moment of IB's account update time `update_time` (`HH:MM`) for a read at `read_at` (aware).

    The latest local day on which that wall time is not after the read (plus CLOCK_SKEW); on the day a DST change
    repeats the hour, the later of the two moments that qualify. None when `update_time` is not `HH:MM`.
    """
    match = _HH_MM.fullmatch(update_time.strip()) if isinstance(update_time, str) else None
    if match is None:
        return None
    hour, minute = int(match[1]), int(match[2])
    if hour > 23 or minute > 59:
        return None
    local_read = read_at.astimezone(zone)
    latest = read_at + CLOCK_SKEW
    for days_back in (0, 1, 2):
        day = (local_read - timedelta(days=days_back)).date()
        for fold in (1, 0):
            moment = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone, fold=fold).astimezone(UTC)
            if _exists(moment, zone, hour, minute) and moment <= latest:
                return moment
    return None


def _exists(moment: datetime, zone: ZoneInfo, hour: int, minute: int) -> bool:
    """False for a wall time skipped by a DST change (zoneinfo maps it to another hour)."""
    local = moment.astimezone(zone)
    return (local.hour, local.minute) == (hour, minute)
