"""The sync assets are partitioned by the UTC hour in which items were queued.

Why the queued hour: after an IB outage the operator knows when it happened, and the items that waited are exactly
those queued in that window. A partition (or a range of them, in one run) claims only items whose `created_at` falls
in its window, so a backfill over the outage reprocesses those and nothing else, and a partition is never "done"
for items that arrive later: the sensor always runs the partition of the next claimable item, whatever its hour.

IB has no historical positions: whichever partition a run belongs to, it records positions as of the run. Rows keep
both times, `queued_at` (the partition) and `snapshot_at` (what IB reported, and when).

Two edges keep every item reachable: the first partition also takes anything queued before it (imported history),
and a window that reaches the present also takes anything stamped later (a producer's clock running ahead).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

FIRST_HOUR = datetime(2026, 1, 1, tzinfo=UTC)
HOUR_KEY_FORMAT = "%Y-%m-%d-%H:%M"

queued_hour_partitions = dg.HourlyPartitionsDefinition(
    start_date=FIRST_HOUR.strftime(HOUR_KEY_FORMAT), end_offset=1, timezone="UTC"
)
"""One partition per UTC hour from FIRST_HOUR, up to and including the current hour (end_offset=1)."""


@dataclass(frozen=True)
class QueuedWindow:
    """Which `created_at` values a run claims: from `start` (inclusive) to `end` (exclusive); None is unbounded."""

    start: datetime | None
    end: datetime | None

    def describe(self) -> str:
        start = self.start.isoformat() if self.start else "the beginning"
        end = self.end.isoformat() if self.end else "now"
        return f"queued from {start} to {end}"


def queued_window(window: dg.TimeWindow, now: datetime | None = None) -> QueuedWindow:
    """The claim window of a partition (or range of partitions), with the two open edges described above."""
    now = now or datetime.now(UTC)
    start = window.start.astimezone(UTC)
    end = window.end.astimezone(UTC)
    return QueuedWindow(start=None if start <= FIRST_HOUR else start, end=None if end > now else end)


def partition_key_for(queued_at: datetime, now: datetime | None = None) -> str:
    """The hour partition that claims an item queued at `queued_at`, clamped to the partitions that exist now."""
    if queued_at.tzinfo is None:
        raise ValueError(f"queued_at must be timezone-aware, got {queued_at!r}")
    now = now or datetime.now(UTC)
    hour = queued_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    current = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return max(FIRST_HOUR, min(hour, current)).strftime(HOUR_KEY_FORMAT)


def hour_key(moment: datetime) -> str:
    """The partition key of the hour holding `moment` (UTC), without clamping."""
    if moment.tzinfo is None:
        raise ValueError(f"moment must be timezone-aware, got {moment!r}")
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0).strftime(HOUR_KEY_FORMAT)


def first_key() -> str:
    return FIRST_HOUR.strftime(HOUR_KEY_FORMAT)


def partition_range_tags(start: str, end: str) -> dict[str, str]:
    """Run tags that make one run cover partitions `start`..`end`: what a single-run backfill launches."""
    return {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}
