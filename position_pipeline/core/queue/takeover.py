"""Taking over a finished run's batch: what a re-execution of a failed sync run ("re-execute from failure") claims.

The re-execution loads its parent's batch instead of claiming a new one. It may process only the items it now holds:
those the parent still holds, or that are claimable again (the parent gave them back). Items another run took
meanwhile, or that finished, are left as they are, so no item is processed by two runs. A take-over counts as a
claim (`claims` + 1): the write plan then looks for rows the parent may already have committed, and skips them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import polars as pl
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.queue import rules
from position_pipeline.core.queue.arguments import check_max_attempts, check_request_ids, check_run_id, utc_or_now
from position_pipeline.core.queue.claims import CLAIMED
from position_pipeline.core.queue.table import QueueTable
from position_pipeline.core.terms import MAX_ATTEMPTS


class QueueTakeover(QueueTable):
    """The take-over of a finished run's claims by its re-execution."""

    def take_over(
        self,
        request_ids: Iterable[str],
        *,
        from_run: str,
        claimed_by: str,
        now: datetime | None = None,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> pl.DataFrame:
        """Claim for run `claimed_by` those of `request_ids` that run `from_run` still holds or that are claimable at
        `now`, in one MERGE (retried on conflict, each try re-reading which items it still needs); return every row of
        `request_ids` that `claimed_by` then holds.

        Calling it again with the same ids changes nothing and returns the same rows (the run already holds them).
        """
        run, parent = check_run_id(claimed_by), check_run_id(from_run)
        ids = check_request_ids(request_ids)
        at = utc_or_now(now)
        eligible = rules.Either((rules.held_by(parent), rules.claimable(at, check_max_attempts(max_attempts))))
        mine = rules.held_by(run)

        def not_yet_held(dt: DeltaTable, source: pl.DataFrame) -> pl.DataFrame:
            held = self._scan(dt).filter(pl.col("request_id").is_in(ids) & mine.expr()).select("request_id").collect()
            return source.filter(~pl.col("request_id").is_in(held["request_id"].implode()))

        source = pl.DataFrame({"request_id": ids}, schema={"request_id": pl.String}).with_columns(
            claimed_by=pl.lit(run, dtype=pl.String), claimed_at=pl.lit(at, dtype=lake.UTC_TIMESTAMP)
        )
        predicate = rules.merge_predicate(eligible, "request_id")
        self._merge_update("take_over", source, predicate, CLAIMED, run, at, prepare=not_yet_held, warn_unchanged=False)
        return (
            self._scan(self._open())
            .filter(pl.col("request_id").is_in(ids) & mine.expr())
            .sort(rules.QUEUE_ORDER)
            .collect()
        )
