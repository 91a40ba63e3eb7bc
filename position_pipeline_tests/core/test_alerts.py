"""When alerts fire: one per outage, one per recovery, one per check that starts failing (no Dagster, no sockets)."""

from __future__ import annotations

import json

import pytest

from position_pipeline.core.alerts import (
    Alert,
    AlertKind,
    AlertPolicy,
    AlertState,
    BodyFormat,
    CheckOutcome,
    RunOutcome,
    evaluate,
)

POLICY = AlertPolicy(failed_runs=3, failing_minutes=10)


def failed(n: int, at: float) -> RunOutcome:
    return RunOutcome(f"f{n}", failed=True, ended_at=at, error="IB Gateway refused the connection")


def kinds(alerts: list[Alert]) -> list[AlertKind]:
    return [a.kind for a in alerts]


def test_a_long_outage_alerts_once_and_its_recovery_once() -> None:
    state, sent = AlertState(), []
    for tick in range(20):  # 40 failed runs over 20 evaluations, a minute apart
        runs = [failed(2 * tick, tick * 60.0), failed(2 * tick + 1, tick * 60.0 + 30)]
        state, alerts = evaluate(state, runs, [], POLICY, now=tick * 60.0 + 31)
        sent += alerts
    assert kinds(sent) == [AlertKind.OUTAGE]
    assert sent[0].details["failed_runs"] == 3 and "refused the connection" in sent[0].text
    state, alerts = evaluate(state, [RunOutcome("ok", failed=False, ended_at=1300.0)], [], POLICY, now=1301.0)
    assert kinds(alerts) == [AlertKind.RECOVERY] and "after 40 failed runs" in alerts[0].text
    state, alerts = evaluate(state, [RunOutcome("ok2", failed=False, ended_at=1310.0)], [], POLICY, now=1311.0)
    assert alerts == [] and state == AlertState()


def test_fewer_failures_than_the_streak_alert_after_the_minutes() -> None:
    state, alerts = evaluate(AlertState(), [failed(1, 0.0)], [], POLICY, now=10.0)
    assert alerts == []
    state, alerts = evaluate(state, [], [], POLICY, now=9 * 60.0)
    assert alerts == []
    state, alerts = evaluate(state, [], [], POLICY, now=10 * 60.0)
    assert kinds(alerts) == [AlertKind.OUTAGE]
    state, alerts = evaluate(state, [], [], POLICY, now=60 * 60.0)
    assert alerts == []


def test_a_failure_between_successes_is_no_outage_and_no_recovery() -> None:
    runs = [failed(1, 0.0), RunOutcome("ok", failed=False, ended_at=5.0), failed(2, 10.0), failed(3, 15.0)]
    state, alerts = evaluate(AlertState(), runs, [], POLICY, now=16.0)
    assert alerts == [] and state.failed_in_a_row == 2
    state, alerts = evaluate(state, [RunOutcome("ok2", failed=False, ended_at=20.0)], [], POLICY, now=21.0)
    assert alerts == []


def test_a_check_alerts_when_it_starts_failing_and_again_only_after_passing() -> None:
    bad, good = CheckOutcome("fresh_while_pending", False, "3 items waited"), CheckOutcome("fresh_while_pending", True)
    state, alerts = evaluate(AlertState(), [], [bad], POLICY, now=0.0)
    assert kinds(alerts) == [AlertKind.CHECK_FAILED] and "3 items waited" in alerts[0].text
    for now in (300.0, 600.0):
        state, alerts = evaluate(state, [], [bad], POLICY, now=now)
        assert alerts == []
    state, alerts = evaluate(state, [], [good], POLICY, now=900.0)
    assert alerts == [] and state.failing_checks == ()
    state, alerts = evaluate(state, [], [bad], POLICY, now=1200.0)
    assert kinds(alerts) == [AlertKind.CHECK_FAILED]


def test_the_state_survives_its_json_cursor() -> None:
    state, _ = evaluate(AlertState(), [failed(1, 0.0)], [CheckOutcome("c", False)], POLICY, now=1.0)
    assert AlertState.from_json(json.loads(json.dumps(state.to_json()))) == state
    assert AlertState.from_json(None) == AlertState()


def test_bodies_for_slack_and_teams_and_for_other_receivers() -> None:
    alert = Alert(AlertKind.OUTAGE, "sync failing", {"failed_runs": 3})
    assert alert.body(BodyFormat.TEXT) == {"text": "sync failing"}
    assert alert.body(BodyFormat.PLAIN) == {"kind": "outage", "text": "sync failing", "failed_runs": 3}


def test_a_policy_needs_a_streak_and_minutes() -> None:
    with pytest.raises(ValueError, match="failed_runs"):
        AlertPolicy(failed_runs=0)
