"""Pure parts of the registry/consent module: device topics, notifications, password hashes."""

from __future__ import annotations

import pytest

from collector.broker.passwd import mosquitto_password_hash, verify_mosquitto_password
from hearth.admin import evidence_hash
from hearth.formats import FORMATS, device_topics
from hearth.ledger import consent_notification, parse_consent_notification
from hearth.signals import Category


def test_every_format_has_topics_rooted_in_its_own_id() -> None:
    assert device_topics("hearth", "ignored", "dev1") == ("hearth/v1/dev1/#",)
    assert device_topics("owntracks", "alice/phone", "d1") == ("owntracks/alice/phone/#",)
    assert device_topics("tasmota", "plug_7", "d2") == ("tele/plug_7/#",)
    assert device_topics("zigbee2mqtt", "door", "d3") == (
        "zigbee2mqtt/door",
        "zigbee2mqtt/door/availability",
    )
    assert device_topics("shelly", "shellyplug-a1", "d4") == (
        "shellyplug-a1/events/rpc",
        "shellyplug-a1/status/switch:0",
        "shellyplug-a1/online",
    )
    for fmt in FORMATS:
        assert device_topics(fmt, "a/b" if fmt == "owntracks" else "x", "d")
    with pytest.raises(ValueError, match="unknown device format"):
        device_topics("x10", "a", "d")


def test_notification_round_trip() -> None:
    payload = consent_notification("withdraw", "u1", Category.LOCATION)
    change = parse_consent_notification(payload)
    assert (change.action, change.user_id, change.category) == ("withdraw", "u1", "location")


def test_password_hash_is_salted_and_verifiable() -> None:
    a, b = mosquitto_password_hash("pw"), mosquitto_password_hash("pw")
    assert a != b and a.startswith("$7$101$")
    assert verify_mosquitto_password("pw", a) and not verify_mosquitto_password("pX", a)
    assert not verify_mosquitto_password("pw", "$6$junk")


def test_evidence_is_hashed_canonically() -> None:
    assert evidence_hash({"b": 1, "a": 2}) == evidence_hash({"a": 2, "b": 1})
    assert evidence_hash("signed form") != evidence_hash("signed form!")
    assert "signed" not in evidence_hash("signed form")
