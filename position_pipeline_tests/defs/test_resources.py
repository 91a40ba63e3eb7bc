"""Resource configuration: environment variables reach the settings, defaults point at a local gateway."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster_deltalake import LocalConfig

from position_pipeline.defs.resources import IBResource, build_resources, delta_io_manager, ib_resource, lake_resource


def settings_in_a_run(resource: IBResource) -> object:
    seen = {}

    @dg.asset
    def probe(ib: IBResource) -> None:
        seen["settings"] = ib.settings()

    assert dg.materialize([probe], resources={"ib": resource}).success
    return seen["settings"]


def test_defaults_point_at_a_local_paper_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IB_HOST", "IB_PORT", "IB_CLIENT_ID", "IB_ACCOUNTS", "IB_CONNECT_TIMEOUT", "IB_REQUEST_TIMEOUT",
                 "IB_GATEWAY_TZ"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    settings = settings_in_a_run(ib_resource())
    assert (settings.host, settings.port, settings.client_id, settings.accounts) == ("127.0.0.1", 4002, 100, ())  # type: ignore[attr-defined]
    assert settings.gateway_tz == "America/New_York"  # type: ignore[attr-defined]


def test_environment_variables_configure_the_resource_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IB_HOST", "10.1.2.3")
    monkeypatch.setenv("IB_PORT", "7497")
    monkeypatch.setenv("IB_CLIENT_ID", "500")
    monkeypatch.setenv("IB_ACCOUNTS", "DU1, DU2")
    monkeypatch.setenv("IB_CONNECT_TIMEOUT", "7")
    monkeypatch.setenv("IB_REQUEST_TIMEOUT", "45")
    monkeypatch.setenv("IB_GATEWAY_TZ", "Europe/Zurich")
    settings = settings_in_a_run(ib_resource())
    assert settings.gateway_tz == "Europe/Zurich"  # type: ignore[attr-defined]
    assert (settings.host, settings.port, settings.client_id) == ("10.1.2.3", 7497, 500)  # type: ignore[attr-defined]
    assert settings.accounts == ("DU1", "DU2")  # type: ignore[attr-defined]
    assert (settings.connect_timeout, settings.request_timeout) == (7, 45)  # type: ignore[attr-defined]


@pytest.mark.parametrize("field", ["port", "connect_timeout", "request_timeout"])
def test_nonsense_values_are_refused_with_the_field_named(field: str) -> None:
    with pytest.raises(dg.DagsterInvalidConfigError, match=f"IBResource.{field} must be at least 1"):
        IBResource(**{field: 0}).settings()


@pytest.mark.parametrize("zone", ["", "Eastern", "America/Nowhere"])
def test_a_gateway_tz_that_is_not_an_iana_zone_is_refused_before_any_connection(zone: str) -> None:
    with pytest.raises(dg.DagsterInvalidConfigError, match=r"IBResource.gateway_tz: IB_GATEWAY_TZ .* is not an IANA"):
        IBResource(gateway_tz=zone).settings()


def test_the_lake_defaults_to_dot_lake_and_follows_position_lake_uri(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("POSITION_LAKE_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert lake_resource().root_uri == str(tmp_path / ".lake")
    monkeypatch.setenv("POSITION_LAKE_URI", "s3://bucket/lake")
    assert delta_io_manager().root_uri.env_var_name == "POSITION_LAKE_URI"  # type: ignore[attr-defined]


def test_build_resources_points_the_queue_and_the_io_manager_at_one_lake(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    resources = build_resources(root, IBResource(port=4100))
    assert set(resources) == {"ib", "lake", "delta_io_manager", "batch_io_manager"}
    assert resources["lake"].root_uri == root and resources["delta_io_manager"].root_uri == root
    assert isinstance(resources["delta_io_manager"].storage_options, LocalConfig)
    assert resources["ib"].port == 4100
