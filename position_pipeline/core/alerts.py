"""When to tell someone: one alert when the sync has been failing for a while, one when it recovers, one when a health
check starts failing; and how an alert is posted to a webhook. No Dagster here: `defs/alerts.py` feeds it runs and
check results and keeps `AlertState` in its sensor's cursor.

Invariant: during an outage of any length there is exactly one outage alert and, once a run succeeds, exactly one
recovery alert; a check that keeps failing alerts once, again only after it has passed in between.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

ALERT_WEBHOOK_VARIABLE = "POSITION_ALERT_WEBHOOK_URL"
"""The webhook alerts are posted to (a Slack or Teams incoming webhook, or any HTTP endpoint taking JSON)."""

DEFAULT_FAILED_RUNS = 3
"""Sync runs that fail in a row before the outage alert."""
DEFAULT_FAILING_MINUTES = 10
"""Minutes since the first failed sync run of a streak before the outage alert, however few runs failed."""
POST_TIMEOUT_SECONDS = 10


class BodyFormat(StrEnum):
    """What an alert's JSON body looks like: `text` is `{"text": ...}`, which Slack and Microsoft Teams incoming
    webhooks both accept; `plain` is the alert's fields (kind, text, runs, check, ...) for any other receiver."""

    TEXT = "text"
    PLAIN = "plain"


class AlertKind(StrEnum):
    OUTAGE = "outage"
    RECOVERY = "recovery"
    CHECK_FAILED = "check_failed"


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """A finished sync run: whether it failed, when it ended (epoch seconds) and its error, if any."""

    run_id: str
    failed: bool
    ended_at: float
    error: str = ""


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """The latest evaluation of one health check."""

    name: str
    passed: bool
    description: str = ""


@dataclass(frozen=True, slots=True)
class Alert:
    kind: AlertKind
    text: str
    details: dict[str, Any] = field(default_factory=dict)

    def body(self, body_format: BodyFormat) -> dict[str, Any]:
        """The JSON object posted for this alert."""
        if body_format == BodyFormat.TEXT:
            return {"text": self.text}
        return {"kind": str(self.kind), "text": self.text, **self.details}


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """When a streak of failed sync runs becomes an outage: `failed_runs` in a row, or failing for `failing_minutes`."""

    failed_runs: int = DEFAULT_FAILED_RUNS
    failing_minutes: float = DEFAULT_FAILING_MINUTES

    def __post_init__(self) -> None:
        if self.failed_runs < 1 or self.failing_minutes <= 0:
            raise ValueError(f"failed_runs must be at least 1 and failing_minutes above 0, got {self}")


@dataclass(frozen=True, slots=True)
class AlertState:
    """What the alerting remembers between evaluations (JSON in the sensor's cursor)."""

    failed_in_a_row: int = 0
    failing_since: float | None = None
    """When the first failed run of the current streak ended; None while the last run succeeded."""
    last_error: str = ""
    last_failed_run: str = ""
    outage_alerted: bool = False
    failing_checks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "failing_checks": list(self.failing_checks)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> AlertState:
        if not value:
            return cls()
        known = {k: v for k, v in value.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "failing_checks": tuple(known.get("failing_checks", ()))})


def evaluate(
    state: AlertState,
    runs: Iterable[RunOutcome],
    checks: Iterable[CheckOutcome],
    policy: AlertPolicy,
    now: float,
) -> tuple[AlertState, list[Alert]]:
    """The new state and the alerts to send after `runs` (finished since the last evaluation, oldest first) and the
    checks' latest outcomes, at `now` (epoch seconds)."""
    alerts: list[Alert] = []
    for run in runs:
        state, alert = _after_run(state, run, policy)
        alerts += [alert] if alert else []
    if _is_outage(state, policy, now) and not state.outage_alerted:
        alerts.append(_outage_alert(state, policy, now))
        state = replace(state, outage_alerted=True)
    failing = list(state.failing_checks)
    for check in checks:
        if not check.passed and check.name not in failing:
            failing.append(check.name)
            alerts.append(
                Alert(
                    AlertKind.CHECK_FAILED,
                    f"position_pipeline: check {check.name} failed: {check.description}",
                    {"check": check.name, "description": check.description},
                )
            )
        elif check.passed and check.name in failing:
            failing.remove(check.name)
    return replace(state, failing_checks=tuple(failing)), alerts


def _after_run(state: AlertState, run: RunOutcome, policy: AlertPolicy) -> tuple[AlertState, Alert | None]:
    if not run.failed:
        alert = None
        if state.outage_alerted:
            alert = Alert(
                AlertKind.RECOVERY,
                f"position_pipeline: sync recovered: run {run.run_id} succeeded after {state.failed_in_a_row} failed "
                "runs",
                {"run_id": run.run_id, "failed_runs": state.failed_in_a_row},
            )
        return AlertState(failing_checks=state.failing_checks), alert
    since = state.failing_since if state.failing_since is not None else run.ended_at
    state = replace(
        state,
        failed_in_a_row=state.failed_in_a_row + 1,
        failing_since=since,
        last_error=run.error,
        last_failed_run=run.run_id,
    )
    if not state.outage_alerted and _is_outage(state, policy, run.ended_at):
        return replace(state, outage_alerted=True), _outage_alert(state, policy, run.ended_at)
    return state, None


def _is_outage(state: AlertState, policy: AlertPolicy, at: float) -> bool:
    if state.failing_since is None:
        return False
    return state.failed_in_a_row >= policy.failed_runs or at - state.failing_since >= policy.failing_minutes * 60


def _outage_alert(state: AlertState, policy: AlertPolicy, at: float) -> Alert:
    minutes = (at - (state.failing_since or at)) / 60
    return Alert(
        AlertKind.OUTAGE,
        f"position_pipeline: sync failing: {state.failed_in_a_row} sync runs failed in a row over {minutes:.0f} min "
        f"(alerts at {policy.failed_runs} runs or {policy.failing_minutes:g} min); latest {state.last_failed_run}: "
        f"{state.last_error or 'see its error in the Dagster UI'}",
        {
            "failed_runs": state.failed_in_a_row,
            "failing_minutes": round(minutes, 1),
            "latest_run_id": state.last_failed_run,
            "error": state.last_error,
        },
    )


def post_alert(url: str, alert: Alert, body_format: BodyFormat, timeout: float = POST_TIMEOUT_SECONDS) -> int:
    """POST the alert's JSON body to `url`; the HTTP status, or an OSError (urllib's errors) when it was not taken."""
    data = json.dumps(alert.body(body_format)).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return int(response.status)
