"""One code-location name everywhere: `dagster dev -w workspace.yaml`, `dg dev` (pyproject.toml's [tool.dg]) and the
demo's `dagster dev -m` all load `position_pipeline.definitions` under that name, so the instance's schedule and
sensor state (kept by location name) survives switching between them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from position_pipeline.cli import demo

REPO = Path(__file__).resolve().parents[2]
LOCATION = "position_pipeline.definitions"


def test_workspace_yaml_and_dg_name_the_same_location_and_module() -> None:
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]
    assert len(workspace) == 1
    entry = workspace[0]["python_module"]
    assert (entry["module_name"], entry["location_name"], entry["attribute"]) == (LOCATION, LOCATION, "defs")

    dg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dg"]
    assert dg["directory_type"] == "project"
    project = dg["project"]
    assert project["root_module"] == "position_pipeline"
    assert project["code_location_target_module"] == LOCATION
    assert project["code_location_name"] == LOCATION


def test_the_demo_loads_the_module_whose_name_is_the_location_name() -> None:
    # `dagster dev -m MODULE` names the location after the module.
    assert f'"-m", "{LOCATION}"' in Path(demo.__file__).read_text()


def test_the_dg_cli_matches_the_dagster_release() -> None:
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert "dagster-dg-cli==1.13.*" in dev
    assert "dagster==1.13.*" in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
