"""The pipeline's writes: claim items for a run, mark them SUCCESS or FAILED, and give them back.

Every call is one MERGE (retried on conflict) whose predicate re-checks, on the row it rewrites, the rule the call
read its rows by (rules.py), so a row that changed meanwhile is left alone:
- `claim` takes only rows still claimable; no item is ever returned to two claimers;
- a mark or release with `claimed_by` changes only rows that run still holds, so a stale run cannot overwrite a
  newer claim; SUCCESS is never reopened;
- `attempts` counts item-level failures only (claims and releases leave it alone); `claims` counts every claim.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

import polars as pl
from deltalake import DeltaTable

from position_pipeline.core import lake
from position_pipeline.core.queue import rules
from position_pipeline.core.queue.arguments import (
    aware,
    check_limit,
    check_max_attempts,
    check_request_ids,
    check_run_id,
    check_run_ids,
    utc_or_now,
)
from position_pipeline.core.queue.commits import queue_commit_properties
from position_pipeline.core.queue.rules import RETRY_BACKOFF, RETRY_MAX_BACKOFF, retry_delay, sql_literal
from position_pipeline.core.queue.table import Prepare, QueueTable
from position_pipeline.core.terms import MAX_ATTEMPTS, Priority, QueueStatus

logger = logging.getLogger(__name__)

_RELEASED = {
    "status": sql_literal(QueueStatus.PENDING),
    "retry_after": "NULL",
    "claimed_by": "NULL",
    "claimed_at": "NULL",
}
"""The MERGE updates that give an item back: PENDING, unclaimed; attempts and claims untouched."""

CLAIMED = {
    "status": sql_literal(QueueStatus.PROCESSING),
    "claims": "t.claims + 1",
    "retry_after": "NULL",
    "claimed_by": "s.claimed_by",
    "claimed_at": "s.claimed_at",
    "updated_at": "s.claimed_at",
}
"""The MERGE updates of a claim, from a source of request_id, claimed_by and claimed_at: PROCESSING under that run,
one more claim, no retry_after."""


class QueueClaims(QueueTable):
    """The queue's claims, marks and releases."""

    def claim(
        self,
        priority: int | None = Priority.MONITORING,
        limit: int = 50,
        *,
        claimed_by: str,
        now: datetime | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        queued_from: datetime | None = None,
        queued_before: datetime | None = None,
    ) -> pl.DataFrame:
        """Move up to `limit` claimable items (oldest first) to PROCESSING for run `claimed_by`; returns them.

        Claimable: PENDING, or FAILED with `attempts < max_attempts` and `retry_after <= now`. Each claim adds one to
        `claims` and clears `retry_after`; `attempts` and the last error_message are kept. `queued_from` (inclusive)
        and `queued_before` (exclusive) restrict it to items created in that window (a partition's hours).

        One MERGE per attempt, matching `request_id` AND the eligibility conditions as literals. Delta commits
        optimistically: if another claim (or mark) rewrote a file this one read, the commit fails with
        CommitFailedError and we re-read and pick again, so no item is ever returned to two claimers. Two commits that
        change the same row both remove the file holding it, and Delta never lets both land (ConcurrentDeleteDelete),
        whatever the isolation level.
        """
        run = check_run_id(claimed_by)
        limit = check_limit(limit)
        attempts_cap = check_max_attempts(max_attempts)
        at = utc_or_now(now)
        start = None if queued_from is None else aware("queued_from", queued_from)
        eligible = rules.claimable(at, attempts_cap) & rules.queued_between(start, None)

        def attempt() -> pl.DataFrame:
            dt = self._open()
            picked = (
                self._claimable_scan(dt, priority, at, attempts_cap, start, queued_before)
                .sort(rules.QUEUE_ORDER)
                .head(limit)
                .select("request_id", "created_at")
                .collect()
            )
            if picked.is_empty():
                return pl.DataFrame(schema=lake.QUEUE_SCHEMA)
            source = picked.select("request_id").with_columns(
                claimed_by=pl.lit(run, dtype=pl.String),
                claimed_at=pl.lit(at, dtype=lake.UTC_TIMESTAMP),
            )
            # The target row must still be claimable, checked on the row the MERGE rewrites. The literal bounds on
            # created_at are redundant for the rows picked, but delta-rs checks conflicts with them: files appended
            # since (newer, or in no claimable state) can then no longer fail this commit.
            newest = picked["created_at"].max()
            assert isinstance(newest, datetime)  # created_at is NOT NULL and `picked` is not empty
            guard = eligible & rules.Compare("created_at", "<=", newest)
            metrics = (
                dt.merge(
                    source.to_arrow(),
                    predicate=rules.merge_predicate(guard, "request_id"),
                    source_alias=rules.SOURCE,
                    target_alias=rules.TARGET,
                    streamed_exec=False,
                    commit_properties=queue_commit_properties("claim", run, source.height),
                )
                .when_matched_update(CLAIMED)
                .execute()
            )
            # `dt` now holds the version this merge committed: read back exactly what it gave this run.
            given = rules.held_by(run) & rules.Compare("claimed_at", "=", at)
            claimed = (
                self._scan(dt)
                .filter(pl.col("request_id").is_in(picked["request_id"].implode()) & given.expr())
                .sort(rules.QUEUE_ORDER)
                .collect()
            )
            logger.info(
                "claim by %s: %d items (merge updated %d) at version %d",
                run,
                claimed.height,
                metrics.get("num_target_rows_updated", -1),
                dt.version(),
            )
            return claimed

        return self._retrying("claim", attempt)

    def mark_success(
        self, request_ids: str | Iterable[str], claimed_by: str | None = None, *, now: datetime | None = None
    ) -> int:
        """Mark items SUCCESS in one commit; returns how many changed.

        With `claimed_by`, only items still PROCESSING under that run change; others are left alone and logged.
        Without it (the original producers' call) the items change whatever their status.
        """
        source = _request_ids(check_request_ids(request_ids))
        return self._mark(
            "mark_success",
            source,
            claimed_by,
            now,
            {"status": sql_literal(QueueStatus.SUCCESS), "error_message": "NULL", "retry_after": "NULL"},
        )

    def mark_failed(
        self, request_id: str, error_message: str, claimed_by: str | None = None, *, now: datetime | None = None
    ) -> int:
        """Mark one item FAILED (the design note's call); see `mark_failed_many`."""
        return self.mark_failed_many({request_id: error_message}, claimed_by, now=now)

    def mark_failed_many(
        self,
        errors: Mapping[str, str],
        claimed_by: str | None = None,
        *,
        now: datetime | None = None,
        backoff: timedelta = RETRY_BACKOFF,
        max_backoff: timedelta = RETRY_MAX_BACKOFF,
    ) -> int:
        """Mark items FAILED with their error in one commit, adding one to `attempts`; returns how many changed.

        Each item gets `retry_after = now + min(backoff * 2**attempts, max_backoff)`, from the attempts it had before
        this failure (30 s, 60 s, 120 s, ... by default): `claim` takes it again after that, while attempts stays
        under its `max_attempts`. The attempts are read in the same snapshot the MERGE runs on, and the MERGE also
        requires them unchanged, so the delay always matches the count it increments.

        `claimed_by` restricts the change to items this run still holds, as in `mark_success`.
        """
        if backoff < timedelta(0) or max_backoff < timedelta(0):
            raise ValueError(f"backoff and max_backoff must not be negative, got {backoff} and {max_backoff}")
        ids = check_request_ids(list(errors))
        messages = [str(errors[i]) for i in ids]
        source = pl.DataFrame(
            {"request_id": ids, "error_message": messages},
            schema={"request_id": pl.String, "error_message": pl.String},
        )
        at = utc_or_now(now)

        def with_retry_after(dt: DeltaTable, source: pl.DataFrame) -> pl.DataFrame:
            current = (
                self._scan(dt)
                .filter(pl.col("request_id").is_in(source["request_id"].implode()))
                .select("request_id", "attempts")
                .collect()
            )
            joined = source.join(current, on="request_id", how="inner", maintain_order="left")
            delays = [retry_delay(a, backoff, max_backoff) for a in joined["attempts"].to_list()]
            return joined.with_columns(
                retry_after=pl.Series([at + d for d in delays], dtype=lake.UTC_TIMESTAMP),
            )

        return self._mark(
            "mark_failed",
            source,
            claimed_by,
            at,
            {
                "status": sql_literal(QueueStatus.FAILED),
                "error_message": "s.error_message",
                "attempts": "t.attempts + 1",
                "retry_after": "s.retry_after",
            },
            also_joined_on=("attempts",),
            prepare=with_retry_after,
        )

    def release(
        self, request_ids: str | Iterable[str], claimed_by: str | None = None, *, now: datetime | None = None
    ) -> int:
        """Put PROCESSING or FAILED items back to PENDING (claim cleared) in one commit; returns how many changed.

        For a run giving back what it could not process, or an operator recovering a dead run's claim or retrying
        failures. SUCCESS items are never reopened. `claimed_by` restricts it to one run's items.
        """
        source = _request_ids(check_request_ids(request_ids))
        return self._mark(
            "release",
            source,
            claimed_by,
            now,
            _RELEASED,
            allowed=(QueueStatus.PROCESSING, QueueStatus.FAILED),
        )

    def requeue_failed(self, *, since: datetime | None = None, now: datetime | None = None) -> int:
        """Put FAILED items back to PENDING with attempts reset to 0, in one commit; returns how many changed.

        The operator's way back for items that used up `max_attempts` (or wait out a backoff): `claim` takes them
        again at once, with every attempt available. `since` (timezone-aware) keeps only items that failed at or
        after it (their updated_at). The claim and retry_after are cleared; error_message stays, so the last error is
        visible until `mark_success` clears it, and `claims` stays, so the pipeline still looks for a row an earlier
        run wrote.

        The FAILED items are looked up again on every retry, and the MERGE re-checks the status (and `since`) on the
        row it rewrites: an item a run claims or marks meanwhile stays that run's.
        """
        at = utc_or_now(now)
        start = None if since is None else aware("since", since)

        def failed(dt: DeltaTable, _: pl.DataFrame) -> pl.DataFrame:
            return self._failed_scan(dt, start).select("request_id").collect()

        return self._merge_update(
            "requeue_failed",
            _request_ids([]),
            rules.merge_predicate(rules.failed_since(start), "request_id"),
            {**_RELEASED, "attempts": "0"},
            None,
            at,
            prepare=failed,
            warn_unchanged=False,
        )

    def release_runs(
        self,
        run_ids: str | Iterable[str],
        *,
        claimed_before: datetime | None = None,
        now: datetime | None = None,
    ) -> int:
        """Put every item these runs hold PROCESSING back to PENDING in one commit; returns how many changed.

        For runs Dagster reports finished (succeeded, failed or canceled) that still hold claims: they died between
        claim and write-back. The claim is cleared and `attempts` left alone (the item did not fail). Each item is
        released only while it is still PROCESSING under that run, and the items are looked up again on every retry.
        `claimed_before` releases only claims made before it: a run "finished" while its worker lives on may still
        write until its write fence, so its claims must not go to another run before then.
        """
        runs = check_run_ids(run_ids)
        if not runs:
            return 0
        source = pl.DataFrame({"claimed_by": runs}, schema={"claimed_by": pl.String})
        old_enough = rules.claimed_before(None if claimed_before is None else aware("claimed_before", claimed_before))

        def held_items(dt: DeltaTable, source: pl.DataFrame) -> pl.DataFrame:
            return (
                self._scan(dt)
                .filter(old_enough.expr() & pl.col("claimed_by").is_in(source["claimed_by"].implode()))
                .select("request_id", "claimed_by")
                .collect()
            )

        return self._merge_update(
            "release_runs",
            source,
            rules.merge_predicate(old_enough, "request_id", "claimed_by"),
            _RELEASED,
            None,
            utc_or_now(now),
            prepare=held_items,
            warn_unchanged=False,
        )

    def release_stale(self, older_than: timedelta, *, now: datetime | None = None) -> int:
        """Put items claimed more than `older_than` ago and still PROCESSING back to PENDING; returns how many.

        Recovers the claims of runs that died between claim and mark. Each item is released only if its claim is
        still the one that was seen (same run, same claimed_at), so an item re-claimed meanwhile is left alone.
        """
        if older_than <= timedelta(0):
            raise ValueError(f"older_than must be positive, got {older_than}")
        at = utc_or_now(now)
        stale = (
            self._scan(self._open())
            .filter(rules.claimed_before(at - older_than).expr())
            .select("request_id", "claimed_by", "claimed_at")
            .collect()
        )
        if stale.is_empty():
            return 0
        return self._merge_update(
            "release_stale",
            stale,
            rules.merge_predicate(rules.status_in(QueueStatus.PROCESSING), "request_id", "claimed_by", "claimed_at"),
            _RELEASED,
            None,
            at,
        )

    def _mark(
        self,
        operation: str,
        source: pl.DataFrame,
        claimed_by: str | None,
        now: datetime | None,
        updates: dict[str, str],
        allowed: Sequence[QueueStatus] | None = None,
        *,
        also_joined_on: Sequence[str] = (),
        prepare: Prepare | None = None,
    ) -> int:
        """Apply `updates` to the source's request_ids in one MERGE, guarded by the claim when one is given.

        `allowed` statuses come first, as literals: delta-rs checks conflicts against them, so producers' appends of
        PENDING items cannot fail a mark. With a run, the default is PROCESSING and the row must be that run's.
        """
        if source.is_empty():
            return 0
        run = None if claimed_by is None else check_run_id(claimed_by)
        if run is not None:
            allowed = allowed or (QueueStatus.PROCESSING,)
        guard = rules.EVERY_ROW if allowed is None else rules.status_in(*allowed)
        joined_on = ["request_id", *(["claimed_by"] if run is not None else []), *also_joined_on]
        source = source.with_columns(claimed_by=pl.lit(run, dtype=pl.String))
        predicate = rules.merge_predicate(guard, *joined_on)
        return self._merge_update(operation, source, predicate, updates, run, utc_or_now(now), prepare=prepare)


def _request_ids(ids: list[str]) -> pl.DataFrame:
    """A MERGE source of request ids only."""
    return pl.DataFrame({"request_id": ids}, schema={"request_id": pl.String})
