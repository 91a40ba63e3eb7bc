"""What producers give the queue, checked in full before anything is written: items and CSV files of items.

Every parser returns a value or raises FieldError; the callers collect those as InputProblems (every invalid field,
not just the first) and raise one QueueInputError, so a refused input writes nothing.
"""

from __future__ import annotations

import csv
import numbers
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from position_pipeline.core.terms import Priority
from position_pipeline.core.text_input import control_characters, parse_ascii_int

Progress = Callable[[str], None]
"""Hears one line at each step of a long operation (a large CSV, an import): the command prints them."""
PROGRESS_EVERY = 100_000
"""Rows read between two progress lines of a CSV enqueue."""

_INT64_MAX = 2**63 - 1
_ACCOUNT = re.compile(r"[A-Za-z0-9]+")
_ITEM_FIELDS = ("conid", "symbol", "priority", "account")
_MAX_PROBLEMS_SHOWN = 10


@dataclass(frozen=True, slots=True)
class InputProblem:
    """One invalid field of one input row.

    `row` is the 0-based index of the item (for a CSV, of the data row; None for the header or a missing column),
    `line` the 1-based line of a CSV file.
    """

    row: int | None
    field: str
    problem: str
    line: int | None = None

    def __str__(self) -> str:
        if self.row is None:
            where = "input" if self.line is None else f"line {self.line}"
        else:
            where = f"row {self.row}" if self.line is None else f"row {self.row} (line {self.line})"
        return f"{where}: {self.field}: {self.problem}"


class QueueInputError(ValueError):
    """Input the queue refuses; raised before any write, so the table is unchanged."""

    def __init__(self, problems: Sequence[InputProblem]) -> None:
        self.problems = tuple(problems)
        shown = "; ".join(str(p) for p in self.problems[:_MAX_PROBLEMS_SHOWN])
        more = len(self.problems) - _MAX_PROBLEMS_SHOWN
        suffix = f"; and {more} more" if more > 0 else ""
        super().__init__(f"invalid queue input, nothing written: {shown}{suffix}")

    @property
    def row(self) -> int | None:
        """Index of the first invalid row (None when the problem is the header or the table's columns)."""
        return self.problems[0].row

    @property
    def field(self) -> str:
        """Field of the first problem."""
        return self.problems[0].field

    @property
    def line(self) -> int | None:
        """CSV line of the first problem, when the input was a CSV file."""
        return self.problems[0].line


ItemInput = Mapping[str, Any] | Sequence[Any]
"""A producer's item: {"conid": ..., "symbol": ...[, "priority": ...][, "account": ...]} or
(conid, symbol[, priority[, account]])."""


class Item(NamedTuple):
    """One validated producer item."""

    conid: int
    symbol: str
    priority: int
    account: str | None


class FieldError(Exception):
    """One invalid field, raised by a parser; the caller records it as an InputProblem with the row and line."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


def _parse_int(field: str, value: Any) -> int:
    """An integer from an int or a string of ASCII digits (a CSV cell, a flag: `text_input.parse_ascii_int`); floats
    and bools are refused rather than truncated."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise FieldError(field, "is missing")
    if isinstance(value, bool):
        raise FieldError(field, f"must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        try:
            return parse_ascii_int(value)
        except ValueError as exc:
            raise FieldError(field, str(exc)) from None
    raise FieldError(field, f"must be an integer, got {value!r}")


def _parse_conid(value: Any) -> int:
    conid = _parse_int("conid", value)
    if conid <= 0:
        raise FieldError("conid", f"must be positive, got {conid}")
    if conid > _INT64_MAX:
        raise FieldError("conid", f"does not fit in int64, got {conid}")
    return conid


def _parse_symbol(value: Any) -> str:
    if value is None:
        raise FieldError("symbol", "is missing")
    if not isinstance(value, str):
        raise FieldError("symbol", f"must be a string, got {value!r}")
    symbol = value.strip()  # surrounding whitespace is dropped; what is kept holds no control character
    if not symbol:
        raise FieldError("symbol", "must not be blank")
    _refuse_control_characters("symbol", symbol)
    return symbol


def _refuse_control_characters(field: str, value: str) -> None:
    """Stored text never holds a control character: a terminal would act on it when status prints it."""
    found = control_characters(value)
    if found:
        raise FieldError(field, f"must not contain control characters, found {', '.join(found)} in {value!r}")


def _parse_priority(value: Any) -> int:
    """1 (active) or 2 (monitoring); a missing priority means monitoring, as in the design note."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return int(Priority.MONITORING)
    priority = _parse_int("priority", value)
    if priority not in set(Priority):
        raise FieldError("priority", f"must be 1 (active) or 2 (monitoring), got {priority}")
    return priority


def _parse_account(value: Any) -> str | None:
    """An IB account code (letters and digits, e.g. DU1000001), or None for any account; never stripped or guessed."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise FieldError("account", f"must be a string, got {value!r}")
    _refuse_control_characters("account", value)
    if not _ACCOUNT.fullmatch(value):
        raise FieldError("account", f"must be letters and digits only (e.g. DU1000001), got {value!r}")
    return value


_ITEM_SHAPE = "(conid, symbol[, priority[, account]])"


def _item_fields(item: Any) -> dict[str, Any]:
    """The item's conid/symbol/priority/account values, unparsed; refuses shapes and keys the queue does not know."""
    if isinstance(item, Mapping):
        unknown = [k for k in item if k not in _ITEM_FIELDS]
        if unknown:
            raise FieldError(str(unknown[0]), f"is not a queue field (expected {', '.join(_ITEM_FIELDS)})")
        return {name: item.get(name) for name in _ITEM_FIELDS}
    if isinstance(item, Sequence) and not isinstance(item, str | bytes):
        if not 2 <= len(item) <= len(_ITEM_FIELDS):
            raise FieldError("item", f"expected {_ITEM_SHAPE}, got {len(item)} values")
        return dict(zip(_ITEM_FIELDS, item, strict=False))
    raise FieldError("item", f"expected a dict or a {_ITEM_SHAPE} tuple, got {type(item).__name__}")


_PARSERS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("conid", _parse_conid),
    ("symbol", _parse_symbol),
    ("priority", _parse_priority),
    ("account", _parse_account),
)


