"""The design note's times: naive wall-clock text from `datetime.now()`, on the machine that ran its workers.

A naive time is read in the source zone (by default this machine's, which is what `datetime.now()` wrote), then
converted to UTC. Invariant: every wall time maps to one instant, by PEP 495's `fold=0`: a time that occurred twice
(the hour a clock falls back) is the earlier instant; a time that never occurred (the hour a clock springs forward)
takes the offset from before the change (02:30 in a 02:00 -> 03:00 gap is 03:30 after it). Each is counted, so the
import reports how many times it had to choose.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_ZONEINFO_DIRS = ("/usr/share/zoneinfo/", "/usr/lib/zoneinfo/", "/usr/share/lib/zoneinfo/")


class WallTime(StrEnum):
    """How a naive time maps to an instant in its zone."""

    UNIQUE = "unique"
    AMBIGUOUS = "ambiguous"
    """Occurred twice (a clock fell back): the earlier instant is taken."""
    NONEXISTENT = "nonexistent"
    """Never occurred (a clock sprang forward): read with the offset from before the change."""


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (e.g. America/New_York); ValueError naming it when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name such as America/New_York)") from None


def local_zone() -> ZoneInfo:
    """This machine's zone, as `datetime.now()` uses it: $TZ when set, else the zone /etc/localtime links to.

    ValueError when neither names an IANA zone: the caller must then say which zone the times were written in.
    """
    named = os.environ.get("TZ", "").lstrip(":")
    if named:
        return zone(named)
    try:
        target = Path("/etc/localtime").resolve(strict=True).as_posix()
    except OSError:
        target = ""
    for folder in _ZONEINFO_DIRS:
        if target.startswith(folder):
            return zone(target[len(folder) :])
    timezone_file = Path("/etc/timezone")
    if timezone_file.is_file():
        return zone(timezone_file.read_text(encoding="utf-8").strip())
    raise ValueError("cannot tell this machine's time zone (no $TZ, no /etc/localtime link): name the source zone")


def zone_name(source: tzinfo) -> str:
    """The zone's IANA key when it has one, else its str()."""
    return getattr(source, "key", None) or str(source)


def wall_time_to_utc(value: datetime, source: tzinfo) -> tuple[datetime, WallTime]:
    """`value` as an aware UTC datetime: naive means wall time in `source` (fold=0); aware ones are converted."""
    if value.tzinfo is not None:
        return value.astimezone(UTC), WallTime.UNIQUE
    first = value.replace(tzinfo=source, fold=0)
    second = value.replace(tzinfo=source, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first.astimezone(UTC), WallTime.UNIQUE
    round_trip = first.astimezone(UTC).astimezone(source).replace(tzinfo=None)
    kind = WallTime.AMBIGUOUS if round_trip == value else WallTime.NONEXISTENT
    return first.astimezone(UTC), kind
