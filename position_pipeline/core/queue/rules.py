"""The queue's rules, each written once: which rows a call may take or change, the retry policy and the order.

A rule is a small tree of terms (`Compare`, `IsIn`, `All`, `Either`, `EVERY_ROW`) that renders to a polars
expression (reads: `rule.expr()`) and to a Delta SQL predicate on the MERGE target `t` (writes: `rule.sql()`), so
a read and the MERGE that re-checks it on the row it rewrites can never disagree. SQL literals come from our own
values only (enum members, ints, aware datetimes); strings are quoted with any `'` doubled. Both forms follow SQL's
three-valued logic: a comparison with a null column is unknown, and an unknown row is not selected.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import polars as pl

from position_pipeline.core.terms import Priority, QueueStatus

TARGET = "t"
"""The MERGE target's alias: every rule's SQL names its columns `t.<column>`."""
SOURCE = "s"
"""The MERGE source's alias."""

QUEUE_ORDER = ["priority", "created_at", "request_id"]
"""The order items are claimed and listed in: active before monitoring, then oldest first (request_id breaks ties)."""

# A failed item waits backoff * 2**attempts (capped) before it is claimable again: 30 s, 1 min, 2 min, ... 1 h.
RETRY_BACKOFF = timedelta(seconds=30)
RETRY_MAX_BACKOFF = timedelta(hours=1)
_MICROSECOND = timedelta(microseconds=1)

Operator = Literal["=", "<", "<=", ">=", ">"]
_POLARS_OPERATORS: dict[Operator, Callable[[pl.Expr, Any], pl.Expr]] = {
    "=": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">=": operator.ge,
    ">": operator.gt,
}


class Rule:
    """A predicate over one queue row, rendered to polars and to SQL from the same terms."""

    def expr(self) -> pl.Expr:
        """The predicate as a polars expression over the table's columns."""
        raise NotImplementedError

    def sql(self) -> str:
        """The predicate as a Delta SQL condition on the MERGE target (`t.<column>`), literals only."""
        raise NotImplementedError

    def __and__(self, other: Rule) -> Rule:
        return All((self, other))


@dataclass(frozen=True, slots=True)
class Compare(Rule):
    """`column <op> value` for one literal value."""

    column: str
    op: Operator
    value: str | int | datetime

    def expr(self) -> pl.Expr:
        return _POLARS_OPERATORS[self.op](pl.col(self.column), self.value)

    def sql(self) -> str:
        return f"{TARGET}.{self.column} {self.op} {sql_literal(self.value)}"


@dataclass(frozen=True, slots=True)
class IsIn(Rule):
    """`column` equal to one of `values` (at least one)."""

    column: str
    values: tuple[str | int, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError(f"IsIn({self.column!r}) needs at least one value")

    def expr(self) -> pl.Expr:
        if len(self.values) == 1:
            return pl.col(self.column) == self.values[0]
        return pl.col(self.column).is_in(list(self.values))

    def sql(self) -> str:
        if len(self.values) == 1:
            return f"{TARGET}.{self.column} = {sql_literal(self.values[0])}"
        return f"{TARGET}.{self.column} IN ({', '.join(sql_literal(v) for v in self.values)})"


@dataclass(frozen=True, slots=True)
class All(Rule):
    """Every term holds; nested `All`s flatten, so the SQL is one run of ANDs."""

    terms: tuple[Rule, ...]

    def __post_init__(self) -> None:
        flat: list[Rule] = []
        for term in self.terms:
            flat.extend(term.terms if isinstance(term, All) else (term,))
        object.__setattr__(self, "terms", tuple(flat))

    def expr(self) -> pl.Expr:
        if not self.terms:
            return pl.lit(True)
        combined = self.terms[0].expr()
        for term in self.terms[1:]:
            combined = combined & term.expr()
        return combined

    def sql(self) -> str:
        if not self.terms:
            return "TRUE"
        return " AND ".join(f"({t.sql()})" if isinstance(t, Either) else t.sql() for t in self.terms)


@dataclass(frozen=True, slots=True)
class Either(Rule):
    """At least one term holds."""

    terms: tuple[Rule, ...]

    def expr(self) -> pl.Expr:
        combined = self.terms[0].expr()
        for term in self.terms[1:]:
            combined = combined | term.expr()
        return combined

    def sql(self) -> str:
        return " OR ".join(f"({t.sql()})" if isinstance(t, All | Either) else t.sql() for t in self.terms)


EVERY_ROW: Rule = All(())
"""The rule that holds for every row (no condition)."""


def sql_literal(value: str | int | datetime) -> str:
    """A SQL literal for one of our own values: a quoted string, an integer, or a UTC timestamp."""
    if isinstance(value, datetime):
        return f"'{sql_timestamp(value)}'"
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"expected a string, an int or an aware datetime, got {value!r}")
    if isinstance(value, int):
        return str(int(value))
    return "'{}'".format(value.replace("'", "''"))


