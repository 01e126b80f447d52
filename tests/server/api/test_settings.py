"""API settings: environment variables, and no default secrets outside development."""

from __future__ import annotations

from pathlib import Path

import pytest

from veracity.errors import ConfigError
from veracity.server.api.app import create_app
from veracity.server.api.settings import ApiSettings, load_api_settings

from .conftest import TestClient, open_api

STRONG = "vrc_" + "k" * 43


def test_settings_come_from_veracity_environment_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VERACITY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VERACITY_API_PORT", "9443")
    monkeypatch.setenv("VERACITY_INFERENCE_RATE_PER_MINUTE", "12")
    monkeypatch.setenv("VERACITY_BOOTSTRAP_ADMIN_TOKEN", STRONG)
    settings = load_api_settings()
    assert (settings.data_dir, settings.api_port, settings.inference_rate_per_minute) == (
        tmp_path,
        9443,
        12.0,
    )
    assert STRONG not in repr(settings)
    assert settings.bootstrap_admin_token is not None
    assert settings.bootstrap_admin_token.get_secret_value() == STRONG


@pytest.mark.parametrize("weak", ["changethis", "secret", "short-but-not-default"])
def test_production_refuses_default_or_short_secrets(weak: str) -> None:
    with pytest.raises(ConfigError, match="bootstrap_admin_token"):
        load_api_settings(environment="production", bootstrap_admin_token=weak)


def test_development_accepts_a_weak_secret_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    weak = "changethis"
    settings = load_api_settings(environment="development", bootstrap_admin_token=weak)
    assert settings.bootstrap_admin_token is not None
    assert "acceptable only in development" in caplog.text


def test_production_refuses_plain_http() -> None:
    with pytest.raises(ConfigError, match="api_tls"):
        load_api_settings(environment="production", api_tls=False)
    assert load_api_settings(environment="production", bootstrap_admin_token=STRONG).api_tls


def test_invalid_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="api_port"):
        load_api_settings(api_port=70_000)


def test_a_bootstrap_token_is_adopted_once_and_stays_revoked(tmp_path: Path, db_url: str) -> None:
    data_dir = tmp_path / "coordinator"
    for api in open_api(data_dir, db_url, bootstrap_admin_token=STRONG):
        headers = {"Authorization": f"Bearer {STRONG}"}
        me = api.client.get("/api/v1/whoami", headers=headers).json()
        assert (me["role"], me["name"]) == ("admin", "bootstrap")
        revoke = f"/api/v1/tokens/{me['token_id']}/revoke"
        assert api.client.post(revoke, headers=headers).status_code == 200
        again = create_app(ApiSettings(data_dir=data_dir, bootstrap_admin_token=STRONG))
        with TestClient(again) as client:
            assert client.get("/api/v1/whoami", headers=headers).status_code == 401
