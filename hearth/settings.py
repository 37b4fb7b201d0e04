"""Configuration: ``HEARTH_*`` environment variables, optionally added to by a TOML file.

Precedence (highest first): environment, the TOML file named by ``HEARTH_CONFIG`` (default
``.hearth/hearth.toml`` when it exists — ``scripts/services up`` writes the local secrets there),
built-in defaults. A bad value fails at start with :class:`ConfigError`, whose message names the
variable and what was wrong, so CLIs can print one line instead of a traceback.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_DATABASE_URL = "postgresql://hearth:hearth@127.0.0.1:5432/hearth"
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
DEFAULT_CONFIG_FILE = Path(".hearth/hearth.toml")
API_SCOPES = frozenset({"features:read", "admin"})


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message is one line for the user."""


class MqttEndpoint(BaseModel):
    """``mqtt://[user:pass@]host:port`` split into what paho needs."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: SecretStr | None = None


def parse_mqtt_url(url: str) -> MqttEndpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"scheme must be mqtt:// or mqtts://, got {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise ValueError("no host in URL")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    tls = parts.scheme == "mqtts"
    return MqttEndpoint(
        host=parts.hostname,
        port=port or (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=SecretStr(unquote(parts.password)) if parts.password else None,
    )


def parse_api_tokens(raw: str | dict[str, Any]) -> dict[str, frozenset[str]]:
    """Tokens → scopes, from JSON (``{"tok": ["admin"]}``) or ``tok=scope+scope,tok2=scope``."""
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            return {}
        if text.startswith("{"):
            raw = json.loads(text)
        else:
            raw = {}
            for item in text.split(","):
                token, sep, scopes = item.strip().partition("=")
                if not sep or not token:
                    raise ValueError(f"expected token=scope[+scope], got {item.strip()!r}")
                raw[token] = scopes.split("+")
    assert isinstance(raw, dict)
    tokens: dict[str, frozenset[str]] = {}
    for token, scopes in raw.items():
        scope_set = frozenset([scopes] if isinstance(scopes, str) else scopes)
        unknown = scope_set - API_SCOPES
        if unknown:
            raise ValueError(f"unknown scope(s) {sorted(unknown)}; known: {sorted(API_SCOPES)}")
        if len(token) < 16:
            raise ValueError("every token must be at least 16 characters")
        tokens[token] = scope_set
    return tokens


class Settings(BaseSettings):
    """Every knob of Hearth. Field ``x`` is read from ``HEARTH_X``."""

    model_config = SettingsConfigDict(
        env_prefix="HEARTH_", extra="ignore", case_sensitive=False, frozen=True
    )

    database_url: str = DEFAULT_DATABASE_URL
    mqtt_url: str = DEFAULT_MQTT_URL
    pseudonym_key: SecretStr | None = None
    api_tokens: Annotated[dict[str, frozenset[str]], NoDecode] = Field(default_factory=dict)

    # MQTT session of the collector (shared subscription group, stable client id).
    mqtt_client_id: str = "hearth-collector-1"
    mqtt_share_group: str = "hearth"
    mqtt_session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    mqtt_receive_maximum: int = Field(default=2000, ge=1, le=65535)
    mqtt_ca_file: Path | None = None
    # The broker's dynamic-security admin account (hearth.broker): registration, retirement,
    # erasure and `broker sync` manage device accounts through it. Unset: the broker is not
    # managed by Hearth (anonymous trials), and device accounts exist only in the registry.
    broker_admin_url: str | None = None

    # Batching: flush on size or age, whichever comes first.
    batch_max_messages: int = Field(default=2000, ge=1)
    batch_max_age_ms: int = Field(default=200, ge=1)
    max_payload_bytes: int = Field(default=65536, ge=256)  # larger → dead letter "too_large"
    dead_letter_payload_bytes: int = Field(default=4096, ge=0)
    geohash_precision: int = Field(default=7, ge=1, le=7)  # 7 ≈ 150 m; never finer (DESIGN §3.7)
    max_clock_skew_s: int = Field(default=600, ge=0)
    max_event_age_days: int = Field(default=400, ge=1)

    # Collector observability port (/metrics, /healthz); 0 disables.
    collector_http_port: int = Field(default=9108, ge=0, le=65535)

    # Feature service.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=1, le=65535)
    snapshot_stale_after_s: int = Field(default=36 * 3600, ge=0)

    retention_days: int = Field(default=90, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str) -> str:
        parse_mqtt_url(value)
        return value

    @field_validator("broker_admin_url")
    @classmethod
    def _check_broker_admin_url(cls, value: str | None) -> str | None:
        if value:
            endpoint = parse_mqtt_url(value)
            if not endpoint.username or endpoint.password is None:
                raise ValueError("needs the admin's user:password@ (see `broker init`)")
        return value or None

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a libpq URL starting with postgresql://")
        return value

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: Any) -> dict[str, frozenset[str]]:
        return parse_api_tokens(value if value is not None else "")

    @property
    def mqtt(self) -> MqttEndpoint:
        return parse_mqtt_url(self.mqtt_url)

    def require_pseudonym_key(self) -> bytes:
        if self.pseudonym_key is None or len(self.pseudonym_key.get_secret_value()) < 16:
            raise ConfigError(
                "HEARTH_PSEUDONYM_KEY: must be set to a secret of at least 16 characters "
                "(scripts/services up writes one to .hearth/hearth.toml)"
            )
        return self.pseudonym_key.get_secret_value().encode()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = config_file_path()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def config_file_path() -> Path | None:
    explicit = os.environ.get("HEARTH_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"HEARTH_CONFIG: no such file {explicit!r}")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Build settings or raise :class:`ConfigError` naming the first bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        message = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"HEARTH_{field.upper()}: {message}") from None
    except (ValueError, OSError) as exc:  # e.g. an unreadable or malformed TOML file
        raise ConfigError(f"configuration: {exc}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
