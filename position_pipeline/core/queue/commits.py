"""How the queue commits to Delta: retried on conflict, and labelled so the table history names each call.

Conflicts are expected under contention: each retry re-reads the table and picks again. deltalake 1.6.6 fails a
MERGE when a concurrent commit added a file that could match the MERGE's target-only literal conditions (even an
append declared blind: measured), so claims and marks state their status (and a claim its newest created_at) as
literals. 20 attempts, jittered backoff capped at 0.5 s: at most 7.6 s asleep in all.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from deltalake import CommitProperties
from deltalake.exceptions import CommitFailedError

logger = logging.getLogger(__name__)

T = TypeVar("T")

COMMIT_ATTEMPTS = 20
_BACKOFF_BASE_S = 0.02
_BACKOFF_CAP_S = 0.5
# delta-rs re-commits by itself at a newer version when its conflict checker finds no overlap with the commits
# that landed first; anything else raises CommitFailedError into our retry loop.
_DELTA_COMMIT_RETRIES = 15


def retry_on_conflict(operation: str, attempt: Callable[[], T], attempts: int = COMMIT_ATTEMPTS) -> T:
    """Run `attempt` (which must re-read the table) until it commits, with bounded jittered backoff.

    Every commit the pipeline makes outside the IO manager goes through this loop (queue claims and marks, upkeep);
    raises the last CommitFailedError after `attempts` tries.
    """
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except CommitFailedError as exc:
            if number == attempts:
                logger.error("%s: commit conflict, giving up after %d attempts", operation, number)
                raise
            delay = random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** (number - 1)))
            logger.info(
                "%s: commit conflict on attempt %d/%d, retrying in %.3f s: %s",
                operation,
                number,
                attempts,
                delay,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def queue_commit_properties(operation: str, run: str | None, items: int) -> CommitProperties:
    """Commit metadata that makes the table history say which queue call wrote each version."""
    metadata: dict[str, Any] = {"queue_operation": operation, "queue_items": items}
    if run is not None:
        metadata["queue_run"] = run
    return CommitProperties(custom_metadata=metadata, max_commit_retries=_DELTA_COMMIT_RETRIES)


def upkeep_commit_properties(operation: str, items: int) -> CommitProperties:
    """Commit metadata that makes each table's history say which upkeep step (archive, compact, vacuum) wrote a
    version."""
    return CommitProperties(custom_metadata={"upkeep_operation": operation, "upkeep_items": items})
