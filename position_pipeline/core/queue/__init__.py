"""The position queue: a Delta table producers append refresh requests to and pipeline runs claim batches from.

Invariants:
- every item is in exactly one status: PENDING -> PROCESSING (claim) -> SUCCESS | FAILED, or back to PENDING
  (release); a FAILED item with attempts < max_attempts is claimable again once its `retry_after` has passed
  (exponential backoff), so FAILED -> PROCESSING too;
- an item is held by at most one run: `claim` is a Delta MERGE whose predicate re-checks that the target row is
  still claimable (PENDING, or FAILED, under max_attempts and past retry_after), and Delta's optimistic commit
  refuses it when a concurrent commit rewrote a file it read, so two claimers never both get the same item (the
  loser re-reads and picks other items);
- `attempts` counts item-level failures only (claims and releases leave it alone); `claims` counts every claim, so
  an item with claims > 1 was held by an earlier run that may already have written its result;
- a run that passes `claimed_by` only changes items it still holds, so a stale run cannot overwrite a newer claim;
- every public write is one Delta commit, and input is validated in full before anything is written.

No Dagster here: assets and producer programs call this package directly. Its modules, one job each: rules.py (the
rules every read and MERGE applies, the retry policy and the order), inputs.py and arguments.py (validation),
table.py and commits.py (the table and its commits), enqueue.py, reads.py, claims.py, legacy.py,
position_queue.py (the class that combines them), async_queue.py and group_commit.py (the asyncio API, whose
concurrent inserts share one commit), and archive.py (SUCCESS items moved to position_queue_archive
by table upkeep).
"""

from position_pipeline.core.queue.arguments import utc_or_now
from position_pipeline.core.queue.async_queue import AsyncPositionQueue
from position_pipeline.core.queue.commits import retry_on_conflict
from position_pipeline.core.queue.inputs import InputProblem, ItemInput, Progress, QueueInputError
from position_pipeline.core.queue.position_queue import PositionQueue
from position_pipeline.core.queue.reads import QueuedPosition
from position_pipeline.core.queue.rules import claimable_filter, retry_delay, sql_timestamp
from position_pipeline.core.terms import MAX_ATTEMPTS, Priority, QueueStatus

__all__ = [
    "MAX_ATTEMPTS",
    "AsyncPositionQueue",
    "InputProblem",
    "ItemInput",
    "PositionQueue",
    "Priority",
    "Progress",
    "QueueInputError",
    "QueueStatus",
    "QueuedPosition",
    "claimable_filter",
    "retry_delay",
    "retry_on_conflict",
    "sql_timestamp",
    "utc_or_now",
]
