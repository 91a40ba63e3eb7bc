"""Queue depth in the UI: the sensor observes position_queue once per new version of the queue table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from position_pipeline.core.queue import PositionQueue
from position_pipeline.defs.queue_depth import queue_depth_sensor
from position_pipeline.defs.resources import LakeResource


def evaluate(instance: dg.DagsterInstance, root: str, cursor: str | None) -> dg.SensorResult | dg.SkipReason:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": LakeResource(root_uri=root)})
    return queue_depth_sensor(context)


def test_one_observation_per_queue_version_with_depth_and_age(
    root: str, queue: PositionQueue, instance: dg.DagsterInstance
) -> None:
    skipped = evaluate(instance, root, None)
    assert isinstance(skipped, dg.SkipReason) and "no queue table" in (skipped.skip_message or "")

    queue.insert_many([{"conid": c, "symbol": f"S{c}"} for c in (1, 2, 3)])
    queue.claim(None, 1, claimed_by="run-1", now=datetime.now(UTC) + timedelta(seconds=1))
    first = evaluate(instance, root, None)
    assert isinstance(first, dg.SensorResult) and len(first.asset_events) == 1
    observation = first.asset_events[0]
    assert isinstance(observation, dg.AssetObservation) and observation.asset_key == dg.AssetKey("position_queue")
    values = {k: v.value for k, v in observation.metadata.items()}
    assert values["pending"] == 2 and values["claimable"] == 2 and values["delta_version"] == queue.version()
    assert 0 <= values["oldest_pending_age_s"] < 60  # type: ignore[operator]

    unchanged = evaluate(instance, root, first.cursor)
    assert isinstance(unchanged, dg.SkipReason) and "still at version" in (unchanged.skip_message or "")

    queue.insert(4, "S4")
    second = evaluate(instance, root, first.cursor)
    assert isinstance(second, dg.SensorResult)
    assert second.asset_events[0].metadata["pending"].value == 3  # type: ignore[union-attr]
    assert second.cursor == str(queue.version())
