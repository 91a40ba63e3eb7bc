"""The wings' import boundaries, checked in a fresh interpreter so nothing another test imported hides a leak:
`core/` imports no Dagster and no argparse, and the simulator imports nothing of the pipeline outside itself.

The modules are found by walking the packages (pkgutil), so a new module is covered the day it is added. `__main__`
modules are left out: importing one runs its command.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from position_pipeline_tests.support import REPO

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]  # each check starts an interpreter

PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
names = [package.__name__] + [
    info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
    if info.name.rpartition(".")[2] != "__main__"
]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "modules": sorted(sys.modules)}))
"""


def import_all(package: str) -> tuple[list[str], list[str]]:
    """Import every module of `package` in a fresh interpreter: (the modules imported, all of sys.modules after)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, package], cwd=REPO, capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return found["imported"], found["modules"]


def test_core_imports_neither_dagster_nor_argparse() -> None:
    imported, modules = import_all("position_pipeline.core")
    assert "position_pipeline.core.queue" in imported  # the walk found the package's modules
    leaks = [m for m in modules if m == "argparse" or m.split(".")[0].startswith("dagster")]
    assert leaks == [], f"position_pipeline.core pulled in {leaks[:10]}"


def test_the_simulator_imports_nothing_of_the_pipeline() -> None:
    imported, modules = import_all("position_pipeline.ib_gateway_sim")
    assert "position_pipeline.ib_gateway_sim.server" in imported
    wings = ("position_pipeline.core", "position_pipeline.defs", "position_pipeline.cli")
    leaks = [m for m in modules if any(m == wing or m.startswith(wing + ".") for wing in wings)]
    assert leaks == [], f"position_pipeline.ib_gateway_sim pulled in {leaks[:10]}"
