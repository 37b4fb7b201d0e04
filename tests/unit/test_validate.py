"""collector.validate: catalogue checks and event-time resolution (incl. DST)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from collector.adapters.base import DeviceMessage, GeoPoint, Reading, ReadingValue, Reason, Rejected
from collector.validate import check_readings, resolve_event_time
from hearth.signals import SIGNALS


def msg(*readings: tuple[str, ReadingValue]) -> DeviceMessage:
    return DeviceMessage(
        format="hearth",
        external_id="d",
        event_time=None,
        readings=tuple(Reading(s, v) for s, v in readings),
    )


@pytest.mark.parametrize(
    "reading",
    [
        ("battery_pct", 0),
        ("battery_pct", 100.0),
        ("rssi_dbm", -130),
        ("temperature_c", -12.5),
        ("net_type", "wifi"),
        ("position", GeoPoint(-90.0, 180.0)),
        ("position", GeoPoint(0, 0)),
        ("wifi_ssid", "x" * 256),
        ("sim_id", "8986001234"),
    ],
)
def test_valid_readings_pass(reading: tuple[str, ReadingValue]) -> None:
    check_readings(msg(reading))


@pytest.mark.parametrize(
    "reading",
    [
        ("battery_pct", -0.1),
        ("battery_pct", 100.5),
        ("battery_pct", float("nan")),
        ("battery_pct", float("inf")),
        ("battery_pct", True),
        ("battery_pct", "50"),
        ("battery_pct", GeoPoint(1, 1)),
        ("net_type", ""),
        ("net_type", "x" * 129),
        ("net_type", 1.0),
        ("net_type", "Alice's iPhone"),  # free text: only the catalogue's allowed values
        ("net_type", "WIFI"),
        ("net_type", "5g"),
        ("position", GeoPoint(90.1, 0)),
        ("position", GeoPoint(0, -180.5)),
        ("position", GeoPoint(float("nan"), 0)),
        ("position", "31.2,121.4"),
        ("wifi_ssid", "x" * 257),
        ("wifi_bssid", 12.0),
        ("geohash", "wtw3sjq"),  # derived signals are produced by minimisation only
        ("wifi_bssid_hash", "aa:bb"),
        ("sim_id_hash", "abc"),
        ("bogus", 1.0),
    ],
)
def test_invalid_readings_are_schema_errors(reading: tuple[str, ReadingValue]) -> None:
    with pytest.raises(Rejected) as info:
        check_readings(msg(("online", 1), reading))
    assert info.value.reason is Reason.SCHEMA


@pytest.mark.parametrize("value", SIGNALS["net_type"].allowed or ())
def test_net_type_allow_list_is_the_catalogues(value: str) -> None:
    assert set(SIGNALS["net_type"].allowed or ()) == {"wifi", "mobile", "offline", "ethernet"}
    check_readings(msg(("net_type", value)))


def test_refused_categorical_value_is_not_in_the_detail() -> None:
    with pytest.raises(Rejected) as info:
        check_readings(msg(("net_type", "+4915112345678")))
    assert "4915112345678" not in info.value.detail and "net_type" in info.value.detail


def test_every_device_sent_categorical_signal_has_an_allow_list() -> None:
    derived = {s.stored_as for s in SIGNALS.values() if s.stored_as}
    for sig in SIGNALS.values():
        if sig.kind == "categorical" and sig.name not in derived:
            assert sig.allowed, f"{sig.name}: free-text categorical input needs an allow-list"


def test_empty_readings_rejected() -> None:
    with pytest.raises(Rejected) as info:
        check_readings(msg())
    assert info.value.reason is Reason.SCHEMA


def test_every_numeric_catalogue_bound_is_enforced() -> None:
    for sig in SIGNALS.values():
        if sig.kind != "numeric":
            continue
        assert sig.low is not None and sig.high is not None
        check_readings(msg((sig.name, sig.low), (sig.name, sig.high)))
        with pytest.raises(Rejected):
            check_readings(msg((sig.name, sig.high + 1)))


RECEIVED = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
LIMITS = {"received_at": RECEIVED, "tz": "Europe/Berlin", "max_skew_s": 600, "max_age_days": 400}


def test_no_event_time_uses_receive_time() -> None:
    assert resolve_event_time(None, **LIMITS) == (RECEIVED, True)  # type: ignore[arg-type]


def test_aware_time_is_converted_to_utc() -> None:
    t = datetime(2024, 6, 1, 19, 30, tzinfo=timezone(timedelta(hours=8)))
    got, received = resolve_event_time(t, **LIMITS)  # type: ignore[arg-type]
    assert got == datetime(2024, 6, 1, 11, 30, tzinfo=UTC)
    assert got.tzinfo is UTC
    assert received is False


def test_naive_time_is_read_in_device_zone() -> None:
    got, _ = resolve_event_time(datetime(2024, 6, 1, 13, 0), **LIMITS)  # type: ignore[arg-type]
    assert got == datetime(2024, 6, 1, 11, 0, tzinfo=UTC)  # CEST = UTC+2


def test_dst_ambiguous_time_takes_first_occurrence() -> None:
    # 2024-10-27 02:30 happens twice in Berlin; fold=0 → the CEST one (UTC+2).
    limits = {**LIMITS, "received_at": datetime(2024, 10, 27, 3, 0, tzinfo=UTC)}
    got, _ = resolve_event_time(datetime(2024, 10, 27, 2, 30), **limits)  # type: ignore[arg-type]
    assert got == datetime(2024, 10, 27, 0, 30, tzinfo=UTC)


def test_dst_nonexistent_time_shifts_forward() -> None:
    # 2024-03-31 02:30 does not exist in Berlin; read with the CET offset → 01:30 UTC = 03:30 CEST.
    limits = {**LIMITS, "received_at": datetime(2024, 3, 31, 3, 0, tzinfo=UTC)}
    got, _ = resolve_event_time(datetime(2024, 3, 31, 2, 30), **limits)  # type: ignore[arg-type]
    assert got == datetime(2024, 3, 31, 1, 30, tzinfo=UTC)


def test_small_future_skew_is_accepted_larger_rejected() -> None:
    ok = RECEIVED + timedelta(seconds=600)
    assert resolve_event_time(ok, **LIMITS)[0] == ok  # type: ignore[arg-type]
    with pytest.raises(Rejected) as info:
        resolve_event_time(ok + timedelta(seconds=1), **LIMITS)  # type: ignore[arg-type]
    assert info.value.reason is Reason.BAD_TIMESTAMP


def test_too_old_is_rejected_as_too_old_not_bad_timestamp() -> None:
    ok = RECEIVED - timedelta(days=400)
    assert resolve_event_time(ok, **LIMITS)[0] == ok  # type: ignore[arg-type]
    with pytest.raises(Rejected) as info:
        resolve_event_time(ok - timedelta(seconds=1), **LIMITS)  # type: ignore[arg-type]
    assert info.value.reason is Reason.TOO_OLD


def test_absurd_times_are_bad_timestamps() -> None:
    for t in (datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59), datetime(1970, 1, 1, tzinfo=UTC)):
        with pytest.raises(Rejected) as info:
            resolve_event_time(t, **LIMITS)  # type: ignore[arg-type]
        assert info.value.reason is Reason.BAD_TIMESTAMP


def test_unknown_zone_for_naive_time_is_bad_timestamp() -> None:
    limits = {**LIMITS, "tz": "Mars/Olympus_Mons"}
    with pytest.raises(Rejected) as info:
        resolve_event_time(datetime(2024, 6, 1, 13, 0), **limits)  # type: ignore[arg-type]
    assert info.value.reason is Reason.BAD_TIMESTAMP
