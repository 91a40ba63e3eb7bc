"""Running `position-pipeline` in the command tests: as the real command in a fresh interpreter where the process
boundary matters (exit codes, stdout/stderr, POSITION_LAKE_URI, the default lake), and what they check afterwards.
In-process calls through `cli.main` are the `call` fixture (conftest.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from position_pipeline.core import lake

SUBPROCESS_TIMEOUT_S = 60

Result = tuple[int, str, str]
"""A command's exit code, stdout and stderr."""


def queue_uri(lake_root: Path) -> str:
    return lake.table_uri(str(lake_root), lake.QUEUE_TABLE)


def run_command(*args: str, lake_root: Path | None, cwd: Path | None = None) -> Result:
    """The real command in a fresh interpreter; lake_root None leaves POSITION_LAKE_URI unset."""
    env = {k: v for k, v in os.environ.items() if k != "POSITION_LAKE_URI"}
    if lake_root is not None:
        env["POSITION_LAKE_URI"] = str(lake_root)
    done = subprocess.run(
        [sys.executable, "-m", "position_pipeline", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def steps(command: str, err: str) -> list[str]:
    """The progress lines a long command printed on stderr, without their prefix and seconds."""
    prefix = re.compile(rf"^position-pipeline {re.escape(command)}: +\d+\.\d s  (.*)$")
    lines = err.splitlines()
    matched = [prefix.match(line) for line in lines]
    assert all(matched), f"not a progress line in {lines}"
    return [m.group(1) for m in matched if m]


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def assert_nothing_written(lake_root: Path) -> None:
    assert not lake_root.exists(), f"a refused command wrote to the lake: {sorted(lake_root.rglob('*'))}"


def heavy_modules_after_help(*commands: list[str]) -> list[str]:
    """The heavy modules a fresh interpreter has imported after printing each command's help (all must exit 0)."""
    probe = (
        "import json, sys\n"
        "from position_pipeline.cli import main as cli\n"
        f"for args in {list(commands)!r}:\n"
        "    try:\n"
        "        cli.main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "heavy = ('polars', 'deltalake', 'pyarrow', 'position_pipeline.core.queue')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "print(json.dumps(heavy), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stderr)  # nothing else on stderr
