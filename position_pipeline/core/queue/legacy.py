"""The migration from the original design note's queue table: plan (read only), then adopt the new rows at once.

`plan_legacy_import` reads and validates the whole source, converts its naive times from the source zone
(legacy_rows.py, legacy_times.py), finds which items are already here and what the note's racing workers lost
(legacy_history.py), and writes nothing: it is the dry run. `adopt_legacy` commits a plan's new rows in one MERGE
that inserts only absent request_ids, so importing twice, or two imports at once, adds each item once.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import tzinfo

import polars as pl
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.queue import rules
from position_pipeline.core.queue.commits import queue_commit_properties
from position_pipeline.core.queue.inputs import Progress, silent
from position_pipeline.core.queue.legacy_history import HistoryCheck, check_history
from position_pipeline.core.queue.legacy_rows import legacy_rows
from position_pipeline.core.queue.legacy_times import WallTime, local_zone, zone, zone_name
from position_pipeline.core.queue.table import QueueTable, to_arrow
from position_pipeline.core.terms import QueueStatus

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LegacyPlan:
    """What an import of `source_uri` would adopt, as read at planning time; nothing was written to make it."""

    source_uri: str
    zone: str
    """The zone the source's naive times were read in."""
    rows: pl.DataFrame
    """Every source row, validated, in QUEUE_SCHEMA (times in UTC)."""
    new: pl.DataFrame
    """The rows whose request_id the queue did not hold yet."""
    wall_times: Counter[WallTime]
    history: HistoryCheck

    @property
    def ambiguous_times(self) -> int:
        """Naive times that occurred twice in the zone (a clock fell back): read as the earlier instant."""
        return self.wall_times[WallTime.AMBIGUOUS]

    @property
    def nonexistent_times(self) -> int:
        """Naive times that never occurred in the zone (a clock sprang forward): read with the earlier offset."""
        return self.wall_times[WallTime.NONEXISTENT]

    @property
    def already_present(self) -> int:
        return self.rows.height - self.new.height

    def new_by_status(self) -> dict[str, int]:
        """New rows per (adopted) status, every status present."""
        found = Counter(self.new["status"].to_list())
        return {str(status): int(found.get(status.value, 0)) for status in QueueStatus}


class LegacyImport(QueueTable):
    """The queue's import of the original design's table."""

    def plan_legacy_import(
        self,
        source_uri: str,
        storage_options: dict[str, str] | None = None,
        *,
        source_tz: str | tzinfo | None = None,
        progress: Progress | None = None,
    ) -> LegacyPlan:
        """Read, validate and map every row of the original design's table at `source_uri`; reads only.

        `source_tz`: the zone its naive times were written in (an IANA name or a tzinfo); None means this machine's
        zone, which is what the design note's `datetime.now()` wrote. One bad row raises QueueInputError. A queue
        table that does not exist yet is not created.
        """
        report = progress or silent
        source_zone = (
            local_zone() if source_tz is None else zone(source_tz) if isinstance(source_tz, str) else source_tz
        )
        options = lake.resolve_storage_options(source_uri, storage_options)
        source = pl.scan_delta(DeltaTable(source_uri, storage_options=options)).collect()
        report(f"read {source.height:,} rows from {source_uri}")
        rows, wall_times = legacy_rows(source, source_zone)
        report(f"{rows.height:,} rows valid; naive times read as {zone_name(source_zone)}")
        history = check_history(source_uri, rows["request_id"].to_list())
        return LegacyPlan(source_uri, zone_name(source_zone), rows, self._not_present(rows), wall_times, history)

    def adopt_legacy(self, plan: LegacyPlan, progress: Progress | None = None) -> int:
        """Add a plan's rows that are still absent, in one commit (retried on conflict); returns how many were added."""
        report = progress or silent
        rows = plan.rows
        report(f"adding the {rows.height:,} rows not already here in one commit")

        def attempt() -> int:
            dt = self._open()
            new = self._not_present(rows, dt)
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
            plan.source_uri,
            rows.height - added,
        )
        return added

    def import_legacy(
        self,
        source_uri: str,
        storage_options: dict[str, str] | None = None,
        progress: Progress | None = None,
        *,
        source_tz: str | tzinfo | None = None,
    ) -> int:
        """Plan and adopt in one call (see `plan_legacy_import`, `adopt_legacy`); returns how many items were added."""
        plan = self.plan_legacy_import(source_uri, storage_options, source_tz=source_tz, progress=progress)
        return self.adopt_legacy(plan, progress)

    def _not_present(self, rows: pl.DataFrame, dt: DeltaTable | None = None) -> pl.DataFrame:
        """The rows whose request_id the queue does not hold; reads the latest version (none when no table yet)."""
        if dt is None:
            if not DeltaTable.is_deltatable(self.table_uri, storage_options=self._storage_options):
                return rows
            dt = self._open()
        present = (
            self._scan(dt)
            .select("request_id")
            .filter(pl.col("request_id").is_in(rows["request_id"].implode()))
            .collect()
        )
        return rows.filter(~pl.col("request_id").is_in(present["request_id"].implode()))
