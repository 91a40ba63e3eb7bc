"""The `--lake` option the commands share. No polars here, so `position-pipeline --help` stays fast."""

from __future__ import annotations

import argparse
import os

LAKE_ENV = "POSITION_LAKE_URI"  # = lake.LAKE_URI_VARIABLE (tested); not imported: lake pulls in polars


def lake_argument(text: str) -> str:
    """argparse type of --lake: non-empty; a local folder made absolute so printed URIs say where tables are."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text if "://" in text else os.path.abspath(text)


def resolve_lake(option: str | None) -> str:
    """The lake root: the --lake value, else $POSITION_LAKE_URI, else ./.lake; a local folder made absolute."""
    if option is None:
        from position_pipeline.core import lake

        option = lake.lake_root()
    return lake_argument(option)
