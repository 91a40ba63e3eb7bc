"""Run benchmarks: `python -m benchmarks all [--out DIR] [--quick]`, or name some: `python -m benchmarks growth`.

Each benchmark module has `run(out_dir, quick) -> dict`; its figures go to `<out_dir>/<name>.json` with the machine
they ran on. Modules are imported only when their turn comes (each pulls in Dagster, polars or the simulator), but
every name asked for is checked first, so a missing module is reported before anything runs. A benchmark that fails
does not stop the others; the command then exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import report

NAMES = (
    "batch_cost",
    "backlog_drain",
    "queue_scale",
    "freshness",
    "growth",
    "positions_read",
    "producers",
    "simulator",
    "desk",
    "written_check",
)
"""Every benchmark, in the order `all` runs them."""


def missing(names: list[str]) -> list[str]:
    """The names that have no module `benchmarks.<name>`."""
    return [name for name in names if importlib.util.find_spec(f"benchmarks.{name}") is None]


def run_one(name: str, out_dir: Path, quick: bool) -> dict[str, Any]:
    """Import `benchmarks.<name>`, run it and save its figures (with how long it took)."""
    module = importlib.import_module(f"benchmarks.{name}")
    if not callable(getattr(module, "run", None)):
        raise TypeError(f"benchmarks.{name} has no run(out_dir, quick) function")
    started = time.perf_counter()
    figures = dict(module.run(out_dir, quick))
    figures["elapsed_s"] = round(time.perf_counter() - started, 1)
    path = report.save(out_dir, name, figures)
    print(f"{name}: {figures['elapsed_s']:.0f} s, figures in {path}\n", flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"'all' or any of: {', '.join(NAMES)}")
    parser.add_argument("--out", type=Path, default=report.DEFAULT_OUT, help="folder for the JSON figures")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller sizes: a check that all run")
    args = parser.parse_args(argv)

    names = list(NAMES) if args.names == ["all"] else list(dict.fromkeys(args.names))
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose 'all' or from {', '.join(NAMES)}")
    absent = missing(names)
    if absent:
        parser.error(f"no module for {', '.join(f'benchmarks/{n}.py' for n in absent)}: nothing was run")

    started = time.perf_counter()
    outcomes: list[list[object]] = []
    for name in names:
        print(f"== {name}{' (quick)' if args.quick else ''}", flush=True)
        begun = time.perf_counter()
        try:
            run_one(name, args.out, args.quick)
            outcomes.append([name, time.perf_counter() - begun, "ok"])
        except Exception as exc:  # one benchmark's failure must not hide the others' figures
            traceback.print_exc()
            outcomes.append([name, time.perf_counter() - begun, f"FAILED: {type(exc).__name__}: {exc}"[:100]])
    total = time.perf_counter() - started
    print(report.table("Benchmarks", ["benchmark", "seconds", "result"], outcomes))
    print(f"total elapsed: {total:.0f} s ({total / 60:.1f} min); figures in {args.out}/")
    return 1 if any(outcome[2] != "ok" for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
