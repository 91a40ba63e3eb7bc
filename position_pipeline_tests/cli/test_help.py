"""`position-pipeline --help` and each command's: what it lists, and that printing it imports nothing heavy."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from position_pipeline_tests.cli.command_runs import Result, heavy_modules_after_help


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param([], ["enqueue", "queue", "simulate"], id="top"),
        pytest.param(
            ["enqueue"], ["--conid", "--symbol", "--priority", "--account", "--from-file", "--lake"], id="enq"
        ),
        pytest.param(["queue"], ["import", "counts"], id="queue"),
        pytest.param(["queue", "import"], ["PATH", "--lake", "--json"], id="import"),
        pytest.param(["queue", "counts"], ["--lake", "--json"], id="counts"),
    ],
)
def test_help_of_each_command(call: Callable[..., Result], args: list[str], expected: list[str]) -> None:
    code, out, err = call(*args, "--help")

    assert (code, err) == (0, "")
    assert out.startswith("usage: position-pipeline")
    for word in expected:
        assert word in out
    if "--lake" in expected:
        assert "POSITION_LAKE_URI" in out


@pytest.mark.system
def test_help_is_fast_because_nothing_heavy_is_imported() -> None:
    assert heavy_modules_after_help(["--help"], ["enqueue", "--help"], ["queue", "import", "--help"]) == []


def test_the_cli_names_the_same_lake_variable_as_the_lake_module() -> None:
    from position_pipeline.cli import lake_option as cli
    from position_pipeline.core import lake

    assert cli.LAKE_ENV == lake.LAKE_URI_VARIABLE  # the shared lake_option constant, as the CLI uses it
