from __future__ import annotations

import pytest

from hearth.db import DatabaseUnavailable, connect, redact_url
from hearth.errors import ConfigError
from hearth.settings import load_settings, parse_api_tokens, parse_mqtt_url


def test_mqtt_url_with_credentials_and_tls() -> None:
    ep = parse_mqtt_url("mqtts://dev%40x:p%3Ass@broker.local")
    assert (ep.host, ep.port, ep.tls, ep.username) == ("broker.local", 8883, True, "dev@x")
    assert ep.password is not None and ep.password.get_secret_value() == "p:ss"


@pytest.mark.parametrize(
    ("env", "value", "fragment"),
    [
        ("HEARTH_MQTT_URL", "http://localhost:1883", "HEARTH_MQTT_URL: scheme must be"),
        ("HEARTH_MQTT_URL", "mqtt://host:notaport", "HEARTH_MQTT_URL: bad port"),
        ("HEARTH_DATABASE_URL", "mysql://x", "HEARTH_DATABASE_URL: must be a libpq URL"),
        ("HEARTH_BATCH_MAX_MESSAGES", "0", "HEARTH_BATCH_MAX_MESSAGES:"),
        ("HEARTH_CONSENT_CACHE_MAX_AGE_S", "0", "HEARTH_CONSENT_CACHE_MAX_AGE_S:"),
        ("HEARTH_API_TOKENS", "shorttoken=admin", "at least 16 characters"),
        ("HEARTH_API_TOKENS", "abcdefghijklmnopq=root", "unknown scope"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_api_tokens_both_syntaxes() -> None:
    assert parse_api_tokens("aaaaaaaaaaaaaaaa=admin+features:read") == {
        "aaaaaaaaaaaaaaaa": frozenset({"admin", "features:read"})
    }
    assert parse_api_tokens('{"bbbbbbbbbbbbbbbb": ["features:read"]}') == {
        "bbbbbbbbbbbbbbbb": frozenset({"features:read"})
    }


def test_pseudonym_key_required_with_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEARTH_PSEUDONYM_KEY", raising=False)
    with pytest.raises(ConfigError, match="HEARTH_PSEUDONYM_KEY"):
        load_settings().require_pseudonym_key()


# -- secrets never reach a message (issue 11 §8) ---------------------------------------------
SECRET = "s3cret-token-0123456789abcdef"


@pytest.mark.parametrize(
    "value",
    [
        SECRET,  # a bare token, no "=scope"
        f"{SECRET}=root",  # unknown scope
        f"admin={SECRET}",  # token and scope swapped: the "scope" is the secret
        f"{SECRET[:10]}=admin",  # too short: still never echoed
        f"good-token-0123456789=admin,{SECRET}",
        f'{{"{SECRET}": ["root"]}}',
        f'{{"{SECRET}": 5}}',
        f'["{SECRET}"]',
        f'{{"{SECRET}": ["admin"',  # broken JSON
    ],
)
def test_api_token_errors_never_print_a_token(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HEARTH_API_TOKENS", value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("HEARTH_API_TOKENS: ")
    assert SECRET[:10] not in message and "s3cret" not in message


def test_settings_repr_shows_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_API_TOKENS", f"{SECRET}=admin")
    monkeypatch.setenv("HEARTH_DATABASE_URL", "postgresql://u:dbpass-1234@h/db")
    monkeypatch.setenv("HEARTH_MQTT_URL", "mqtt://u:mqpass-1234@h:1883")
    text = repr(load_settings()) + str(load_settings())
    for secret in (SECRET, "dbpass-1234", "mqpass-1234", "test-pseudonym-key"):
        assert secret not in text


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://u:pw-1234@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db?password=pw-1234", "postgresql://u@h/db?password=***"),
        (
            "postgresql://u@h/db?sslmode=require&Password=pw%2D1234&application_name=x",
            "postgresql://u@h/db?sslmode=require&Password=***&application_name=x",
        ),
        ("postgresql://u@h/db?sslpassword=pw-1234", "postgresql://u@h/db?sslpassword=***"),
        ("postgresql://u:p@h/db?password=q", "postgresql://u:***@h/db?password=***"),
        ("postgresql://u:pw%zz34@h/db", "postgresql://u:***@h/db"),  # malformed, still redacted
        ("postgresql://h/db", "postgresql://h/db"),
    ],
)
def test_database_url_passwords_are_redacted(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:pw%zz1234@h/db", "postgresql://u@h/db?password=pw%zz1234"],
)
def test_malformed_database_url_fails_at_start_without_its_password(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("HEARTH_DATABASE_URL", url)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("HEARTH_DATABASE_URL: not a valid libpq URL")
    assert "pw%zz1234" not in str(info.value) and "zz1234" not in str(info.value)


def test_connection_error_names_the_target_without_the_password() -> None:
    with pytest.raises(DatabaseUnavailable) as info:
        connect("postgresql://u:pw-98765@127.0.0.1:9/db?password=pw-43210", timeout_s=1)
    message = str(info.value)
    assert "127.0.0.1" in message and "pw-98765" not in message and "pw-43210" not in message


# -- event age vs retention (issue 11 §6) ----------------------------------------------------


def test_default_event_age_fits_the_default_retention() -> None:
    settings = load_settings()
    assert settings.max_event_age_days <= settings.retention_days
    assert (settings.max_event_age_days, settings.retention_days) == (90, 90)
    assert settings.dead_letter_retention_days == 14


@pytest.mark.parametrize(
    ("env", "ok"),
    [
        ({"HEARTH_MAX_EVENT_AGE_DAYS": "91"}, False),
        ({"HEARTH_RETENTION_DAYS": "30"}, False),
        ({"HEARTH_MAX_EVENT_AGE_DAYS": "400", "HEARTH_RETENTION_DAYS": "400"}, True),
        ({"HEARTH_MAX_EVENT_AGE_DAYS": "7"}, True),
    ],
)
def test_max_event_age_must_not_exceed_retention(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], ok: bool
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if ok:
        load_settings()
        return
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "HEARTH_MAX_EVENT_AGE_DAYS" in message and "HEARTH_RETENTION_DAYS" in message
    assert "\n" not in message
