"""Command line of the simulated gateway.

Run as `position-pipeline simulate` or `python -m position_pipeline.ib_gateway_sim`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from .faults import DEFAULT_PACING_LIMIT, PNL_FIELDS, Faults
from .messages import MAX_SERVER_VERSION, MIN_SERVER_VERSION
from .server import DEFAULT_HOST, SimulatedGateway
from .state import DEFAULT_TIMEZONE, GatewayState, state_summary, zone_named

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `simulate`; shared by the package's own entry point and position-pipeline's CLI."""
    where = parser.add_argument_group("where it listens")
    where.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default: %(default)s, loopback only)")
    where.add_argument("--port", type=int, default=4002, help="TCP port; 0 picks a free one (default: %(default)s)")

    what = parser.add_argument_group("what it holds")
    what.add_argument("--positions", type=int, default=50, help="positions to generate (default: %(default)s)")
    what.add_argument(
        "--accounts", type=int, default=3, help="paper accounts to spread them over (default: %(default)s)"
    )
    what.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same state")
    what.add_argument("--state", metavar="FILE", help="load accounts and positions from this JSON file instead")
    what.add_argument("--state-out", metavar="FILE", help="write the state (accounts, every position) as JSON at start")
    what.add_argument(
        "--price-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between price moves; 0 freezes prices (default: %(default)s)",
    )
    what.add_argument(
        "--portfolio-refresh",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="seconds between refresh ticks: every account is revalued at the live prices and pushed to its"
        " account-updates subscriber, like IB's ~3 min; values change only then or when a position changes"
        " (default: %(default)s)",
    )
    what.add_argument(
        "--timezone",
        metavar="ZONE",
        help=f"the gateway's IANA time zone for the account update time and the connection time"
        f" (default: the --state file's, else {DEFAULT_TIMEZONE}, IB's home zone)",
    )

    faults = parser.add_argument_group("faults to inject from the start")
    faults.add_argument("--down-for", type=float, default=0.0, metavar="SECONDS", help="refuse connections this long")
    faults.add_argument("--drop-after", type=int, metavar="N", help="close each connection after sending N messages")
    faults.add_argument(
        "--drop-mid-positions",
        action="store_true",
        help="close the connection half-way through the first position stream",
    )
    faults.add_argument("--reply-delay", type=float, default=0.0, metavar="SECONDS", help="delay every reply")
    faults.add_argument("--no-position-end", action="store_true", help="never send positionEnd")
    faults.add_argument("--no-account-download-end", action="store_true", help="never send accountDownloadEnd")
    faults.add_argument(
        "--pacing-limit",
        type=int,
        default=DEFAULT_PACING_LIMIT,
        metavar="N",
        help="messages per second per client before error 100 (default: %(default)s)",
    )
    faults.add_argument(
        "--lock-client-id",
        type=int,
        action="append",
        default=[],
        metavar="ID",
        help="refuse this client id with error 326 as if in use (repeatable)",
    )
    faults.add_argument(
        "--fill-before-download",
        action="append",
        default=[],
        metavar="ACCOUNT:CONID:QTY",
        help="when the first account download of ACCOUNT is asked for, first set its CONID position to QTY"
        " (a fill between a client's reqPositions and its download; repeatable)",
    )
    cost = parser.add_argument_group("cost and faults of account downloads (reqAccountUpdates)")
    cost.add_argument(
        "--download-seconds",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds before each account download is sent (a real gateway: about 0.5-3 s; default: %(default)s)",
    )
    cost.add_argument(
        "--download-seconds-for",
        action="append",
        default=[],
        metavar="ACCOUNT:SECONDS",
        help="that account's own download latency (repeatable)",
    )
    cost.add_argument(
        "--account-value-volume",
        type=int,
        default=0,
        metavar="N",
        help="extra account values per download (a real one sends a few hundred; default: %(default)s)",
    )
    cost.add_argument(
        "--no-download-end-for",
        action="append",
        default=[],
        metavar="ACCOUNT",
        help="that account's download never ends: no accountDownloadEnd (repeatable)",
    )
    cost.add_argument(
        "--unsubscribe-mid-download",
        action="append",
        default=[],
        metavar="ACCOUNT[:N]",
        help="cut that account's next N downloads (default 1) with error 2100 half-way (repeatable)",
    )
    cost.add_argument(
        "--account-updates-held-by",
        type=int,
        metavar="CLIENT_ID",
        help="an outside client holds the account-updates slot: every subscribe gets 2101 naming it",
    )
    login = parser.add_argument_group("the login's behaviour")
    login.add_argument(
        "--positions-unavailable",
        action="store_true",
        help="refuse reqPositions (error 321, no positionEnd) as IB does beyond 50 subaccounts; automatic with"
        " more than 50 --accounts; reqPositionsMulti keeps working",
    )
    login.add_argument(
        "--account-summary-refused",
        action="store_true",
        help="refuse reqAccountSummary (error 321 naming its reqId) as IB does for group All on IBroker logins with"
        " more than 50 subaccounts",
    )
    login.add_argument(
        "--pnl-unset",
        action="append",
        default=[],
        choices=sorted(PNL_FIELDS),
        help="send this reqPnLSingle field as IB's unset value 1.7976931348623157E308 (repeatable)",
    )
    login.add_argument(
        "--pnl-seconds", type=float, default=0.0, metavar="SECONDS",
        help="seconds before the first message of each reqPnLSingle subscription (default: %(default)s)",
    )  # fmt: skip
    login.add_argument(
        "--pnl-unset-for", action="append", default=[], metavar="ACCOUNT",
        help="that account's reqPnLSingle values stay IB's unset value (repeatable)",
    )  # fmt: skip
    login.add_argument(
        "--pnl-silent-for", action="append", default=[], metavar="ACCOUNT",
        help="that account's reqPnLSingle subscriptions never send anything (repeatable)",
    )  # fmt: skip
    login.add_argument(
        "--garbage-after-handshake",
        action="store_true",
        help="a broken server: MANAGED_ACCTS '-1' and junk frames after startApi and after every request",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_gateway(args: argparse.Namespace) -> SimulatedGateway:
    """Validate the flags and build the gateway they describe; bad values raise SystemExit with a message."""
    if not 0 <= args.port <= 65535:
        raise SystemExit(f"simulate: --port {args.port} is not a TCP port (0-65535)")
    if args.positions < 0 or args.accounts < 1:
        raise SystemExit("simulate: --positions must be >= 0 and --accounts >= 1")
    for name in ("down_for", "reply_delay", "price_interval", "portfolio_refresh", "download_seconds"):
        if getattr(args, name) < 0:
            raise SystemExit(f"simulate: --{name.replace('_', '-')} must be >= 0")
    if args.pacing_limit < 1:
        raise SystemExit("simulate: --pacing-limit must be >= 1")
    if args.timezone is not None:
        try:
            zone_named(args.timezone)
        except ValueError as exc:
            raise SystemExit(f"simulate: --timezone: {exc}") from exc
    if args.account_value_volume < 0:
        raise SystemExit("simulate: --account-value-volume must be >= 0")
    fills = _fills(args.fill_before_download)
    latencies = {account: float(s or 0) for account, s in _pairs(args.download_seconds_for, "--download-seconds-for")}
    if any(s < 0 for s in latencies.values()):
        raise SystemExit("simulate: --download-seconds-for: seconds must be >= 0")
    cuts = {
        account: int(float(n or 1))
        for account, n in _pairs(args.unsubscribe_mid_download, "--unsubscribe-mid-download")
    }
    if args.state:
        try:
            state = GatewayState.load(args.state)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"simulate: cannot load --state {args.state}: {exc}") from exc
    else:
        state = GatewayState.generate(positions=args.positions, accounts=args.accounts, seed=args.seed)
    faults = Faults(
        drop_after_messages=args.drop_after,
        drop_mid_positions=args.drop_mid_positions,
        reply_delay=args.reply_delay,
        suppress_position_end=args.no_position_end,
        suppress_account_download_end=args.no_account_download_end,
        pacing_limit=args.pacing_limit,
        locked_client_ids=set(args.lock_client_id),
        fills_before_download=fills,
        download_seconds=args.download_seconds,
        download_seconds_by_account=latencies,
        account_value_volume=args.account_value_volume,
        suppress_download_end_for=set(args.no_download_end_for),
        unsubscribe_mid_download=cuts,
        account_updates_held_by=args.account_updates_held_by,
        positions_unavailable=True if args.positions_unavailable else None,
        account_summary_refused=args.account_summary_refused,
        pnl_unset=set(args.pnl_unset),
        pnl_seconds=args.pnl_seconds,
        pnl_unset_for=set(args.pnl_unset_for),
        pnl_silent_for=set(args.pnl_silent_for),
        garbage_after_handshake=args.garbage_after_handshake,
    )
    for flag, accounts in (
        ("--fill-before-download", fills),
        ("--download-seconds-for", latencies),
        ("--no-download-end-for", args.no_download_end_for),
        ("--unsubscribe-mid-download", cuts),
        ("--pnl-unset-for", args.pnl_unset_for),
        ("--pnl-silent-for", args.pnl_silent_for),
    ):
        unknown = set(accounts) - set(state.accounts)
        if unknown:
            raise SystemExit(f"simulate: {flag}: accounts {sorted(unknown)} are not in {state.accounts}")
    return SimulatedGateway(
        state,
        host=args.host,
        port=args.port,
        faults=faults,
        price_interval=args.price_interval or None,
        portfolio_refresh=args.portfolio_refresh,
        timezone=args.timezone,
    )


