"""Simulated gateway throughput: reqPositions on a 10,000-position account, and 200 clients connecting at once.

Run: `python -m benchmarks.simulator [--repeat 5] [--json FILE]`. Target: reqPositions of 10,000 under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from ib_async import IB, StartupFetch

from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread, SimulatedGateway


async def _positions_seconds(port: int, repeat: int) -> list[float]:
    ib = IB()
    await ib.connectAsync("127.0.0.1", port, clientId=1, readonly=True, timeout=30, fetchFields=StartupFetch(0))
    try:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            positions = await asyncio.wait_for(ib.reqPositionsAsync(), 60)
            times.append(time.perf_counter() - start)
            assert len(positions) == 10_000
        return times
    finally:
        ib.disconnect()


async def _concurrent_clients_seconds(port: int, clients: int) -> float:
    async def one(client_id: int) -> None:
        ib = IB()
        await ib.connectAsync("127.0.0.1", port, clientId=client_id, readonly=True, timeout=60)
        await asyncio.wait_for(ib.reqPositionsAsync(), 60)
        ib.disconnect()

    start = time.perf_counter()
    await asyncio.gather(*(one(1000 + i) for i in range(clients)))
    return time.perf_counter() - start


def measure(repeat: int, clients: int) -> dict[str, Any]:
    """Time reqPositions of 10,000 positions `repeat` times, then `clients` clients connecting at once."""
    big = GatewayState.generate(positions=10_000, accounts=1, seed=1)
    with GatewayThread(lambda: SimulatedGateway(big, port=0, price_interval=None)) as sim:
        times = asyncio.run(_positions_seconds(sim.port, repeat))
    small = GatewayState.generate(positions=30, accounts=2, seed=1)
    with GatewayThread(lambda: SimulatedGateway(small, port=0, price_interval=None)) as sim:
        concurrent = asyncio.run(_concurrent_clients_seconds(sim.port, clients))
    return {
        "reqPositions_10000_median_s": round(statistics.median(times), 3),
        "reqPositions_10000_max_s": round(max(times), 3),
        "reqPositions_10000_target_s": 1.0,
        f"connect_and_read_{clients}_clients_s": round(concurrent, 3),
    }


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """For `python -m benchmarks`: the defaults (quick: 3 repeats, 50 clients); prints a table."""
    from benchmarks import report

    figures = measure(3 if quick else 5, 50 if quick else 200)
    print(report.table("Simulated gateway", ["figure", "value"], list(figures.items())))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    figures = measure(args.repeat, args.clients)
    print(f"{'figure':<40} {'value':>10}")
    for name, value in figures.items():
        print(f"{name:<40} {value:>10}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
