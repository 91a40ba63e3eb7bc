"""`account_time`: IB's bare `HH:MM` account update time placed on the right day in the gateway's zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from position_pipeline.core.account_time import CLOCK_SKEW, gateway_zone, values_as_of

NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def test_a_time_earlier_today_in_the_gateways_zone() -> None:
    # 15:00:30 UTC is 10:00:30 in New York (EST): 09:58 there is 14:58 UTC the same day
    assert values_as_of("09:58", utc(2030, 1, 2, 15, 0, 30), NEW_YORK) == utc(2030, 1, 2, 14, 58)


def test_a_read_just_after_midnight_puts_2359_on_yesterday() -> None:
    # 05:01 UTC on Jan 3 is 00:01 on Jan 3 in New York: 23:59 is Jan 2, 23:59 EST = Jan 3 04:59 UTC
    assert values_as_of("23:59", utc(2030, 1, 3, 5, 1), NEW_YORK) == utc(2030, 1, 3, 4, 59)


def test_the_day_is_the_gateway_zones_not_utcs() -> None:
    # 16:00 UTC on Jan 2 is 01:00 on Jan 3 in Tokyo: 00:57 there is Jan 2 15:57 UTC
    assert values_as_of("00:57", utc(2030, 1, 2, 16, 0), TOKYO) == utc(2030, 1, 2, 15, 57)
    # and 23:58 in Tokyo is the previous Tokyo day
    assert values_as_of("23:58", utc(2030, 1, 2, 15, 1), TOKYO) == utc(2030, 1, 2, 14, 58)


def test_a_gateway_clock_slightly_ahead_still_counts_as_today() -> None:
    read = utc(2030, 1, 2, 15, 0, 30)  # 10:00:30 New York
    assert CLOCK_SKEW.total_seconds() == 300
    assert values_as_of("10:05", read, NEW_YORK) == utc(2030, 1, 2, 15, 5)  # within CLOCK_SKEW
    assert values_as_of("10:06", read, NEW_YORK) == utc(2030, 1, 1, 15, 6)  # past the skew: yesterday's


def test_the_repeated_hour_at_the_end_of_dst_takes_the_later_moment_that_is_not_in_the_future() -> None:
    # 2030-11-03: New York goes from EDT to EST at 02:00, so 01:30 happens at 05:30 and at 06:30 UTC
    assert values_as_of("01:30", utc(2030, 11, 3, 6, 40), NEW_YORK) == utc(2030, 11, 3, 6, 30)
    assert values_as_of("01:30", utc(2030, 11, 3, 5, 40), NEW_YORK) == utc(2030, 11, 3, 5, 30)


def test_a_time_skipped_by_the_start_of_dst_is_never_today() -> None:
    # 2030-03-10: New York skips 02:00-03:00; a read at 03:10 EDT (07:10 UTC) told 02:30 means the day before
    assert values_as_of("02:30", utc(2030, 3, 10, 7, 10), NEW_YORK) == utc(2030, 3, 9, 7, 30)


def test_seconds_are_accepted_and_kept() -> None:
    assert values_as_of("09:58:12", utc(2030, 1, 2, 15, 0), NEW_YORK) == utc(2030, 1, 2, 14, 58)


@pytest.mark.parametrize("text", ["", "9", "24:00", "12:60", "ab:cd", "12-30", "12:30 PM", "1230"])
def test_what_is_not_an_update_time_has_no_moment(text: str) -> None:
    assert values_as_of(text, utc(2030, 1, 2, 15, 0), NEW_YORK) is None


def test_gateway_zone_accepts_iana_names() -> None:
    assert gateway_zone("Europe/Zurich") == ZoneInfo("Europe/Zurich")
    assert gateway_zone(" Asia/Tokyo ") == TOKYO


@pytest.mark.parametrize("name", ["", "EST5", "Mars/Olympus", "../etc/passwd", "New York"])
def test_gateway_zone_refuses_what_is_not_a_zone_and_names_the_setting(name: str) -> None:
    with pytest.raises(ValueError, match=r"IB_GATEWAY_TZ .* is not an IANA time zone"):
        gateway_zone(name)
