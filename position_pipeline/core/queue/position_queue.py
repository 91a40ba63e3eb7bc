"""`PositionQueue`: the queue's whole public API, put together from the modules that each do one job."""

from __future__ import annotations

from types import TracebackType

from position_pipeline.core.queue.claims import QueueClaims
from position_pipeline.core.queue.enqueue import QueueEnqueue
from position_pipeline.core.queue.legacy import LegacyImport
from position_pipeline.core.queue.reads import QueueReads
from position_pipeline.core.queue.takeover import QueueTakeover


class PositionQueue(QueueEnqueue, QueueReads, QueueClaims, QueueTakeover, LegacyImport):
    """The `position_queue` Delta table, safe to use from many processes at once.

    Producers (enqueue.py), readers (reads.py), the pipeline's claims, marks and releases (claims.py) and the legacy
    import (legacy.py) and a re-execution's take-over of its parent's batch (takeover.py), over one table handle
    (table.py). Nothing touches storage until the first call, and the first
    call creates the table if it is absent, so building a queue at Dagster definition load costs nothing.
    `storage_options` None: those `lake.storage_options_for` gives for the table's URI (none for a local folder;
    AWS_* variables for s3://).
    """

    def initialize(self) -> None:
        """Open the table, creating it when absent, and check its schema: the design note's first call, as
        `AsyncPositionQueue.initialize`. Optional: every other call does the same on first use."""
        self.version()

    def __enter__(self) -> PositionQueue:
        self.initialize()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        """Nothing to flush: every call of the blocking queue has committed before it returns."""
