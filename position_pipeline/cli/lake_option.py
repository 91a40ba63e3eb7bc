"""The `--lake` option the commands share, and the queue table under it. No polars here (the lake module and the
queue are imported when a command runs), so `position-pipeline --help` stays fast."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from position_pipeline.cli.errors import CommandError
from position_pipeline.core.terms import LAKE_URI_VARIABLE as LAKE_ENV

if TYPE_CHECKING:
    from position_pipeline.core.queue import PositionQueue


def add_lake_argument(parser: argparse.ArgumentParser, tables: str = "") -> None:
    """--lake URI on `parser`; `tables` (e.g. "; the queue is its positions/position_queue table") says what of the
    lake the command reads, in its help."""
    parser.add_argument(
        "--lake",
        metavar="URI",
        type=lake_argument,
        help=(
            f"lake root: a folder or an object-store URI such as s3://bucket/lake{tables} "
            f"(default: ${LAKE_ENV}, else .lake in the current directory)"
        ),
    )


def lake_argument(text: str) -> str:
    """argparse type of --lake: non-empty; a local folder made absolute so printed URIs say where tables are."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text if "://" in text else os.path.abspath(text)


def resolve_lake(option: str | None) -> str:
    """The lake root: the --lake value, else $POSITION_LAKE_URI, else ./.lake; a local folder made absolute.

    CommandError when a local root, the folder its tables live in, or a table's folder exists and is not a folder:
    that is no lake (no table), and reading it must not answer "no table yet" nor delta-rs' "path does not exist"."""
    from position_pipeline.core import lake

    root = lake_argument(lake.lake_root() if option is None else option)
    if lake.uri_scheme(root) in lake.LOCAL_SCHEMES:
        local = root.split("://", 1)[-1]
        for path in (local, os.path.join(local, lake.SCHEMA_NAME)):
            if os.path.exists(path) and not os.path.isdir(path):
                raise CommandError(f"the lake root {root} is not a folder: {path} is a file (--lake, {LAKE_ENV})")
        for table in (lake.QUEUE_TABLE, lake.POSITION_UPDATES_TABLE, lake.ARCHIVE_TABLE):
            path = os.path.join(local, lake.SCHEMA_NAME, table)
            if os.path.exists(path) and not os.path.isdir(path):
                raise CommandError(f"the {table} table of the lake {root} is a file, not a table's folder: {path}")
    return root


def queue_uri(option: str | None) -> str:
    """The position queue table of the lake `option` names (see `resolve_lake`)."""
    from position_pipeline.core import lake

    return lake.table_uri(resolve_lake(option), lake.QUEUE_TABLE)


def open_queue(option: str | None) -> PositionQueue:
    """The position queue of the lake `option` names; nothing touches storage until its first call, which creates
    the table if it is absent (check `table_exists` first where a command must not create it)."""
    from position_pipeline.core.queue import PositionQueue

    return PositionQueue(queue_uri(option))


def table_exists(uri: str) -> bool:
    """Whether a Delta table is at `uri` (with the lake's storage options), without creating one."""
    from deltalake import DeltaTable

    from position_pipeline.core import lake

    return DeltaTable.is_deltatable(uri, storage_options=lake.storage_options_for(uri))
