"""docs/configuration.md lists every environment variable the code location reads, and only those."""

from __future__ import annotations

import re
from pathlib import Path

import position_pipeline

PACKAGE = Path(position_pipeline.__file__).parent
DOC = PACKAGE.parent / "docs" / "configuration.md"
# A variable the code names is a quoted literal: `_env_or("IB_PORT", ...)`, `LAKE_URI_VARIABLE = "POSITION_LAKE_URI"`.
NAMED = re.compile(r"\"((?:IB|POSITION|DAGSTER)_[A-Z_]+)\"")
NOT_SETTINGS = {"DAGSTER_HOME"}  # Dagster's own; documented in the table, read by Dagster, not by a resource


def _named_in_code() -> set[str]:
    wings = [PACKAGE / "definitions.py", *(PACKAGE / wing for wing in ("core", "defs", "cli"))]
    files = [f for w in wings for f in ([w] if w.is_file() else w.rglob("*.py"))]
    return {name for f in files for name in NAMED.findall(f.read_text())} - NOT_SETTINGS


def _documented() -> set[str]:
    """The variables in the first column of the table's rows (a row may name several: `A`, `B`)."""
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def test_every_variable_the_code_reads_is_documented() -> None:
    named = _named_in_code()
    assert {"IB_PORT", "POSITION_LAKE_URI", "POSITION_ALERT_WEBHOOK_URL", "DAGSTER_RUN_RETENTION_DAYS"} <= named
    assert named - _documented() == set()


def test_every_documented_ib_or_position_variable_is_read_somewhere() -> None:
    stale = {v for v in _documented() if v.startswith(("IB_", "POSITION_"))} - _named_in_code()
    assert stale == set()