def sql_timestamp(value: object) -> str:
    """A UTC timestamp literal with microseconds, as DataFusion compares it against a `timestamp` column."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise TypeError(f"expected an aware datetime, got {value!r}")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# The rules the queue uses.


def status_in(*statuses: QueueStatus) -> Rule:
    """Rows in one of these statuses."""
    return IsIn("status", tuple(QueueStatus(s).value for s in statuses))


def claimable(at: datetime, max_attempts: int) -> Rule:
    """Rows `claim` may take at `at`: PENDING, or FAILED under `max_attempts` and past retry_after.

    A FAILED row with no retry_after (a legacy import) is not claimable: the comparison with null is unknown.
    """
    return Either(
        (
            status_in(QueueStatus.PENDING),
            All(
                (
                    status_in(QueueStatus.FAILED),
                    Compare("attempts", "<", int(max_attempts)),
                    Compare("retry_after", "<=", at),
                )
            ),
        )
    )


def claimable_filter(at: datetime, max_attempts: int) -> pl.Expr:
    """`claimable` as a polars expression, for readers outside the queue (the health checks)."""
    return claimable(at, max_attempts).expr()


def with_priority(priority: int | None) -> Rule:
    """Rows of `priority`, or every row for None."""
    return EVERY_ROW if priority is None else Compare("priority", "=", int(Priority(priority)))


def queued_between(queued_from: datetime | None, queued_before: datetime | None) -> Rule:
    """Rows created at or after `queued_from` and before `queued_before` (either bound optional): a partition."""
    terms: list[Rule] = []
    if queued_from is not None:
        terms.append(Compare("created_at", ">=", queued_from))
    if queued_before is not None:
        terms.append(Compare("created_at", "<", queued_before))
    return All(tuple(terms))


def held_by(claimed_by: str) -> Rule:
    """Rows run `claimed_by` still holds: PROCESSING under its claim."""
    return status_in(QueueStatus.PROCESSING) & Compare("claimed_by", "=", claimed_by)


def claimed_before(cutoff: datetime | None) -> Rule:
    """PROCESSING rows claimed before `cutoff` (every PROCESSING row for None): claims old enough to give back."""
    processing = status_in(QueueStatus.PROCESSING)
    return processing if cutoff is None else processing & Compare("claimed_at", "<", cutoff)


def failed_since(since: datetime | None) -> Rule:
    """FAILED rows that failed at or after `since` (their updated_at), every FAILED row for None."""
    failed = status_in(QueueStatus.FAILED)
    return failed if since is None else failed & Compare("updated_at", ">=", since)


def succeeded_before(cutoff: datetime) -> Rule:
    """SUCCESS rows last updated before `cutoff`: what table upkeep moves to the archive."""
    return status_in(QueueStatus.SUCCESS) & Compare("updated_at", "<", cutoff)


def merge_predicate(guard: Rule, *joined_on: str) -> str:
    """A MERGE predicate: the target-only `guard` first (delta-rs checks conflicts against its literals), then
    `t.<column> = s.<column>` for each column that ties a target row to its source row."""
    guarded = [] if guard == EVERY_ROW else [All((guard,)).sql()]  # an Either in parentheses
    return " AND ".join([*guarded, *(f"{TARGET}.{c} = {SOURCE}.{c}" for c in joined_on)])


def retry_delay(
    attempts_before: int, backoff: timedelta = RETRY_BACKOFF, max_backoff: timedelta = RETRY_MAX_BACKOFF
) -> timedelta:
    """How long an item that had failed `attempts_before` times waits after this failure: backoff * 2**n, capped."""
    if attempts_before < 0:
        raise ValueError(f"attempts_before must not be negative, got {attempts_before}")
    # In whole microseconds: backoff * 2**n overflows timedelta (and a float) long before n reaches an int32's range.
    base, cap = backoff // _MICROSECOND, max_backoff // _MICROSECOND
    if base <= 0:
        return timedelta(0)
    if attempts_before >= cap.bit_length() or base << attempts_before >= cap:
        return max_backoff
    return backoff * 2**attempts_before