def _fills(specs: list[str]) -> dict[str, list[tuple[int, float]]]:
    """`ACCOUNT:CONID:QTY` flags as the fills_before_download fault."""
    fills: dict[str, list[tuple[int, float]]] = {}
    for spec in specs:
        try:
            account, conid, quantity = spec.split(":")
            fills.setdefault(account, []).append((int(conid), float(quantity)))
        except ValueError:
            raise SystemExit(f"simulate: --fill-before-download {spec!r} is not ACCOUNT:CONID:QTY") from None
    return fills


def _pairs(specs: list[str], flag: str) -> list[tuple[str, str]]:
    """`ACCOUNT:VALUE` (or `ACCOUNT` alone, VALUE empty) flags; the value must be a number."""
    pairs = []
    for spec in specs:
        account, _, value = spec.partition(":")
        try:
            float(value or 0)
        except ValueError:
            raise SystemExit(f"simulate: {flag} {spec!r} is not ACCOUNT:NUMBER") from None
        pairs.append((account, value))
    return pairs


async def serve(gateway: SimulatedGateway, args: argparse.Namespace) -> None:
    """Run until SIGINT or SIGTERM, then close every connection and the listening socket."""
    try:
        await gateway.start()
    except OSError as exc:
        raise SystemExit(f"simulate: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(gateway.close()))
    if args.state_out:
        gateway.state.save(args.state_out)
    if args.down_for:
        gateway.go_down(args.down_for, drop_existing=False)
    counts = ", ".join(f"{n} {kind}" for kind, n in state_summary(gateway.state).items())
    print(
        f"Simulated IB Gateway listening on {gateway.host}:{gateway.port} "
        f"(server versions {MIN_SERVER_VERSION}-{MAX_SERVER_VERSION}; accounts {','.join(gateway.state.accounts)}; "
        f"{len(gateway.state.holdings)} positions: {counts})",
        flush=True,
    )
    if args.state_out:
        print(f"State written to {args.state_out}", flush=True)
    if args.down_for:
        print(f"Refusing connections for the first {args.down_for:g} s", flush=True)
    print(f"Time zone {gateway.state.timezone}; values refreshed every {gateway.portfolio_refresh:g} s", flush=True)
    if gateway.faults.describe():
        print(f"Faults: {gateway.faults.describe()}", flush=True)
    await gateway.serve_forever()
    print("Simulated IB Gateway stopped", flush=True)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    gateway = build_gateway(args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(gateway, args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m position_pipeline.ib_gateway_sim",
        description="A simulated IB Gateway speaking the TWS API socket protocol on loopback.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
