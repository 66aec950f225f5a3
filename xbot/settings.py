"""One settings object, read from the environment and an optional `.env` file."""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# How the dev server started by `xbot dev` syncs its SQLite file (see xbot.localstack.sqlite_pragmas).
SqliteSync = Literal["normal", "full"]


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message names it in one line."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    xbot_env: Literal["development", "test", "production"] = Field(
        default="production", validation_alias="XBOT_ENV"
    )
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    xbot_data_dir: Path = Field(default=Path("./.xbot"), validation_alias="XBOT_DATA_DIR")

    temporal_address: str = Field(default="localhost:7233", validation_alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field(default="default", validation_alias="TEMPORAL_NAMESPACE")
    temporal_task_queue: str = Field(default="xbot-scheduler", validation_alias="TEMPORAL_TASK_QUEUE")
    temporal_ui_port: int = Field(default=8233, ge=1, le=65535, validation_alias="TEMPORAL_UI_PORT")
    temporal_dev_sqlite_sync: SqliteSync = Field(
        default="normal", validation_alias="TEMPORAL_DEV_SQLITE_SYNC"
    )
    temporal_tls: bool = Field(default=False, validation_alias="TEMPORAL_TLS")
    temporal_api_key: SecretStr | None = Field(default=None, validation_alias="TEMPORAL_API_KEY")

    # Task attempts one worker runs at once; its database pools are sized from it (see launch/worker.py).
    worker_concurrency: int = Field(default=40, ge=1, le=500, validation_alias="WORKER_CONCURRENCY")

    api_host: str = Field(default="127.0.0.1", validation_alias="API_HOST")
    api_port: int = Field(default=8000, ge=1, le=65535, validation_alias="API_PORT")
    api_token: SecretStr | None = Field(default=None, validation_alias="API_TOKEN")
    # One log line per request costs ~90 µs of the event loop (a quarter of a status call): off unless asked.
    api_access_log: bool = Field(default=False, validation_alias="API_ACCESS_LOG")

    x_api_base_url: str = Field(default="https://api.x.com", validation_alias="X_API_BASE_URL")
    x_client_id: str | None = Field(default=None, validation_alias="X_CLIENT_ID")
    x_client_secret: SecretStr | None = Field(default=None, validation_alias="X_CLIENT_SECRET")
    x_request_timeout_seconds: float = Field(default=15.0, gt=0, validation_alias="X_REQUEST_TIMEOUT_SECONDS")
    # Connecting an account from the dashboard (OAuth 2.0 with PKCE): where X sends the browser back
    # (the API's `/oauth/x/callback`, registered in the X app), and X's consent page.
    x_redirect_uri: str | None = Field(default=None, validation_alias="X_REDIRECT_URI")
    x_authorize_url: str = Field(
        default="https://x.com/i/oauth2/authorize", validation_alias="X_AUTHORIZE_URL"
    )

    openai_base_url: str | None = Field(default=None, validation_alias="OPENAI_BASE_URL")
    openai_api_key: SecretStr | None = Field(default=None, validation_alias="OPENAI_API_KEY")
    openai_model: str = Field(default="gpt-4o-mini", validation_alias="OPENAI_MODEL")
    # Reply cost estimates (USD). X pay-per-use: "Content: Create" $0.015 a request, $0.20 with a URL
    # (docs.x.com/x-api/getting-started/pricing). LLM: per million tokens, gpt-4o-mini's list price.
    x_price_post_usd: float = Field(default=0.015, ge=0, validation_alias="X_PRICE_POST_USD")
    x_price_post_with_url_usd: float = Field(default=0.20, ge=0, validation_alias="X_PRICE_POST_WITH_URL_USD")
    llm_price_input_per_mtok_usd: float = Field(
        default=0.15, ge=0, validation_alias="LLM_PRICE_INPUT_PER_MTOK_USD"
    )
    llm_price_output_per_mtok_usd: float = Field(
        default=0.60, ge=0, validation_alias="LLM_PRICE_OUTPUT_PER_MTOK_USD"
    )

    token_encryption_key: SecretStr | None = Field(default=None, validation_alias="TOKEN_ENCRYPTION_KEY")

    # Outbound URL policy (xbot/url_policy.py); unset = allowed in development and test only.
    xbot_allow_private_urls: bool | None = Field(default=None, validation_alias="XBOT_ALLOW_PRIVATE_URLS")

    # Temporal payload encryption (see docs/deployment.md): `id:key[,id:key...]`, first one encrypts.
    encryption_key: SecretStr | None = Field(default=None, validation_alias="ENCRYPTION_KEY")
    codec_cors_origins: str = Field(default="http://localhost:8233", validation_alias="CODEC_CORS_ORIGINS")
    codec_require_token: bool = Field(default=True, validation_alias="CODEC_REQUIRE_TOKEN")

    @field_validator("encryption_key")
    @classmethod
    def _payload_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        from xbot.crypto.codec import EncryptionKeyError, parse_keyring

        try:
            parse_keyring(value.get_secret_value())
        except EncryptionKeyError as error:
            raise ValueError(str(error).removeprefix("invalid setting ENCRYPTION_KEY: ")) from None
        return value

    @field_validator("token_encryption_key")
    @classmethod
    def _token_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        from xbot.crypto.at_rest import TokenCipherError, parse_key_ring

        try:
            parse_key_ring(value.get_secret_value())  # `KEY[,KEY...]`: the first encrypts, all decrypt
        except TokenCipherError as error:
            raise ValueError(str(error).removeprefix("invalid setting TOKEN_ENCRYPTION_KEY: ")) from None
        return value

    @field_validator("x_redirect_uri")
    @classmethod
    def _redirect_uri(cls, value: str | None) -> str | None:
        # Kept exactly as given: X compares it with the app's registered callback URL character by character.
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("x_api_base_url", "openai_base_url", "x_authorize_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("postgres://", "postgresql://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @property
    def is_production(self) -> bool:
        return self.xbot_env == "production"

    @property
    def allow_private_urls(self) -> bool:
        """Whether API-given URLs may reach private, loopback or link-local addresses."""
        if self.xbot_allow_private_urls is not None:
            return self.xbot_allow_private_urls
        return self.xbot_env in ("development", "test")


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    name = str(first["loc"][0]).upper() if first["loc"] else "settings"
    return f"invalid setting {name}: {first['msg']}"


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning a validation failure into one line that names the setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SettingsError(_one_line(error)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def settings_or_exit() -> Settings:
    """For process entry points: print the one-line reason and exit 2 on a bad setting."""
    try:
        return get_settings()
    except SettingsError as error:
        print(f"xbot: {error}", file=sys.stderr)
        raise SystemExit(2) from None
