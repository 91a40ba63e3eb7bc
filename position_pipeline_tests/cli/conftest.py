"""Fixtures of the command tests: a lake under tmp_path, its queue, and `call`, the command run in this process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from position_pipeline.cli import main as cli
from position_pipeline.core.queue import PositionQueue
from position_pipeline_tests.cli.command_runs import Result, queue_uri


@pytest.fixture
def lake_root(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def uri(lake_root: Path) -> str:
    return queue_uri(lake_root)


@pytest.fixture
def queue(uri: str) -> PositionQueue:
    return PositionQueue(uri)


@pytest.fixture
def call(lake_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """`cli.main(args)` in this process with POSITION_LAKE_URI set to the test's lake; returns (code, out, err)."""
    monkeypatch.setenv("POSITION_LAKE_URI", str(lake_root))

    def invoke(*args: str) -> Result:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            cli.main(list(args))
        out, err = capsys.readouterr()
        code = exited.value.code
        return (code if isinstance(code, int) else (0 if code is None else 1)), out, err

    return invoke
