"""A failed sync step gives its run's batch back at once, and says why it failed.

Invariant: once a sync step fails, no item stays PROCESSING under its run; the sensor and the lease are only for
runs that die without running this hook (a killed worker). Giving back is safe whatever the step had done: the
run writes nothing after a failed step (one process, later steps skipped), and an item whose rows were appended
before the failure comes back with `claims` > 0, so the next run finds those rows and does not write them again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from position_pipeline.defs.resources import LakeResource


@dg.failure_hook(required_resource_keys={"lake"})
def give_back_batch(context: dg.HookContext) -> None:
    """After any failed sync step (its body, its IO manager, the hand-over): the run's claims go back to PENDING."""
    lake: LakeResource = context.resources.lake
    released = lake.queue().release_runs([context.run_id])
    if released:
        context.log.warning(
            f"{context.step_key} failed ({cause_of(context.op_exception)}): {released} items given back to the "
            "queue for the next run"
        )


@contextmanager
def failing_with_cause(what: str) -> Iterator[None]:
    """Re-raise any exception but a `dg.Failure` as `step_failure(what, exc)`."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as exc:
        raise step_failure(what, exc) from exc


def step_failure(what: str, error: BaseException) -> dg.Failure:
    """The failure of a step in which `what` raised `error`: its description names both, so the step's error says
    the cause (not only "Error occurred while executing op")."""
    return dg.Failure(
        description=f"{what} failed: {cause_of(error)}. The batch goes back to the queue for the next run."
    )


def cause_of(error: BaseException | None) -> str:
    """The exception that made a step fail, on one line: a `dg.Failure`'s description, else `Type: message` of the
    innermost exception Dagster wrapped (a failed output handling wraps the IO manager's error)."""
    while isinstance(error, dg.DagsterUserCodeExecutionError) and error.__cause__ is not None:
        error = error.__cause__
    if error is None:
        return "no exception recorded"
    text = " ".join(str(error).split())
    if isinstance(error, dg.Failure) or not text:
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}"
