from __future__ import annotations

import pytest

from hearth.settings import ConfigError, load_settings, parse_api_tokens, parse_mqtt_url


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
