"""Settings: placeholder secrets refused outside development; every setting documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.app.config import Settings
from serving.app.model_store import parse_source
from tests.support.serving_app import TOKEN

README = Path(__file__).resolve().parents[2] / "serving" / "README.md"


@pytest.mark.parametrize("token", ["change-me", "", "token", "short-but-real"])
def test_production_refuses_placeholder_or_short_tokens(token: str) -> None:
    with pytest.raises(ValidationError, match="placeholder or shorter"):
        Settings(environment="production", reload_token=token)


def test_production_accepts_a_real_token_and_development_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVING_ENVIRONMENT", "production")
    monkeypatch.setenv("SERVING_RELOAD_TOKEN", TOKEN)
    monkeypatch.setenv("SERVING_MAX_BATCH_ROWS", "7")
    settings = Settings()
    assert settings.reload_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings)
    assert settings.max_batch_rows == 7
    monkeypatch.delenv("SERVING_RELOAD_TOKEN")
    assert Settings(environment="development").reload_token.get_secret_value() == "change-me"


def test_every_setting_is_documented_in_the_readme() -> None:
    documented = set(re.findall(r"`(SERVING_[A-Z_]+)`", README.read_text()))
    fields = {f"SERVING_{name.upper()}" for name in Settings.model_fields}
    assert fields == documented


def test_model_uris() -> None:
    assert parse_source(Settings()).uri == "models:/iris_classifier@champion"
    alias = parse_source(Settings(model_uri="models:/m@challenger"))
    assert (alias.kind, alias.name, alias.ref) == ("alias", "m", "challenger")
    assert parse_source(Settings(model_uri="models:/m/3")).kind == "version"
    with pytest.warns(DeprecationWarning, match="stages are deprecated"):
        stage = parse_source(Settings(model_uri="models:/my_model/Production"))
    assert (stage.kind, stage.name, stage.ref) == ("stage", "my_model", "Production")
    assert parse_source(Settings(model_uri="runs:/abc/model")).kind == "static"


@pytest.mark.parametrize("secret", ["change-me", "secret", "short-but-real"])
def test_production_refuses_a_placeholder_or_short_webhook_secret(secret: str) -> None:
    with pytest.raises(ValidationError, match="SERVING_WEBHOOK_SECRET is a placeholder"):
        Settings(environment="production", reload_token=TOKEN, webhook_secret=secret)
    assert Settings(environment="production", reload_token=TOKEN).webhook_secret is None  # unset: webhooks off
    assert Settings(webhook_secret=secret).webhook_secret is not None  # development accepts anything
