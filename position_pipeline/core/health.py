"""The pipeline's health, judged from the lake's tables at an explicit `now`: the four evaluations behind the asset
checks, as plain outcomes (`defs/checks.py` shows them in the UI).

- `evaluate_duplicates` (ERROR): no (request_id, account) has two rows in position_updates (exactly once held);
- `evaluate_claims` (ERROR): nothing stays PROCESSING longer than the claim lease;
- `evaluate_failed_share` (WARN): the items that finished in the last hour mostly succeeded;
- `evaluate_freshness` (ERROR): while items wait to be claimed, rows keep arriving in position_updates.

Each only reads: an absent table counts as empty and is not created. Tested without Dagster and without sleeping.
"""

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import polars as pl

from position_pipeline.core.lake import (
    POSITION_UPDATES_KEY,
    POSITION_UPDATES_TABLE,
    QUEUE_TABLE,
    StorageOptions,
    open_existing,
    table_uri,
)
from position_pipeline.core.leases import CLAIM_LEASE_SECONDS
from position_pipeline.core.queue import QueueStatus, claimable_filter, utc_or_now
from position_pipeline.core.terms import MAX_ATTEMPTS
from position_pipeline.core.time_text import age_text

FAILED_SHARE_THRESHOLD = 0.2
FAILED_SHARE_WINDOW = timedelta(hours=1)
FRESHNESS_SECONDS = 120

SAMPLE_SIZE = 10
"""How many duplicated row keys, runs or error messages a check lists."""

HealthValue = int | float | str | None | pl.DataFrame
"""A metadata value of an outcome: a number, a text, nothing, or a table (the UI shows it as a markdown table)."""


class Severity(StrEnum):
    """How bad a failed check is: ERROR, the pipeline is broken; WARN, it is degraded."""

    ERROR = "ERROR"
    WARN = "WARN"


@dataclass(frozen=True, slots=True)
class HealthOutcome:
    """One evaluation: whether it passed, how bad a failure is, what it found, and the figures behind it."""

    passed: bool
    severity: Severity
    description: str
    metadata: dict[str, HealthValue]


def evaluate_duplicates(root: str, *, storage_options: StorageOptions | None = None) -> HealthOutcome:
    """Passes when no row key (request_id, account) has more than one row in position_updates.

    Reads only the key columns (one pass that counts rows per key and in all); when duplicates exist, a second
    read of the sampled keys' run_id says which runs wrote them.
    """
    started = time.perf_counter()
    key = list(POSITION_UPDATES_KEY)
    table = open_existing(table_uri(root, POSITION_UPDATES_TABLE), storage_options)
    if table is None:
        return HealthOutcome(
            passed=True,
            severity=Severity.ERROR,
            description="no position_updates table yet",
            metadata=_duplicates_metadata(0, 0, pl.DataFrame(), 0, started),
        )
    history = pl.scan_delta(table)
    per_key = history.select(key).group_by(key).len("rows")
    duplicated, total = pl.collect_all(
        [
            per_key.filter(pl.col("rows") > 1).sort(["rows", *key], descending=[True, False, False]),
            per_key.select(pl.col("rows").sum()),
        ]
    )
    scanned = int(total.item() or 0)
    extra = int(duplicated["rows"].sum() - duplicated.height)
    sample = duplicated.head(SAMPLE_SIZE)
    if sample.height:
        runs = (
            history.join(sample.lazy().select(key), on=key, how="semi", nulls_equal=True)
            .group_by(key)
            .agg(run_ids=pl.col("run_id").unique().sort().str.join(", "))
            .collect()
        )
        sample = sample.join(runs, on=key, how="left", maintain_order="left", nulls_equal=True)
    metadata = _duplicates_metadata(duplicated.height, extra, sample, scanned, started)
    if duplicated.is_empty():
        return HealthOutcome(
            passed=True,
            severity=Severity.ERROR,
            description=f"{scanned} rows, each (request_id, account) once",
            metadata=metadata,
        )
    return HealthOutcome(
        passed=False,
        severity=Severity.ERROR,
        description=f"{duplicated.height} (request_id, account) pairs have more than one row ({extra} extra rows "
        f"in {scanned})",
        metadata=metadata,
    )


