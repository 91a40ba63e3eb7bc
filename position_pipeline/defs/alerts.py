"""The alerting sensor: posts to POSITION_ALERT_WEBHOOK_URL once when sync runs keep failing, once when they
recover, and once when a health check starts failing. `core/alerts.py` decides; this module reads the finished sync
runs and the checks' latest results from the instance and keeps the state in the sensor's cursor, so a long outage
sends one message, not one per failed run.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field

from position_pipeline.core.alerts import (
    ALERT_WEBHOOK_VARIABLE,
    DEFAULT_FAILED_RUNS,
    DEFAULT_FAILING_MINUTES,
    AlertPolicy,
    AlertState,
    BodyFormat,
    CheckOutcome,
    RunOutcome,
    evaluate,
    post_alert,
)
from position_pipeline.defs.checks import ASSET_CHECKS
from position_pipeline.defs.jobs import SYNC_JOB_NAME
from position_pipeline.defs.resources import _env_or

ALERT_INTERVAL_SECONDS = 30
_RUNS_PER_TICK = 100


class AlertResource(dg.ConfigurableResource):
    """Where alerts go and when a streak of failed sync runs is an outage."""

    webhook_url: str = Field(
        default="", description=f"URL alerts are POSTed to ({ALERT_WEBHOOK_VARIABLE}); empty: no alerts."
    )
    body_format: str = Field(
        default=BodyFormat.TEXT.value,
        description='JSON body (POSITION_ALERT_FORMAT): "text" is {"text": ...}, as Slack and Teams incoming '
        'webhooks take it; "plain" adds the alert\'s fields (kind, runs, check, error).',
    )
    failed_runs: int = Field(
        default=DEFAULT_FAILED_RUNS,
        description="Sync runs failed in a row that make an outage, at least 1 (POSITION_ALERT_FAILED_RUNS).",
    )
    failing_minutes: int = Field(
        default=DEFAULT_FAILING_MINUTES,
        description="Minutes of failing sync runs that make an outage, however few, at least 1 "
        "(POSITION_ALERT_FAILING_MINUTES).",
    )

    def policy(self) -> AlertPolicy:
        """The outage rule; a value out of range is a config error naming its field (checked when the sensor runs:
        environment variables resolve only then)."""
        try:
            return AlertPolicy(failed_runs=self.failed_runs, failing_minutes=self.failing_minutes)
        except ValueError as exc:
            raise dg.DagsterInvalidConfigError(f"AlertResource: {exc}", [], None) from exc

    def format(self) -> BodyFormat:
        try:
            return BodyFormat(self.body_format)
        except ValueError as exc:
            raise dg.DagsterInvalidConfigError(
                f"AlertResource.body_format (POSITION_ALERT_FORMAT) must be one of "
                f"{', '.join(f.value for f in BodyFormat)}, got {self.body_format!r}",
                [],
                None,
            ) from exc


def alert_resource() -> AlertResource:
    """The alerting configured by the POSITION_ALERT_* variables (unset: no webhook, the defaults)."""
    return AlertResource(
        webhook_url=_env_or(ALERT_WEBHOOK_VARIABLE, ""),
        body_format=_env_or("POSITION_ALERT_FORMAT", BodyFormat.TEXT.value),
        failed_runs=_env_or("POSITION_ALERT_FAILED_RUNS", DEFAULT_FAILED_RUNS, int),
        failing_minutes=_env_or("POSITION_ALERT_FAILING_MINUTES", DEFAULT_FAILING_MINUTES, int),
    )


@dg.sensor(
    minimum_interval_seconds=ALERT_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        f"Every {ALERT_INTERVAL_SECONDS} s: posts to {ALERT_WEBHOOK_VARIABLE} once when position_sync runs have "
        "failed failed_runs times in a row or for failing_minutes, once when one succeeds again, and once when a "
        "health check starts failing. Skips when no webhook is configured."
    ),
)
def sync_alert_sensor(context: dg.SensorEvaluationContext, alerts: AlertResource) -> dg.SensorResult | dg.SkipReason:
    if not alerts.webhook_url:
        return dg.SkipReason(f"no webhook: set {ALERT_WEBHOOK_VARIABLE} to receive alerts")
    policy, body_format = alerts.policy(), alerts.format()
    cursor = json.loads(context.cursor or "{}")
    runs, after, seen = finished_sync_runs(context.instance, cursor.get("after"), cursor.get("seen", []))
    state, due = evaluate(
        AlertState.from_json(cursor.get("state")),
        runs,
        latest_check_outcomes(context.instance),
        policy,
        datetime.now(UTC).timestamp(),
    )
    for alert in due:  # an error leaves the cursor as it was: the next tick sends it again
        status = post_alert(alerts.webhook_url, alert, body_format)
        context.log.info(f"posted {alert.kind} alert (HTTP {status}): {alert.text}")
    return dg.SensorResult(cursor=json.dumps({"after": after, "seen": seen, "state": state.to_json()}))


def finished_sync_runs(
    instance: dg.DagsterInstance, after: float | None, seen: list[str]
) -> tuple[list[RunOutcome], float | None, list[str]]:
    """Sync runs that finished (succeeded or failed) and were last updated since `after` (epoch seconds), in that
    order, leaving out the `seen` run ids; with the new `after` and `seen` (the runs updated at that moment, which the
    next call must skip)."""
    updated_after = datetime.fromtimestamp(after, UTC) if after is not None else None
    records = instance.get_run_records(
        dg.RunsFilter(
            job_name=SYNC_JOB_NAME,
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
            updated_after=updated_after,
        ),
        limit=_RUNS_PER_TICK,
        order_by="update_timestamp",
        ascending=True,
    )
    fresh = [r for r in records if r.dagster_run.run_id not in seen]
    if not fresh:
        return [], after, seen
    outcomes = [
        RunOutcome(
            run_id=r.dagster_run.run_id,
            failed=failed,
            ended_at=r.end_time or r.update_timestamp.timestamp(),
            error=_run_error(instance, r.dagster_run.run_id) if failed else "",
        )
        for r in fresh
        for failed in [r.dagster_run.status == dg.DagsterRunStatus.FAILURE]
    ]
    last = fresh[-1].update_timestamp.timestamp()
    return outcomes, last, [r.dagster_run.run_id for r in fresh if r.update_timestamp.timestamp() == last]


def _run_error(instance: dg.DagsterInstance, run_id: str) -> str:
    """The first step failure's message of a failed run (what the UI shows), or ""."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        data: Any = record.dagster_event.event_specific_data if record.dagster_event else None
        error = getattr(data, "error", None)
        if error is not None:
            return str(error.message).strip().splitlines()[0] if error.message else ""
    return ""


def latest_check_outcomes(instance: dg.DagsterInstance) -> list[CheckOutcome]:
    """Each health check's latest finished evaluation (checks never evaluated yet are left out)."""
    outcomes = []
    for check in ASSET_CHECKS:
        for key in check.check_keys:
            record = instance.get_latest_asset_check_evaluation_record(key)
            if record is None or record.status.value not in {"SUCCEEDED", "FAILED"}:
                continue
            data: Any = (
                record.event.dagster_event.event_specific_data if record.event and record.event.dagster_event else None
            )
            outcomes.append(
                CheckOutcome(
                    key.name,
                    passed=record.status.value == "SUCCEEDED",
                    description=getattr(data, "description", "") or "",
                )
            )
    return outcomes
