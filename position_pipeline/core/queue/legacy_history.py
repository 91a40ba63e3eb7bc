"""What the design note's racing workers may have left in its queue table: rows a commit deleted and nobody re-added.

The note's queue changes a status by deleting the item's row and appending it anew, two commits; a worker that dies
or loses a race between the two leaves the item deleted. Invariant of the check: an item is reported lost when a
commit removed a file holding its row, that commit added no file holding it, and the latest version has no row for
it; it is attributed to the last such commit, with the row that commit removed. Reads the transaction log's JSON
commits and the removed data files (never the latest snapshot's files twice), so it costs one read of each file the
log names, not one snapshot per version. Only local tables are checked (the note wrote them under data/lake/); a
removed file since vacuumed cannot be read, and is counted instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import polars as pl


@dataclass(frozen=True, slots=True)
class LostItem:
    """An item whose row a commit deleted and nobody re-added: its last row, from the file that commit removed."""

    version: int
    operation: str
    request_id: str
    conid: int | None
    symbol: str | None
    status: str | None
    updated_at: str | None


@dataclass(frozen=True, slots=True)
class HistoryCheck:
    """The finding of `check_history`: `checked` False when the table's log could not be read (not local)."""

    checked: bool
    first_version: int | None = None
    last_version: int | None = None
    lost: tuple[LostItem, ...] = ()
    unreadable_files: int = 0
    reason: str = ""
    versions: tuple[int, ...] = field(default=())

    @property
    def half_written(self) -> bool:
        return bool(self.lost)


def local_path(uri: str) -> Path | None:
    """The folder of a local table URI (a path or file://), None for an object store."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):  # a path, or C:\ on Windows
        return Path(uri)
    return None


def check_history(uri: str, present: Iterable[str]) -> HistoryCheck:
    """Find the items of the table at `uri` that a commit deleted and no later commit re-added; `present` are the
    request_ids of its latest version."""
    folder = local_path(uri)
    if folder is None:
        return HistoryCheck(checked=False, reason="the table is not local: its history was not checked")
    commits = _commits(folder / "_delta_log")
    if not commits:
        return HistoryCheck(checked=False, reason="the table's log holds no JSON commits")
    latest = set(present)
    # removed file -> (version, operation) of the commit that removed it
    removed_by = {path: (version, operation) for version, operation, _, removed in commits for path in removed}
    readable = [p for p in removed_by if (folder / p).is_file()]
    unreadable = len(removed_by) - len(readable)
    rows = _rows_of(folder, readable)
    added_in: dict[int, set[str]] = {}
    # A delete that keeps some of a file's rows rewrites them into a file it adds: only those commits' adds matter.
    added_files = {path: version for version, _, added, removed in commits if removed for path in added}
    for path, ids in _ids_of(folder, [p for p in added_files if (folder / p).is_file()]).items():
        added_in.setdefault(added_files[path], set()).update(ids)
    lost: dict[str, LostItem] = {}
    for row in rows:
        request_id = row["request_id"]
        version, operation = removed_by[row["file"]]
        if request_id in latest or request_id in added_in.get(version, set()):
            continue
        if request_id not in lost or lost[request_id].version <= version:
            lost[request_id] = LostItem(
                version,
                operation,
                request_id,
                row.get("conid"),
                row.get("symbol"),
                row.get("status"),
                row.get("updated_at"),
            )
    found = tuple(sorted(lost.values(), key=lambda item: (item.version, item.request_id)))
    return HistoryCheck(
        checked=True,
        first_version=commits[0][0],
        last_version=commits[-1][0],
        lost=found,
        unreadable_files=unreadable,
        versions=tuple(sorted({item.version for item in found})),
    )


def _commits(log: Path) -> list[tuple[int, str, list[str], list[str]]]:
    """(version, operation, added paths, removed paths) of each JSON commit in the log, oldest first."""
    out: list[tuple[int, str, list[str], list[str]]] = []
    for entry in sorted(log.glob("*.json"), key=lambda p: p.stem):
        if not entry.stem.isdigit():
            continue
        operation, added, removed = "", [], []
        for line in entry.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            action: dict[str, Any] = json.loads(line)
            if "add" in action:
                added.append(unquote(action["add"]["path"]))
            elif "remove" in action:
                removed.append(unquote(action["remove"]["path"]))
            elif "commitInfo" in action:
                operation = str(action["commitInfo"].get("operation", ""))
        out.append((int(entry.stem), operation, added, removed))
    return out


def _rows_of(folder: Path, paths: list[str]) -> list[dict[str, Any]]:
    """Every row of these data files, with the file it came from."""
    if not paths:
        return []
    columns = ["request_id", "conid", "symbol", "status", "updated_at"]
    frame = pl.scan_parquet([folder / p for p in paths], include_file_paths="file", missing_columns="insert")
    available = [c for c in columns if c in frame.collect_schema().names()]
    collected = frame.select([*available, "file"]).collect()
    prefix = len(str(folder)) + 1
    return [{**row, "file": row["file"][prefix:]} for row in collected.iter_rows(named=True)]


def _ids_of(folder: Path, paths: list[str]) -> dict[str, set[str]]:
    """The request_ids each of these data files holds."""
    if not paths:
        return {}
    frame = pl.scan_parquet([folder / p for p in paths], include_file_paths="file").select("request_id", "file")
    prefix = len(str(folder)) + 1
    out: dict[str, set[str]] = {}
    for request_id, file in frame.collect().iter_rows():
        out.setdefault(file[prefix:], set()).add(request_id)
    return out
