"""The simulate command's desk flags turned into a gateway (no process, no socket): the zone, the refresh tick and
the fill-before-download fault, and the handshake's connection time in the gateway's zone."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from position_pipeline.ib_gateway_sim import GatewayState, SimulatedGateway
from position_pipeline.ib_gateway_sim.cli import add_arguments, build_gateway
from position_pipeline.ib_gateway_sim.replies import connection_time


def gateway_for(*flags: str) -> SimulatedGateway:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return build_gateway(parser.parse_args(["--positions", "6", "--accounts", "2", *flags]))


def test_zone_refresh_and_fills_reach_the_gateway() -> None:
    gateway = gateway_for(
        "--timezone", "Asia/Tokyo", "--portfolio-refresh", "2.5",
        "--fill-before-download", "DU1000001:265598:150", "--fill-before-download", "DU1000001:100000:-20",
        "--fill-before-download", "DU1000002:265598:7.5",
    )  # fmt: skip
    assert gateway.state.timezone == "Asia/Tokyo"
    assert gateway.portfolio_refresh == 2.5
    assert gateway.faults.fills_before_download == {
        "DU1000001": [(265598, 150.0), (100000, -20.0)],
        "DU1000002": [(265598, 7.5)],
    }
    assert gateway.state.base_currency("DU1000002") == "EUR"


def test_defaults_are_new_york_three_minutes_and_no_fills() -> None:
    gateway = gateway_for()
    assert (gateway.state.timezone, gateway.portfolio_refresh) == ("America/New_York", 180.0)
    assert gateway.faults.fills_before_download == {}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--timezone", "Mars/Olympus"], "--timezone: unknown time zone 'Mars/Olympus'"),
        (["--fill-before-download", "DU1000001:265598"], "is not ACCOUNT:CONID:QTY"),
        (["--fill-before-download", "DU1000001:AAPL:5"], "is not ACCOUNT:CONID:QTY"),
        (["--fill-before-download", "DU9:265598:5"], "accounts ['DU9'] are not in"),
        (["--portfolio-refresh", "-1"], "--portfolio-refresh must be >= 0"),
    ],
)
def test_bad_desk_flags_exit_with_a_message(flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        gateway_for(*flags)
    assert message in str(exited.value)


def test_the_connection_time_is_local_to_the_gateway_zone() -> None:
    state = GatewayState(accounts=["DU1"], timezone="Asia/Tokyo")
    moment = datetime(2026, 12, 2, 15, 30, 5, tzinfo=UTC)
    assert connection_time(state, moment) == "20261203 00:30:05 JST"
    state.set_timezone("America/New_York")
    assert connection_time(state, moment) == "20261202 10:30:05 EST"


def test_download_cost_and_fault_flags_reach_the_faults() -> None:
    gateway = gateway_for(
        "--download-seconds", "0.5", "--download-seconds-for", "DU1000002:2", "--account-value-volume", "300",
        "--no-download-end-for", "DU1000001", "--unsubscribe-mid-download", "DU1000002",
        "--unsubscribe-mid-download", "DU1000001:3", "--account-updates-held-by", "77", "--positions-unavailable",
        "--pnl-unset", "dailyPnL", "--garbage-after-handshake", "--account-summary-refused",
    )  # fmt: skip
    faults = gateway.faults
    assert (faults.download_delay("DU1000001"), faults.download_delay("DU1000002")) == (0.5, 2.0)
    assert faults.account_value_volume == 300
    assert faults.suppress_download_end_for == {"DU1000001"}
    assert faults.unsubscribe_mid_download == {"DU1000002": 1, "DU1000001": 3}
    assert faults.account_updates_held_by == 77
    assert faults.positions_refused(2) and faults.pnl_unset == {"dailyPnL"} and faults.garbage_after_handshake
    assert faults.account_summary_refused


def test_without_the_flags_downloads_are_instant_and_positions_automatic() -> None:
    faults = gateway_for().faults
    assert faults.download_delay("DU1000001") == 0.0 and faults.describe() == {}
    assert not faults.positions_refused(50) and faults.positions_refused(51)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--download-seconds-for", "DU1000001:soon"], "is not ACCOUNT:NUMBER"),
        (["--download-seconds-for", "DU9:1"], "--download-seconds-for: accounts ['DU9'] are not in"),
        (["--no-download-end-for", "DU9"], "--no-download-end-for: accounts ['DU9'] are not in"),
        (["--download-seconds", "-1"], "--download-seconds must be >= 0"),
        (["--account-value-volume", "-1"], "--account-value-volume must be >= 0"),
    ],
)
def test_bad_download_flags_exit_with_a_message(flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        gateway_for(*flags)
    assert message in str(exited.value)


def test_the_accounts_flag_allows_a_desk_of_50_and_more() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    gateway = build_gateway(parser.parse_args(["--positions", "120", "--accounts", "60"]))
    assert len(gateway.state.accounts) == 60
