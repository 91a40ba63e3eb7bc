"""Keeps a trading desk's record of brokerage positions current in Delta Lake, polled from Interactive Brokers.

Producers import the queue from here: `from position_pipeline import AsyncPositionQueue` (asyncio) or
`PositionQueue` (blocking), with `QueuedPosition` (what `get_batch` returns) and `QueueStatus`, as the design note
imports them. They load on first use, so importing the package (the CLI, the simulator) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from position_pipeline.core.queue import AsyncPositionQueue, PositionQueue, QueuedPosition
    from position_pipeline.core.terms import QueueStatus

__all__ = ["AsyncPositionQueue", "PositionQueue", "QueueStatus", "QueuedPosition"]

_EXPORTS = {
    "AsyncPositionQueue": "position_pipeline.core.queue",
    "PositionQueue": "position_pipeline.core.queue",
    "QueuedPosition": "position_pipeline.core.queue",
    "QueueStatus": "position_pipeline.core.terms",
}


def __getattr__(name: str) -> Any:
    """The exported classes, imported when first asked for (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
