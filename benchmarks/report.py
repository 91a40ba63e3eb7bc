"""What every benchmark shares: timing both sides of a comparison in alternation, and printing and saving figures.

Each benchmark module has `run(out_dir: Path, quick: bool) -> dict` that prints a table and returns its figures;
`python -m benchmarks all` runs them in turn and writes each to `<out_dir>/<name>.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def seconds(action: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def alternate(sides: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Time each side once per round, the sides in turn, so that a noisy machine slows both alike."""
    timings: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, action in sides.items():
            timings[name].append(seconds(action))
    return timings


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method: a value that was measured, never interpolated."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, 95th percentile and extremes of a list of timings, in seconds."""
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": percentile(values, 95),
        "min": min(values),
        "max": max(values),
    }


def own_peak_rss_mb() -> float:
    """Peak resident memory in MB of this process since it was exec'd (Linux VmHWM).

    For a child process measuring itself: its ru_maxrss also counts the parent's resident memory at fork time (the
    kernel carries the pre-exec high-water mark over), and so does RUSAGE_CHILDREN in the parent.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def machine() -> dict[str, Any]:
    """Where the figures came from."""
    import os

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = [title, "  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row, raw in zip(cells, rows, strict=True):
        lines.append(
            "  ".join(
                c.rjust(w) if isinstance(v, int | float) else c.ljust(w)
                for c, v, w in zip(row, raw, widths, strict=True)
            )
        )
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


DEFAULT_OUT = Path("benchmarks/results")


def command(name: str, run: Callable[[Path, bool], dict[str, Any]], doc: str | None, quick: str) -> None:
    """`python -m benchmarks.<name> [--out DIR] [--quick]`: run one benchmark and save its figures."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON figures")
    parser.add_argument("--quick", action="store_true", help=quick)
    args = parser.parse_args()
    print(f"figures written to {save(args.out, name, run(args.out, args.quick))}")


def save(out_dir: Path, name: str, figures: dict[str, Any]) -> Path:
    """Write one benchmark's figures, with the machine they ran on, to `<out_dir>/<name>.json`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **figures}, indent=2, default=str) + "\n")
    return path


def verdict(value: float, target: float, *, below: bool = True) -> str:
    """'met' or 'missed by N%' against a target (below it, or at least it when below=False)."""
    met = value < target if below else value >= target
    if met:
        return "met"
    return f"missed by {abs(value - target) / target:.0%}"
