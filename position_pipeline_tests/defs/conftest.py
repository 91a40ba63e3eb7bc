"""Fixtures this tier's table tests share: a lake root under tmp_path and its queue."""

from position_pipeline_tests.support.lake_tables import queue, root

__all__ = ["queue", "root"]
