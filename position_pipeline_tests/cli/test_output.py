"""The shared output formatting of the commands (cli/output.py) and the time texts they use (core/time_text.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from position_pipeline.cli import output
from position_pipeline.core import time_text


def test_ages_read_at_a_glance() -> None:
    assert [output.age(s) for s in (None, 0, 42.9, 307, 3 * 3600 + 4 * 60, 2 * 86400 + 5 * 3600, -5)] == [
        "-",
        "0s",
        "42s",
        "5m07s",
        "3h04m",
        "2d05h",
        "-5s (clock skew)",
    ]
    assert time_text.iso(None) is None
    assert time_text.iso(datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "2025-01-02T03:04:05.000006Z"
    assert time_text.iso_seconds(datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "2025-01-02T03:04:05Z"
