"""IB_VALUES_FROM through the pipeline: the setting refused when the resource is built, rows that say where their
values came from (daily_pnl in the pnl mode, null in the account mode), and in the pnl mode one account whose PnL
never comes (or stays unset) costing only its items: given back, no attempt counted, nothing FAILED, the other
accounts' rows written in the same run, within its budget; in both modes, an item held in three accounts with its
base-currency values (null, with a warning, for a currency IB sends no rate for)."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from position_pipeline.core import lake
from position_pipeline.core.queue import PositionQueue, QueueStatus
from position_pipeline.defs.resources import IBResource, ib_resource
from position_pipeline.ib_gateway_sim import GatewayState, GatewayThread
from position_pipeline_tests.support.ib_reads import desk_items, holders_of, pnl_ended
from position_pipeline_tests.support.sim_contracts import HSBC_HK
from position_pipeline_tests.support.sync_runs import run_sync, updates

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("text", ["", "PnL", "portfolio", "account-updates"])
def test_an_unknown_values_mode_is_refused_when_the_resource_is_built(text: str) -> None:
    with pytest.raises(
        dg.DagsterInvalidConfigError,
        match=r"IBResource.values_from: IB_VALUES_FROM must be 'account_updates' or 'pnl', got",
    ):
        IBResource(values_from=text).settings()


def test_ib_values_from_reaches_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IB_VALUES_FROM", raising=False)
    assert ib_resource().settings().values_from == "account_updates"
    monkeypatch.setenv("IB_VALUES_FROM", "pnl")
    resource = ib_resource()
    seen = {}

    @dg.asset
    def probe(ib: IBResource) -> None:
        seen["values_from"] = ib.settings().values_from

    assert dg.materialize([probe], resources={"ib": resource}).success
    assert seen["values_from"] == "pnl"


def test_pnl_rows_say_so_and_carry_the_daily_pnl(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance
) -> None:
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids = desk_items(queue, sim_state, per_account=4, pinned=True)

    result = run_sync(root, sim, instance, values_from="pnl")

    assert result.success
    rows = updates(root)
    shared_conid = rows.filter(pl.col("request_id") == ids["shared"][0])["conid"][0]
    pinned = 1
    assert rows.height == len(ids["first"]) + len(ids["second"]) + len(holders_of(sim_state)[shared_conid]) + pinned
    assert set(rows["values_from"]) == {"pnl"} and rows["daily_pnl"].null_count() == 0
    assert rows["account_update_time"].null_count() == rows.height  # no account window in this mode
    for row in rows.iter_rows(named=True):
        holding = sim_state.holding(row["account"], row["conid"])
        assert holding is not None and row["daily_pnl"] == sim_state.daily_pnl(holding)
    assert set(queue.read()["status"]) == {QueueStatus.SUCCESS}
    pnl_ended(sim)
    assert not [r.name for r in sim.requests() if r.is_order or r.is_market_data]


def test_account_mode_rows_have_no_daily_pnl(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance
) -> None:
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    desk_items(queue, sim_state, per_account=4, pinned=True)

    assert run_sync(root, sim, instance).success

    rows = updates(root)
    assert rows.height > 0 and set(rows["values_from"]) == {"account_updates"}
    assert rows["daily_pnl"].null_count() == rows.height  # updatePortfolio has no daily PnL
    assert not [r.name for r in sim.requests() if r.is_order or r.is_market_data]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(lambda second: {"pnl_silent_for": {second}}, id="pnl-never-comes"),
        pytest.param(lambda second: {"pnl_unset_for": {second}}, id="pnl-value-unset"),
    ],
)
def test_one_accounts_missing_pnl_gives_back_only_its_items_and_marks_nothing_failed(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance, fault: object
) -> None:
    first, second, _ = sim_state.accounts
    sim.set_faults(**fault(second))  # type: ignore[operator]
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    ids = desk_items(queue, sim_state, per_account=4, pinned=True)

    result = run_sync(root, sim, instance, values_from="pnl")

    assert result.success
    written = {(i, first) for i in ids["first"] + ids["pinned"]}
    assert set(updates(root).select("request_id", "account").iter_rows()) == written
    items = queue.read()
    ok = items.filter(pl.col("request_id").is_in(ids["first"] + ids["pinned"]))
    assert set(ok["status"]) == {QueueStatus.SUCCESS}
    back = items.filter(pl.col("request_id").is_in(ids["second"] + ids["shared"]))
    assert set(back["status"]) == {QueueStatus.PENDING} and set(back["attempts"]) == {0}
    assert QueueStatus.FAILED not in set(items["status"])
    metadata = result.asset_materializations_for_node("ib_snapshot")[0].metadata
    assert metadata["given_back"].value == len(ids["second"] + ids["shared"])
    assert metadata["ib_read_seconds"].value < 2 + 3  # the 2-s request timeout, not more  # type: ignore[operator]
    warnings = [e.message for e in instance.all_logs(result.run_id) if f"account {second} not read" in e.message]
    assert len(warnings) == 1 and "reqPnLSingle sent no value for conid" in warnings[0]
    pnl_ended(sim)


@pytest.mark.parametrize("values_from", ["account_updates", "pnl"])
def test_an_item_held_in_three_accounts_gets_three_rows_in_base_currency_or_none_without_a_rate(
    root: str, sim: GatewayThread, sim_state: GatewayState, instance: dg.DagsterInstance, values_from: str
) -> None:
    """Against the simulator, in either mode: an item without an account whose contract three accounts hold (one
    of them EUR-based) gets three rows and succeeds; a listing in a currency IB sends no rate for has null base
    values and a warning, never a guessed 1.0; a EUR listing's base values are its values times each account's
    EUR rate (1.0 in the EUR-based account)."""
    accounts = sim_state.accounts
    for account in accounts:
        sim.call(lambda gw, a=account: gw.state.set_position(a, HSBC_HK, 100, market_price=62.5))
    euro = next(h for h in sim_state.positions() if h.contract.currency == "EUR")
    queue = PositionQueue(lake.table_uri(root, lake.QUEUE_TABLE))
    no_rate, in_euro = queue.insert_many([(HSBC_HK.conid, HSBC_HK.symbol), (euro.contract.conid, euro.contract.symbol)])

    result = run_sync(root, sim, instance, values_from=values_from)

    assert result.success
    rows = updates(root)
    hkd = rows.filter(pl.col("request_id") == no_rate)
    assert sorted(hkd["account"]) == sorted(accounts) and {sim_state.base_currency(a) for a in accounts} >= {"EUR"}
    assert hkd["market_value"].null_count() == 0
    assert hkd["fx_rate"].null_count() == hkd["market_value_base"].null_count() == 3
    eur = rows.filter(pl.col("request_id") == in_euro)
    assert set(eur["account"]) == holders_of(sim_state)[euro.contract.conid]
    for row in eur.iter_rows(named=True):
        assert row["fx_rate"] == sim_state.exchange_rate(row["account"], "EUR")
        assert row["fx_rate"] == 1.0 or sim_state.base_currency(row["account"]) != "EUR"
        assert row["market_value_base"] == pytest.approx(row["market_value"] * row["fx_rate"])
    assert set(queue.read()["status"]) == {QueueStatus.SUCCESS}
    warnings = [e.message for e in instance.all_logs(result.run_id) if "no base-currency values" in e.message]
    assert warnings and all("HKD" in w for w in warnings)
