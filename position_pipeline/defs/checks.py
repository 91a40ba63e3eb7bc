"""Asset checks that show in the UI whether the pipeline is healthy (their job is in jobs.py, schedule in schedules.py).

Four checks, each a `@dg.asset_check` around an evaluation in `core/health.py` (a plain function of the lake's
tables and an explicit `now`): the check passes the current time and its config, and `check_result` shows the
outcome as Dagster's result, its tables as markdown:

- position_updates `no_duplicate_rows` (ERROR): no (request_id, account) has two rows (exactly once held);
- position_queue `no_expired_claims` (ERROR): nothing stays PROCESSING longer than the claim lease;
- position_queue `failed_share_last_hour` (WARN): the items that finished in the last hour mostly succeeded;
- position_updates `fresh_while_pending` (ERROR): while items wait to be claimed, rows keep arriving.

The checks only read: an absent table counts as empty and is not created. None is blocking, and none targets a
partition: `position_checks` is an unpartitioned job, which Dagster 1.13 runs next to the hourly-partitioned sync
assets (each check judges the whole table, whatever hour its rows were queued in).
"""

from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
from pydantic import Field

from position_pipeline.core.health import (
    FAILED_SHARE_THRESHOLD,
    FRESHNESS_SECONDS,
    HealthOutcome,
    evaluate_claims,
    evaluate_duplicates,
    evaluate_failed_share,
    evaluate_freshness,
)
from position_pipeline.core.leases import CLAIM_LEASE_SECONDS
from position_pipeline.defs.assets import position_queue, position_updates
from position_pipeline.defs.metadata import markdown_table
from position_pipeline.defs.resources import LakeResource


def check_result(outcome: HealthOutcome) -> dg.AssetCheckResult:
    """An evaluation as the UI shows it: same verdict, severity and description, tables as markdown."""
    return dg.AssetCheckResult(
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity(outcome.severity.value),
        description=outcome.description,
        metadata={
            key: dg.MetadataValue.md(markdown_table(value)) if isinstance(value, pl.DataFrame) else value
            for key, value in outcome.metadata.items()
        },
    )


# The asset checks


class ClaimLeaseConfig(dg.Config):
    lease_seconds: int = Field(
        default=CLAIM_LEASE_SECONDS, ge=1, description="Seconds an item may stay PROCESSING before the check fails."
    )


class FailedShareConfig(dg.Config):
    threshold: float = Field(
        default=FAILED_SHARE_THRESHOLD,
        gt=0,
        le=1,
        description="Share of the last hour's finished items that may fail; the check warns at or above it.",
    )


class FreshnessConfig(dg.Config):
    max_age_seconds: int = Field(
        default=FRESHNESS_SECONDS,
        ge=1,
        description="Seconds an item may wait to be claimed, and the age the newest row may reach meanwhile.",
    )


@dg.asset_check(
    asset=position_updates,
    blocking=False,
    description=(
        "Every (request_id, account) has at most one row in position_updates (an item has one row per account "
        "holding its contract). A second row means an item was written twice for one account: exactly-once broke "
        "(a run that appended after losing its claim, or a manual append). Readers still get one latest row per "
        "position, but the history counts it twice. What to do: open the runs in the sample (their logs say why "
        "both wrote), then delete the later run's rows (Delta DELETE on request_id, account and run_id)."
    ),
)
def no_duplicate_rows(lake: LakeResource) -> dg.AssetCheckResult:
    return check_result(evaluate_duplicates(lake.root_uri, storage_options=lake.storage_options()))


@dg.asset_check(
    asset=position_queue.key,
    blocking=False,
    description=(
        f"No item stays PROCESSING longer than the claim lease (lease_seconds, default {CLAIM_LEASE_SECONDS} s). A "
        "healthy run holds its claims for seconds, and position_sync_sensor gives back the claims of finished runs "
        "and those older than the lease. What to do: open the runs listed; terminate one that still runs (run "
        "monitoring fails sync runs after 600 s); then make sure position_sync_sensor is running and its ticks "
        "succeed: it gives the items back on its next tick."
    ),
)
def no_expired_claims(config: ClaimLeaseConfig, lake: LakeResource) -> dg.AssetCheckResult:
    return check_result(
        evaluate_claims(
            lake.root_uri,
            datetime.now(UTC),
            timedelta(seconds=config.lease_seconds),
            storage_options=lake.storage_options(),
        )
    )


@dg.asset_check(
    asset=position_queue.key,
    blocking=False,
    description=(
        "Warns when the share of FAILED among the items that finished (SUCCESS or FAILED) in the last hour reaches "
        f"the threshold (default {FAILED_SHARE_THRESHOLD:.0%}); passes when nothing finished. What to do: read the "
        "errors listed (and `position-pipeline status`). 'not held' errors mean producers queue contracts the "
        "accounts do not hold, or pin the wrong account: fix the producer. Errors from IB point at the gateway: "
        "check it, then requeue the failed items (`position-pipeline requeue --failed --since 1h`)."
    ),
)
def failed_share_last_hour(config: FailedShareConfig, lake: LakeResource) -> dg.AssetCheckResult:
    return check_result(
        evaluate_failed_share(
            lake.root_uri, datetime.now(UTC), config.threshold, storage_options=lake.storage_options()
        )
    )


@dg.asset_check(
    asset=position_updates,
    blocking=False,
    description=(
        "While items wait to be claimed for longer than max_age_seconds (default "
        f"{FRESHNESS_SECONDS} s), the newest row of position_updates must be younger than that; passes when nothing "
        "waits that long. A failure means the sync has stopped: check that position_sync_sensor is running and why "
        "its ticks skip, the last position_sync runs' errors (IB Gateway down or refusing the connection?), and "
        "that the daemon and the run queue are up."
    ),
)
def fresh_while_pending(config: FreshnessConfig, lake: LakeResource) -> dg.AssetCheckResult:
    return check_result(
        evaluate_freshness(
            lake.root_uri,
            datetime.now(UTC),
            timedelta(seconds=config.max_age_seconds),
            storage_options=lake.storage_options(),
        )
    )


ASSET_CHECKS = [no_duplicate_rows, no_expired_claims, failed_share_last_hour, fresh_while_pending]