def evaluate_claims(
    root: str,
    now: datetime,
    lease: timedelta = timedelta(seconds=CLAIM_LEASE_SECONDS),
    *,
    storage_options: StorageOptions | None = None,
) -> HealthOutcome:
    """Passes when no item has been PROCESSING for longer than `lease` at `now` (claimed_at < now - lease)."""
    at = utc_or_now(now)
    lease_seconds = lease.total_seconds()
    table = open_existing(table_uri(root, QUEUE_TABLE), storage_options)
    if table is None:
        return HealthOutcome(
            passed=True,
            severity=Severity.ERROR,
            description="no queue table yet",
            metadata=_claims_metadata(0, 0, None, pl.DataFrame(), lease_seconds),
        )
    processing = (
        pl.scan_delta(table)
        .select("status", "claimed_by", "claimed_at")
        .filter(pl.col("status") == QueueStatus.PROCESSING.value)
    )
    runs, held = pl.collect_all(
        [
            processing.filter(pl.col("claimed_at") < at - lease)
            .group_by("claimed_by")
            .agg(items=pl.len(), oldest_claimed_at=pl.col("claimed_at").min())
            .sort(["oldest_claimed_at", "claimed_by"]),
            processing.select(pl.len()),
        ]
    )
    expired = int(runs["items"].sum())
    oldest: datetime | None = runs["oldest_claimed_at"].min() if runs.height else None  # type: ignore[assignment]
    oldest_age = None if oldest is None else (at - oldest).total_seconds()
    runs = pl.DataFrame(
        {
            "run_id": runs["claimed_by"],
            "items": runs["items"],
            "oldest_claim_age": [age_text((at - t).total_seconds()) for t in runs["oldest_claimed_at"]],
        },
        schema={"run_id": pl.String, "items": pl.UInt32, "oldest_claim_age": pl.String},
    )
    metadata = _claims_metadata(expired, int(held.item()), oldest_age, runs, lease_seconds)
    if not expired:
        return HealthOutcome(
            passed=True,
            severity=Severity.ERROR,
            description=f"{int(held.item())} items PROCESSING, none for longer than the {lease_seconds:.0f} s lease",
            metadata=metadata,
        )
    return HealthOutcome(
        passed=False,
        severity=Severity.ERROR,
        description=f"{expired} items PROCESSING for longer than the {lease_seconds:.0f} s lease (oldest claimed "
        f"{age_text(oldest_age or 0)} ago) by {runs.height} runs: {', '.join(runs['run_id'].to_list())}",
        metadata=metadata,
    )


def evaluate_failed_share(
    root: str,
    now: datetime,
    threshold: float = FAILED_SHARE_THRESHOLD,
    window: timedelta = FAILED_SHARE_WINDOW,
    *,
    storage_options: StorageOptions | None = None,
) -> HealthOutcome:
    """Passes when FAILED / (SUCCESS + FAILED) among items updated in (now - window, now] is under `threshold`.

    Items are counted in their current status: one that failed and then succeeded on a retry counts as a success.
    Nothing finished in the window passes.
    """
    at = utc_or_now(now)
    table = open_existing(table_uri(root, QUEUE_TABLE), storage_options)
    if table is None:
        return HealthOutcome(
            passed=True,
            severity=Severity.WARN,
            description="no queue table yet",
            metadata=_share_metadata(0, 0, threshold, window, pl.DataFrame()),
        )
    finished = (
        pl.scan_delta(table)
        .select("status", "updated_at", "error_message")
        .filter(
            pl.col("status").is_in([QueueStatus.SUCCESS.value, QueueStatus.FAILED.value])
            & (pl.col("updated_at") > at - window)
            & (pl.col("updated_at") <= at)
        )
    )
    counts, errors = pl.collect_all(
        [
            finished.group_by("status").len(),
            finished.filter(pl.col("status") == QueueStatus.FAILED.value)
            .group_by("error_message")
            .agg(items=pl.len(), last_failed_at=pl.col("updated_at").max())
            .sort(["items", "last_failed_at"], descending=True)
            .head(SAMPLE_SIZE),
        ]
    )
    by_status = dict(counts.iter_rows())
    succeeded = int(by_status.get(QueueStatus.SUCCESS.value, 0))
    failed = int(by_status.get(QueueStatus.FAILED.value, 0))
    metadata = _share_metadata(succeeded, failed, threshold, window, errors.select("items", "error_message"))
    span = age_text(window.total_seconds())
    if not succeeded + failed:
        return HealthOutcome(
            passed=True, severity=Severity.WARN, description=f"no item finished in the last {span}", metadata=metadata
        )
    share = failed / (succeeded + failed)
    return HealthOutcome(
        passed=share < threshold,
        severity=Severity.WARN,
        description=f"{failed} of {succeeded + failed} items finished in the last {span} failed ({share:.0%}; "
        f"threshold {threshold:.0%})",
        metadata=metadata,
    )


