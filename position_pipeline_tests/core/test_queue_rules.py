"""The queue's rules: each predicate's polars form and SQL form select the same rows of a real Delta table (every
status, attempts and retry_after edge, times equal to the bound and a microsecond either side), and the retry policy."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from position_pipeline.core import lake
from position_pipeline.core.queue import retry_delay, rules
from position_pipeline.core.terms import QueueStatus

NOW = datetime(2030, 1, 2, 9, 30, tzinfo=UTC)
US = timedelta(microseconds=1)
EDGES = (NOW - US, NOW, NOW + US)
"""Every time column takes each of these values in some row: just before, at and just after the bounds tested."""
RUNS = (None, "run-a", "run-b", "run-'quoted")


def _edge_rows() -> list[dict[str, Any]]:
    """Every status x attempts x retry_after x claimed_by, with created_at, updated_at and claimed_at cycling through
    the edges at different strides so that each time column meets each bound in every status."""
    rows = []
    combos = itertools.product(QueueStatus, (0, 2, 3), (None, *EDGES), RUNS)
    for n, (status, attempts, retry_after, run) in enumerate(combos):
        rows.append(
            {
                "request_id": f"r{n:03d}",
                "conid": n + 1,
                "symbol": "S",
                "account": None,
                "priority": 1 + n % 2,
                "status": status.value,
                "created_at": EDGES[n % 3],
                "updated_at": EDGES[(n // 3) % 3],
                "error_message": None,
                "attempts": attempts,
                "claims": 0,
                "retry_after": retry_after,
                "claimed_by": run,
                "claimed_at": None if run is None else EDGES[(n // 2) % 3],
            }
        )
    return rows


@pytest.fixture(scope="module")
def edge_table(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = str(tmp_path_factory.mktemp("rules") / "queue")
    frame = pl.DataFrame(_edge_rows(), schema=lake.QUEUE_SCHEMA)
    write_deltalake(uri, frame.to_arrow().cast(lake.QUEUE_ARROW_SCHEMA))
    return uri


RULES = [
    pytest.param(rules.claimable(NOW, 3), id="claimable"),
    pytest.param(rules.claimable(NOW, 1), id="claimable-max-1"),
    pytest.param(rules.claimable(NOW - US, 3), id="claimable-1us-earlier"),
    pytest.param(rules.claimable(NOW + US, 4), id="claimable-1us-later-max-4"),
    pytest.param(rules.status_in(QueueStatus.PENDING), id="status-pending"),
    pytest.param(rules.status_in(QueueStatus.PROCESSING, QueueStatus.FAILED), id="status-in-two"),
    pytest.param(rules.held_by("run-a"), id="held-by"),
    pytest.param(rules.held_by("run-'quoted"), id="held-by-quoted-run"),
    pytest.param(rules.claimed_before(NOW), id="claimed-before"),
    pytest.param(rules.claimed_before(None), id="claimed-before-none"),
    pytest.param(rules.failed_since(NOW), id="failed-since"),
    pytest.param(rules.failed_since(None), id="failed-since-none"),
    pytest.param(rules.succeeded_before(NOW), id="succeeded-before"),
    pytest.param(rules.queued_between(NOW, NOW + US), id="queued-window"),
    pytest.param(rules.queued_between(None, NOW), id="queued-before"),
    pytest.param(rules.with_priority(1), id="priority"),
    pytest.param(rules.with_priority(None), id="any-priority"),
    pytest.param(
        rules.with_priority(2) & rules.claimable(NOW, 3) & rules.queued_between(NOW - US, NOW + US),
        id="claim-scan",
    ),
    pytest.param(
        rules.claimable(NOW, 3) & rules.queued_between(NOW, None) & rules.Compare("created_at", "<=", NOW),
        id="claim-guard",
    ),
]


@pytest.mark.parametrize("rule", RULES)
def test_polars_and_sql_forms_select_the_same_rows(edge_table: str, rule: rules.Rule) -> None:
    by_polars = set(pl.scan_delta(edge_table).filter(rule.expr()).select("request_id").collect()["request_id"])

    # The SQL form as the queue uses it: the guard of a MERGE joined on request_id, here marking what it matches.
    dt = DeltaTable(edge_table)
    ids = pl.scan_delta(dt).select("request_id").collect()
    tag = f"hit-{dt.version()}"
    metrics = (
        dt.merge(
            ids.to_arrow(),
            predicate=rules.merge_predicate(rule, "request_id"),
            source_alias=rules.SOURCE,
            target_alias=rules.TARGET,
            streamed_exec=False,
        )
        .when_matched_update({"symbol": f"'{tag}'"})
        .execute()
    )
    marked = pl.scan_delta(DeltaTable(edge_table)).filter(pl.col("symbol") == tag).collect()["request_id"]

    assert set(marked) == by_polars
    assert metrics["num_target_rows_updated"] == len(by_polars)
    assert 0 < len(by_polars) < ids.height or rule == rules.EVERY_ROW, "each rule must split the edge rows"


def test_claimable_sql_states_its_literals() -> None:
    """delta-rs checks a MERGE's conflicts against its literals: the claim states status, attempts and time."""
    at = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert rules.claimable(at, 3).sql() == (
        "t.status = 'PENDING' OR (t.status = 'FAILED' AND t.attempts < 3 "
        "AND t.retry_after <= '2030-01-02T03:04:05.678901Z')"
    )
    guard = rules.claimable(at, 3) & rules.Compare("created_at", "<=", at)
    assert rules.merge_predicate(guard, "request_id") == (
        "(t.status = 'PENDING' OR (t.status = 'FAILED' AND t.attempts < 3 AND t.retry_after <= "
        "'2030-01-02T03:04:05.678901Z')) AND t.created_at <= '2030-01-02T03:04:05.678901Z' "
        "AND t.request_id = s.request_id"
    )
    assert rules.merge_predicate(rules.EVERY_ROW, "request_id", "claimed_by") == (
        "t.request_id = s.request_id AND t.claimed_by = s.claimed_by"
    )
    assert rules.status_in(QueueStatus.PROCESSING, QueueStatus.FAILED).sql() == "t.status IN ('PROCESSING', 'FAILED')"


def test_sql_literals_are_quoted_or_refused() -> None:
    assert rules.sql_literal("it's") == "'it''s'"
    assert rules.sql_literal(7) == "7"
    assert rules.sql_literal(datetime.fromisoformat("2030-01-02T05:30:00-05:00")) == "'2030-01-02T10:30:00.000000Z'"
    for bad in (True, 1.5, datetime(2030, 1, 2)):
        with pytest.raises(TypeError):
            rules.sql_literal(bad)  # type: ignore[arg-type]


def test_retry_delay_doubles_and_is_capped() -> None:
    assert [retry_delay(n) for n in range(3)] == [timedelta(seconds=s) for s in (30, 60, 120)]
    assert retry_delay(6) == timedelta(seconds=1920)
    assert retry_delay(7) == retry_delay(500) == retry_delay(10**6) == timedelta(hours=1)  # no overflow
    short = {"backoff": timedelta(seconds=10), "max_backoff": timedelta(seconds=25)}
    assert [retry_delay(n, **short) for n in range(4)] == [timedelta(seconds=s) for s in (10, 20, 25, 25)]
    with pytest.raises(ValueError):
        retry_delay(-1)
