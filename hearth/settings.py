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

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from hearth.db import redact_secrets, redact_url
from hearth.errors import ConfigError

DEFAULT_DATABASE_URL = "postgresql://hearth:hearth@127.0.0.1:5432/hearth"
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"

DEFAULT_CONFIG_FILE = Path(".hearth/hearth.toml")
API_SCOPES = frozenset({"features:read", "scores:read", "admin"})


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


def check_dask_scheduler(address: str) -> str:
    """A Dask scheduler address, ``tcp://host:port`` or ``tls://host:port``."""
    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls") or not parts.hostname:
        raise ValueError(f"must be tcp://host:port or tls://host:port, got {address!r}")
    return address


def parse_api_tokens(raw: str | dict[str, Any]) -> dict[str, frozenset[str]]:
    """Tokens → scopes, from JSON (``{"tok": ["admin"]}``) or ``tok=scope+scope,tok2=scope``.

    Errors name the entry by its position, never by its text: a malformed entry, or token and
    scope swapped, would otherwise print a secret to a terminal or a log.
    """
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            return {}
        if text.startswith("{"):
            try:
                raw = json.loads(text)
            except ValueError:
                raise ValueError('not valid JSON (expected {"token": ["scope", ...]})') from None
        else:
            raw = {}
            for n, item in enumerate(text.split(","), 1):
                token, sep, scopes = item.strip().partition("=")
                if not sep or not token:
                    raise ValueError(f"entry {n}: expected token=scope[+scope]")
                raw[token] = scopes.split("+")
    if not isinstance(raw, dict):
        raise ValueError("expected a JSON object of token → scopes")
    tokens: dict[str, frozenset[str]] = {}
    for n, (token, scopes) in enumerate(raw.items(), 1):
        if not isinstance(token, str) or len(token) < 16:
            raise ValueError(f"entry {n}: every token must be at least 16 characters")
        listed: object = [scopes] if isinstance(scopes, str) else scopes
        if not isinstance(listed, list | tuple | frozenset | set) or not all(
            isinstance(x, str) for x in listed
        ):
            raise ValueError(f"entry {n}: scopes must be a list of strings")
        scope_set = frozenset(listed)
        if not scope_set <= API_SCOPES:
            raise ValueError(f"entry {n}: unknown scope; known: {', '.join(sorted(API_SCOPES))}")
        tokens[token] = scope_set
    return tokens


class Settings(BaseSettings):
    """Every knob of Hearth. Field ``x`` is read from ``HEARTH_X``."""

    model_config = SettingsConfigDict(
        env_prefix="HEARTH_", extra="ignore", case_sensitive=False, frozen=True
    )

    # repr=False: URLs may carry passwords and tokens are secrets; a logged Settings shows none.
    database_url: str = Field(default=DEFAULT_DATABASE_URL, repr=False)
    # A streaming replica of database_url that the engine, the feature service and the report
    # read from (hearth.replica); every write and the collector use database_url. Unset: reads
    # go to database_url too.
    database_read_url: str | None = Field(default=None, repr=False)
    # How long a read waits for the replica to replay up to the primary's position before it
    # refuses (hearth.replica.ReplicaBehind); 0 refuses at once when it is behind.
    replica_max_wait_s: float = Field(default=30.0, ge=0)
    # A Dask scheduler (tcp://host:8786) that `materialize` and `report` run their user chunks
    # on (features.distributed); unset: they run in this process.
    dask_scheduler: str | None = None
    mqtt_url: str = Field(default=DEFAULT_MQTT_URL, repr=False)
    pseudonym_key: SecretStr | None = None
    api_tokens: Annotated[dict[str, frozenset[str]], NoDecode] = Field(
        default_factory=dict, repr=False
    )

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
    # 7 ≈ 150 m; never finer (docs/invariants.md#7)
    geohash_precision: int = Field(default=7, ge=1, le=7)
    max_clock_skew_s: int = Field(default=600, ge=0)
    # Older events are dead-lettered "too_old"; never more than retention_days (checked below).
    max_event_age_days: int = Field(default=90, ge=1)
    dead_letter_retention_days: int = Field(default=14, ge=1)
    # The collector stops reading when its registry/consent caches have not been confirmed
    # against the database for this long (LISTEN connection down), rather than ingest on them.
    consent_cache_max_age_s: int = Field(default=30, ge=1)

    # Collector observability port (/metrics, /healthz); 0 disables.
    collector_http_port: int = Field(default=9108, ge=0, le=65535)
    # Replica registry (collector/sessions.py): heartbeat period, and how long a replica id may
    # go unseen before its possibly-queuing broker session is reported as stale.
    collector_heartbeat_s: int = Field(default=10, ge=1)
    collector_stale_after_s: int = Field(default=300, ge=1)

    # Feature service.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=1, le=65535)
    snapshot_stale_after_s: int = Field(default=36 * 3600, ge=0)
    # Bounds on the work one request can cause (413 past the row limits).
    online_max_users: int = Field(default=1_000, ge=1)
    historical_max_rows: int = Field(default=100_000, ge=1)
    service_statement_timeout_ms: int = Field(default=30_000, ge=0)  # per SQL statement; 0 = off
    # The model POST /v1/scores scores with (a `python -m features train` directory); unset: 503.
    score_model: Path | None = None
    http_header_timeout_s: float = Field(default=10.0, gt=0)  # request line + headers

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

    @field_validator("database_read_url")
    @classmethod
    def _check_database_read_url(cls, value: str | None) -> str | None:
        return cls._check_database_url(value) if value else None

    @field_validator("dask_scheduler")
    @classmethod
    def _check_dask_scheduler(cls, value: str | None) -> str | None:
        return check_dask_scheduler(value) if value else None

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a libpq URL starting with postgresql://")
        # Parsed now (no connection), so a malformed URL fails at start with the password
        # redacted, instead of later in a pool's log line that quotes it.
        try:
            conninfo_to_dict(value)
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(
                f"not a valid libpq URL ({redact_secrets(first, value)}): {redact_url(value)}"
            ) from None
        return value

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: Any) -> dict[str, frozenset[str]]:
        return parse_api_tokens(value if value is not None else "")

    @model_validator(mode="after")
    def _check_event_age(self) -> Settings:
        # A reading older than raw retention may land in a chunk already dropped; its hourly
        # bucket would then be rebuilt from that reading alone (issue 11 §6).
        if self.max_event_age_days > self.retention_days:
            raise ValueError(
                f"HEARTH_MAX_EVENT_AGE_DAYS ({self.max_event_age_days}) must not exceed "
                f"HEARTH_RETENTION_DAYS ({self.retention_days}): late readings older than "
                "the raw retention would rebuild history from partial data"
            )
        return self

    @property
    def read_url(self) -> str:
        """Where reads for computation go: the replica when one is set, else the primary."""
        return self.database_read_url or self.database_url

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
        err = exc.errors(include_input=False)[0]
        message = str(err["msg"]).removeprefix("Value error, ")
        if not err["loc"]:  # a check across variables names them itself
            raise ConfigError(message) from None
        raise ConfigError(f"HEARTH_{str(err['loc'][0]).upper()}: {message}") from None
    except (ValueError, OSError) as exc:  # e.g. an unreadable or malformed TOML file
        raise ConfigError(f"configuration: {exc}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
