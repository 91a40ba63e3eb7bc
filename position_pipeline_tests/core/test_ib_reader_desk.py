"""`ib_reader` on a desk, with the real ib_async client against the simulated gateway: the values' own moment in the
gateway's zone (a read just after midnight included), values that are older than the read, the quantity of the
values' moment after a fill, and each account's base currency and exchange rates."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from position_pipeline.core.ib_reader import read_snapshot
from position_pipeline.core.sync import position_moves
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread, SimulatedGateway
from position_pipeline_tests.support.ib_reads import assert_matches_state, held_only_by, settings_for

pytestmark = pytest.mark.timeout(30)


def zone_just_past_midnight() -> str:
    """A fixed-offset IANA zone in which it is now between 00:00 and 01:00 (Etc/GMT+N is UTC-N)."""
    hour = datetime.now(UTC).hour
    return f"Etc/GMT+{hour}" if hour <= 12 else f"Etc/GMT-{24 - hour}"


@pytest.fixture
def desk() -> GatewayState:
    return GatewayState.generate(positions=60, accounts=3, seed=7)


@pytest.fixture
def night_zone() -> str:
    return zone_just_past_midnight()


@pytest.fixture
def sim(desk: GatewayState, night_zone: str) -> Iterator[GatewayThread]:
    with GatewayThread(
        lambda: SimulatedGateway(desk, port=0, price_interval=None, portfolio_refresh=0, timezone=night_zone)
    ) as gateway:
        yield gateway


def test_values_computed_at_2359_yesterday_read_just_after_midnight_are_yesterdays(
    sim: GatewayThread, desk: GatewayState, night_zone: str
) -> None:
    zone = ZoneInfo(night_zone)
    midnight = datetime.now(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    tick = sim.revalue(at=midnight - timedelta(seconds=30))  # yesterday 23:59:30, local
    conids = {h.contract.conid for h in desk.positions()}

    snapshot = read_snapshot(settings_for(sim, gateway_tz=night_zone), conids, "midnight")

    assert snapshot.positions
    for p in snapshot.positions:
        assert p.account_update_time == "23:59"
        assert p.values_as_of == tick.replace(second=0, microsecond=0)  # IB's field has minutes only
        assert p.values_as_of is not None and p.values_as_of.tzinfo is not None
        assert p.values_as_of.astimezone(zone).date() == midnight.date() - timedelta(days=1)
    age = snapshot.taken_at - tick
    assert timedelta(seconds=30) <= age < timedelta(hours=1, minutes=1)


def test_values_are_those_of_the_last_refresh_not_of_the_live_price(
    sim: GatewayThread, desk: GatewayState, night_zone: str
) -> None:
    """IB refreshes the account window about every 3 minutes: values older than the read carry their own time."""
    tick = sim.revalue(at=datetime.now(UTC) - timedelta(minutes=2))
    sim.call(lambda gw: gw.move_prices())
    conids = {h.contract.conid for h in desk.positions()}
    snapshot = read_snapshot(settings_for(sim, gateway_tz=night_zone), conids, "stale")
    moved = 0
    for p in snapshot.positions:
        assert_matches_state(p, desk)  # the told valuation
        holding = desk.holding(p.account, p.conid)
        assert holding is not None
        moved += desk.live_valuation(holding).market_value != p.market_value
        assert p.values_as_of == tick.replace(second=0, microsecond=0)
    assert moved > 0  # the live prices did move; the read did not see them
    assert snapshot.taken_at - tick >= timedelta(minutes=2)


def test_a_fill_between_reqpositions_and_the_download_gives_the_downloads_quantity(
    sim: GatewayThread, desk: GatewayState, night_zone: str
) -> None:
    account = desk.accounts[0]
    holding = next(h for h in desk.positions(account) if h.contract.sec_type == "STK" and h.quantity)
    conid, before = holding.contract.conid, holding.quantity
    sim.set_faults(fills_before_download={account: [(conid, before + 25)]})

    snapshot = read_snapshot(settings_for(sim, gateway_tz=night_zone), {conid}, "fill")

    [p] = [p for p in snapshot.positions if p.account == account]
    assert (p.connect_position, p.position, p.moved) == (before, before + 25, True)
    value = desk.valuation(desk.holding(account, conid))  # type: ignore[arg-type]
    assert p.market_value == value.market_value  # quantity and value from the same moment
    assert [line for line in position_moves(snapshot) if line.startswith(f"{account} conid {conid} ")] == [
        f"{account} conid {conid} ({p.local_symbol}): reqPositions said {before:g}, the account download "
        f"{before + 25:g}; the row has {before + 25:g}"
    ]


def test_each_account_has_its_base_currency_and_the_rate_of_each_currency_it_holds(
    sim: GatewayThread, desk: GatewayState, night_zone: str
) -> None:
    eur_account = desk.accounts[-1]
    assert desk.base_currency(eur_account) == "EUR"
    conids = {h.contract.conid for h in desk.positions()}
    snapshot = read_snapshot(settings_for(sim, gateway_tz=night_zone), conids, "bases")
    currencies = set()
    for p in snapshot.positions:
        currencies.add((p.base_currency, p.currency))
        assert p.base_currency == desk.base_currency(p.account)
        expected = desk.exchange_rate(p.account, p.currency)
        assert expected is not None and p.fx_rate == expected
        if p.currency == p.base_currency:
            assert p.fx_rate == 1.0
    assert {("USD", "EUR"), ("USD", "JPY"), ("USD", "GBP"), ("EUR", "USD")} <= currencies
    download = snapshot.downloads[eur_account]
    assert download.base_currency == "EUR" and download.rates["EUR"] == 1.0
    assert download.rates["USD"] == desk.exchange_rate(eur_account, "USD")


def test_an_item_held_only_in_one_account_downloads_only_that_account(
    sim: GatewayThread, desk: GatewayState, night_zone: str
) -> None:
    account = desk.accounts[1]
    conid = min(held_only_by(desk, account))
    snapshot = read_snapshot(settings_for(sim, gateway_tz=night_zone), {conid}, "one")
    assert list(snapshot.downloads) == [account]
    assert [(p.account, p.conid) for p in snapshot.positions] == [(account, conid)]
