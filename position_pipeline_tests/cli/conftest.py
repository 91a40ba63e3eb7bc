"""Fixtures of the command tests: the lake root as a Path, and `call`, the command run in this process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from position_pipeline.cli import main as cli
from position_pipeline_tests.cli.command_runs import Result


@pytest.fixture
def lake_root(root: str) -> Path:
    """The shared `root` fixture as a Path (the commands take it as --lake or POSITION_LAKE_URI)."""
    return Path(root)


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
