"""Naive wall times of the design note, read in their zone: one instant each, gaps and folds named."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from position_pipeline.core.queue.legacy_times import WallTime, local_zone, wall_time_to_utc, zone

NEW_YORK = zone("America/New_York")


@pytest.mark.parametrize(
    ("wall", "utc", "kind"),
    [
        pytest.param(datetime(2025, 1, 15, 9, 30), datetime(2025, 1, 15, 14, 30), WallTime.UNIQUE, id="winter"),
        pytest.param(datetime(2025, 7, 1, 9, 30), datetime(2025, 7, 1, 13, 30), WallTime.UNIQUE, id="summer"),
        pytest.param(datetime(2025, 3, 9, 2, 30), datetime(2025, 3, 9, 7, 30), WallTime.NONEXISTENT, id="gap"),
        pytest.param(datetime(2025, 3, 9, 3, 0), datetime(2025, 3, 9, 7, 0), WallTime.UNIQUE, id="after-gap"),
        pytest.param(datetime(2025, 11, 2, 1, 30), datetime(2025, 11, 2, 5, 30), WallTime.AMBIGUOUS, id="fold"),
        pytest.param(datetime(2025, 11, 2, 2, 0), datetime(2025, 11, 2, 7, 0), WallTime.UNIQUE, id="after-fold"),
    ],
)
def test_a_wall_time_maps_to_one_instant(wall: datetime, utc: datetime, kind: WallTime) -> None:
    assert wall_time_to_utc(wall, NEW_YORK) == (utc.replace(tzinfo=UTC), kind)


def test_aware_times_keep_their_offset() -> None:
    aware = datetime(2025, 3, 1, 9, 32, tzinfo=timezone(timedelta(hours=2)))
    assert wall_time_to_utc(aware, NEW_YORK) == (datetime(2025, 3, 1, 7, 32, tzinfo=UTC), WallTime.UNIQUE)


def test_the_local_zone_is_tz_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", ":Asia/Tokyo")
    assert local_zone().key == "Asia/Tokyo"
    monkeypatch.setenv("TZ", "Nowhere/Atlantis")
    with pytest.raises(ValueError, match="unknown time zone"):
        local_zone()
