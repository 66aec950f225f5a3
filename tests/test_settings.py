"""Settings: defaults, and one line naming a bad setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from xbot.settings import SettingsError, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "TEMPORAL_ADDRESS", "API_PORT", "XBOT_DATA_DIR", "X_API_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.database_url is None
    assert settings.temporal_address == "localhost:7233"
    assert (settings.api_host, settings.api_port) == ("127.0.0.1", 8000)
    assert settings.xbot_data_dir == Path("./.xbot")
    assert settings.x_api_base_url == "https://api.x.com"


def test_reads_dotenv_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("API_PORT", raising=False)
    (tmp_path / ".env").write_text("API_PORT=9123\n")
    assert load_settings().api_port == 9123


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("API_PORT", "not-a-number"),
        ("API_PORT", "70000"),
        ("DATABASE_URL", "mysql://x"),
        ("X_API_BASE_URL", "ftp://x"),
        ("XBOT_ENV", "staging"),
        ("TEMPORAL_DEV_SQLITE_SYNC", "off"),
    ],
)
def test_malformed_setting_names_itself_in_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert name in message
    assert "\n" not in message


def test_secrets_do_not_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    settings = load_settings()
    assert "sk-very-secret" not in repr(settings)
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-very-secret"


def test_cli_lists_every_command() -> None:
    from launch.cli import build_parser

    help_text = build_parser().format_help()
    for command in ("dev", "worker", "api", "migrate", "bench", "generate-key"):
        assert command in help_text


def test_connect_settings_keep_the_redirect_uri_exactly() -> None:
    settings = load_settings(XBOT_ENV="test", X_REDIRECT_URI="https://xbot.example/oauth/x/callback/")
    # X compares it with the app's registered callback URL character by character.
    assert settings.x_redirect_uri == "https://xbot.example/oauth/x/callback/"
    assert settings.x_authorize_url == "https://x.com/i/oauth2/authorize"
    with pytest.raises(SettingsError, match="X_REDIRECT_URI"):
        load_settings(XBOT_ENV="test", X_REDIRECT_URI="xbot.example/callback")