def evaluate_freshness(
    root: str,
    now: datetime,
    max_age: timedelta = timedelta(seconds=FRESHNESS_SECONDS),
    max_attempts: int = MAX_ATTEMPTS,
    *,
    storage_options: StorageOptions | None = None,
) -> HealthOutcome:
    """Passes unless an item has waited to be claimed longer than `max_age` while no row is newer than `max_age`.

    Waiting means claimable, as `PositionQueue.claim` decides at `now`, and is measured from the moment the item
    became claimable: its updated_at for PENDING (queued or given back), its retry_after for a FAILED item due for a
    retry. The newest row is position_updates' greatest snapshot_at.
    """
    at = utc_or_now(now)
    limit = at - max_age
    queue = open_existing(table_uri(root, QUEUE_TABLE), storage_options)
    pending, waiting, oldest = 0, 0, None
    if queue is not None:
        since = (
            pl.when(pl.col("status") == QueueStatus.PENDING.value)
            .then(pl.col("updated_at"))
            .otherwise(pl.col("retry_after"))
        )
        claimable = (
            pl.scan_delta(queue)
            .select("status", "attempts", "retry_after", "updated_at")
            .filter(claimable_filter(at, max_attempts))
            .select(since.alias("since"))
        )
        found = claimable.select(
            pending=pl.len(), waiting=(pl.col("since") < limit).sum(), oldest=pl.col("since").min()
        ).collect()
        pending, waiting, oldest = found.row(0)
    updates = open_existing(table_uri(root, POSITION_UPDATES_TABLE), storage_options)
    newest: datetime | None = None
    if updates is not None:
        newest = pl.scan_delta(updates).select(pl.col("snapshot_at").max()).collect().item()
    oldest_age = None if oldest is None else (at - oldest).total_seconds()
    newest_age = None if newest is None else (at - newest).total_seconds()
    metadata: dict[str, HealthValue] = {
        "pending_items": int(pending),
        "waiting_items": int(waiting),
        "oldest_pending_age_seconds": _seconds(oldest_age),
        "newest_row_age_seconds": _seconds(newest_age),
        "max_age_seconds": max_age.total_seconds(),
    }
    newest_text = "no row yet" if newest_age is None else f"the newest row is {age_text(newest_age)} old"
    if not waiting:
        return HealthOutcome(
            passed=True,
            severity=Severity.ERROR,
            description=f"{pending} items claimable, none waiting longer than {age_text(max_age.total_seconds())}; "
            f"{newest_text}",
            metadata=metadata,
        )
    return HealthOutcome(
        passed=newest is not None and newest > limit,
        severity=Severity.ERROR,
        description=f"{waiting} items have waited longer than {age_text(max_age.total_seconds())} (oldest "
        f"{age_text(oldest_age or 0)}); {newest_text}",
        metadata=metadata,
    )


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _duplicates_metadata(
    duplicates: int, extra: int, sample: pl.DataFrame, scanned: int, started: float
) -> dict[str, HealthValue]:
    return {
        "duplicates": duplicates,
        "extra_rows": extra,
        "sample": sample,
        "rows_scanned": scanned,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _claims_metadata(
    expired: int, processing: int, oldest_age: float | None, runs: pl.DataFrame, lease_seconds: float
) -> dict[str, HealthValue]:
    return {
        "expired_claims": expired,
        "processing": processing,
        "oldest_claim_age_seconds": _seconds(oldest_age),
        "run_ids": ", ".join(runs["run_id"].to_list()) if runs.height else "",
        "runs": runs,
        "lease_seconds": lease_seconds,
    }


def _share_metadata(
    succeeded: int, failed: int, threshold: float, window: timedelta, errors: pl.DataFrame
) -> dict[str, HealthValue]:
    finished = succeeded + failed
    return {
        "succeeded": succeeded,
        "failed": failed,
        "share": round(failed / finished, 4) if finished else None,
        "threshold": threshold,
        "window_seconds": window.total_seconds(),
        "errors": errors,
    }


def evaluate_for_status(
    root: str, now: datetime, *, storage_options: StorageOptions | None = None
) -> dict[str, HealthOutcome]:
    """The evaluations `position-pipeline status` makes, with their defaults, by the name of the asset check that
    shows each in the UI: expired claims, the failed share, stale pending items. Not the duplicates check, which
    reads every row of position_updates (its schedule runs it)."""
    return {
        "no_expired_claims": evaluate_claims(root, now, storage_options=storage_options),
        "failed_share_last_hour": evaluate_failed_share(root, now, storage_options=storage_options),
        "fresh_while_pending": evaluate_freshness(root, now, storage_options=storage_options),
    }
