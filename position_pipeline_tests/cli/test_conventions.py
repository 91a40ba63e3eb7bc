"""What every command shares: `--version`, `--json` as the one output option (`positions --json` is `--format json`),
and `status`'s exit code for a failed check (3), so a probe or a cron job can act on it."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

from position_pipeline.cli.errors import UNHEALTHY
from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue
from position_pipeline_tests.cli.command_runs import Result


def test_version_prints_the_installed_version(call: Callable[..., Result]) -> None:
    code, out, err = call("--version")
    assert (code, err) == (0, "")
    assert out.strip() == f"position-pipeline {version('position-pipeline')}"


def test_positions_takes_json_as_format_json(call: Callable[..., Result], lake_root: Path) -> None:
    PositionQueue(lake.table_uri(str(lake_root), lake.QUEUE_TABLE)).insert(1, "X")
    assert call("positions", "--json") == call("positions", "--format", "json")
    code, _, err = call("positions", "--json", "--format", "csv")
    assert code == 2 and "not allowed with" in err


def test_status_passes_on_a_healthy_lake_and_says_which_checks_ran(
    call: Callable[..., Result], lake_root: Path
) -> None:
    PositionQueue(lake.table_uri(str(lake_root), lake.QUEUE_TABLE)).insert(1, "X")
    code, out, _ = call("status", "--json")
    assert code == 0
    health = json.loads(out)["health"]
    assert set(health) == {"no_expired_claims", "failed_share_last_hour", "fresh_while_pending"}
    assert all(check["passed"] for check in health.values())
    code, out, _ = call("status")
    assert code == 0 and "  no_expired_claims       ok" in out


def test_status_exits_3_when_a_claim_has_expired(call: Callable[..., Result], lake_root: Path) -> None:
    queue = PositionQueue(lake.table_uri(str(lake_root), lake.QUEUE_TABLE))
    queue.insert(1, "X")
    queue.claim(None, claimed_by="a-run-that-died", now=datetime.now(UTC) - timedelta(hours=1))

    code, out, _ = call("status", "--json")
    assert code == UNHEALTHY == 3
    health = json.loads(out)["health"]
    assert health["no_expired_claims"]["passed"] is False and health["no_expired_claims"]["severity"] == "ERROR"
    code, out, _ = call("status")
    assert code == 3 and "no_expired_claims       FAILED (ERROR)" in out