def validate_row(row: int, fields: Mapping[str, Any], line: int | None, problems: list[InputProblem]) -> Item | None:
    """Parse one item's fields, recording every invalid field (not just the first)."""
    parsed: dict[str, Any] = {}
    for name, parse in _PARSERS:
        try:
            parsed[name] = parse(fields.get(name))
        except FieldError as exc:
            problems.append(InputProblem(row, exc.field, exc.problem, line))
    if len(parsed) < len(_PARSERS):
        return None
    return Item(**parsed)


def validate_items(items: Iterable[ItemInput]) -> tuple[list[Item], list[InputProblem]]:
    if isinstance(items, Mapping | str | bytes):
        raise TypeError("insert_many takes an iterable of items; use insert() for a single item")
    rows: list[Item] = []
    problems: list[InputProblem] = []
    for index, item in enumerate(items):
        try:
            fields = _item_fields(item)
        except FieldError as exc:
            problems.append(InputProblem(index, exc.field, exc.problem))
            continue
        parsed = validate_row(index, fields, None, problems)
        if parsed is not None:
            rows.append(parsed)
    return rows, problems


def read_csv_items(path: str | os.PathLike[str], progress: Progress) -> tuple[list[Item], list[InputProblem]]:
    """Validated rows of a `conid,symbol[,priority][,account]` CSV; rows count from 0 after the header, lines from 1.

    A blank account cell means any account (null); a blank priority cell means monitoring.
    """
    rows: list[Item] = []
    problems: list[InputProblem] = []
    check_regular_file(path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return rows, [InputProblem(None, "header", f"file is empty; expected {_CSV_HEADER}", 1)]
        columns = [c.strip().lower() for c in header]
        for name in ("conid", "symbol"):
            if name not in columns:
                problems.append(InputProblem(None, name, "column is missing from the header", 1))
        for position, name in enumerate(columns):
            if name not in _ITEM_FIELDS:
                problems.append(InputProblem(None, name or "header", "is not a queue column", 1))
            elif name in columns[:position]:
                problems.append(InputProblem(None, name, "column is repeated", 1))
        if problems:
            return rows, problems
        index = 0
        start = reader.line_num + 1
        for record in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if len(record) > len(columns):
                problems.append(
                    InputProblem(index, "row", f"has {len(record)} fields, header has {len(columns)}", line)
                )
            else:
                cells: dict[str, Any] = dict(zip(columns, record, strict=False))
                if not (cells.get("account") or "").strip():
                    cells["account"] = None
                parsed = validate_row(index, cells, line, problems)
                if parsed is not None:
                    rows.append(parsed)
            index += 1
            if index % PROGRESS_EVERY == 0:
                progress(f"read {index:,} rows (line {line:,})" + (f", {len(problems):,} bad" if problems else ""))
    return rows, problems


_CSV_HEADER = "conid,symbol[,priority][,account]"

_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class NotARegularFile(ValueError):
    """An input path that is not a regular file: opening a FIFO blocks, a device never ends."""


def check_regular_file(path: str | os.PathLike[str]) -> None:
    """Refuse, before opening it, a path that is not a regular file (after symlinks); OSError if it is absent."""
    mode = os.stat(path).st_mode
    for test, what in _NOT_REGULAR:
        if test(mode):
            raise NotARegularFile(f"{os.fspath(path)} is {what}, not a regular file: nothing written")
    if not stat.S_ISREG(mode):
        raise NotARegularFile(f"{os.fspath(path)} is not a regular file: nothing written")


def silent(message: str) -> None:
    """The progress report of a caller that did not ask for one."""
