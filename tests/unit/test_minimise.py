"""collector.minimise, the geohash encoder and hearth.pseudonym."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.adapters import geohash
from collector.adapters.base import GeoPoint, Reading
from collector.minimise import Minimiser, StoredReading, normalise_bssid
from hearth.pseudonym import keyed_hash
from hearth.signals import SIGNALS

KEY = b"unit-test-key"
HEX32 = re.compile(r"[0-9a-f]{32}")


# -- pseudonym -------------------------------------------------------------------------------


def test_keyed_hash_is_truncated_hmac_sha256_over_domain_nul_value() -> None:
    expected = hmac.new(KEY, b"wifi_ssid\0HomeNet", hashlib.sha256).hexdigest()[:32]
    assert keyed_hash(KEY, "wifi_ssid", "HomeNet") == expected
    assert HEX32.fullmatch(expected)


def test_keyed_hash_separates_keys_domains_and_boundaries() -> None:
    base = keyed_hash(KEY, "ab", "c")
    assert keyed_hash(KEY, "a", "bc") != base
    assert keyed_hash(b"other", "ab", "c") != base
    assert keyed_hash(KEY, "ab", "c") == base


def test_keyed_hash_refuses_empty_key() -> None:
    with pytest.raises(ValueError):
        keyed_hash(b"", "d", "v")


# -- geohash ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lat", "lon", "precision", "expected"),
    [
        (42.6, -5.6, 5, "ezs42"),  # Wikipedia's example
        (57.64911, 10.40744, 11, "u4pruydqqvj"),
        (31.23041, 121.4737, 7, "wtw3sjq"),
        (-90.0, -180.0, 7, "0000000"),
        (90.0, 180.0, 7, "zzzzzzz"),
        (0.0, 0.0, 1, "s"),
    ],
)
def test_geohash_known_values(lat: float, lon: float, precision: int, expected: str) -> None:
    assert geohash.encode(lat, lon, precision) == expected


@given(
    st.floats(min_value=-90, max_value=90),
    st.floats(min_value=-180, max_value=180),
    st.integers(min_value=1, max_value=12),
)
def test_geohash_round_trip_lands_in_cell(lat: float, lon: float, precision: int) -> None:
    code = geohash.encode(lat, lon, precision)
    assert len(code) == precision
    lat_lo, lat_hi, lon_lo, lon_hi = geohash.decode_bounds(code)
    eps = 1e-9  # float rounding exactly at a cell edge
    assert lat_lo - eps <= lat <= lat_hi + eps
    assert lon_lo - eps <= lon <= lon_hi + eps
    # a shorter hash is a prefix: cells nest
    assert geohash.encode(lat, lon, max(1, precision - 1)) == code[: max(1, precision - 1)]


def test_geohash_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        geohash.encode(91, 0)
    with pytest.raises(ValueError):
        geohash.encode(0, 0, 13)
    with pytest.raises(ValueError):
        geohash.decode_bounds("abc")  # 'a' is not in the alphabet


# -- minimiser -------------------------------------------------------------------------------


def test_minimise_maps_each_kind() -> None:
    m = Minimiser(KEY)
    out = m.minimise(
        [
            Reading("position", GeoPoint(31.23041, 121.4737)),
            Reading("battery_pct", 76),
            Reading("net_type", "wifi"),
            Reading("wifi_ssid", "HomeNet"),
            Reading("wifi_bssid", "A4-2B-B0-11-22-33"),
            Reading("sim_id", "8986001234"),
        ]
    )
    assert out == [
        StoredReading("geohash", "categorical", "wtw3sjq"),
        StoredReading("battery_pct", "numeric", 76.0),
        StoredReading("net_type", "categorical", "wifi"),
        StoredReading("wifi_ssid_hash", "categorical", keyed_hash(KEY, "wifi_ssid", "HomeNet")),
        StoredReading(
            "wifi_bssid_hash", "categorical", keyed_hash(KEY, "wifi_bssid", "a4:2b:b0:11:22:33")
        ),
        StoredReading("sim_id_hash", "categorical", keyed_hash(KEY, "sim_id", "8986001234")),
    ]
    assert type(out[1].value) is float


def test_output_is_always_a_stored_catalogue_signal() -> None:
    m = Minimiser(KEY)
    out = m.minimise(
        [Reading("position", GeoPoint(1.0, 2.0)), Reading("wifi_ssid", "x"), Reading("online", 1)]
    )
    for r in out:
        assert SIGNALS[r.signal].kind == r.kind


def test_raw_values_never_in_output() -> None:
    m = Minimiser(KEY)
    raw = ["HomeNet-Secret", "aa:bb:cc:dd:ee:ff", "89860012345678901234"]
    out = m.minimise(
        [
            Reading("position", GeoPoint(31.230416, 121.473701)),
            Reading("wifi_ssid", raw[0]),
            Reading("wifi_bssid", raw[1]),
            Reading("sim_id", raw[2]),
        ]
    )
    text = repr(out)
    for value in [*raw, "31.23", "121.47"]:
        assert value not in text


@pytest.mark.parametrize(
    ("bssid", "normal"),
    [
        ("A4:2B:B0:11:22:33", "a4:2b:b0:11:22:33"),
        ("a4-2b-b0-11-22-33", "a4:2b:b0:11:22:33"),
        ("a42b.b011.2233", "a4:2b:b0:11:22:33"),
        ("A42BB0112233", "a4:2b:b0:11:22:33"),
        ("b0:f2:8:45:94:33", "b0:f2:08:45:94:33"),  # iOS drops leading zeros
        ("Not-A-Mac", "not-a-mac"),
        ("1:2:3", "1:2:3"),
    ],
)
def test_bssid_normalisation(bssid: str, normal: str) -> None:
    assert normalise_bssid(bssid) == normal


def test_bssid_notations_give_one_pseudonym_ssid_is_case_sensitive() -> None:
    m = Minimiser(KEY)
    a, b, c, d = m.minimise(
        [
            Reading("wifi_bssid", "A4:2B:B0:11:22:33"),
            Reading("wifi_bssid", "a4-2b-b0-11-22-33"),
            Reading("wifi_ssid", "Home"),
            Reading("wifi_ssid", "home"),
        ]
    )
    assert a.value == b.value
    assert c.value != d.value  # SSIDs are case-sensitive: stored as is


@pytest.mark.parametrize(("asked", "used"), [(7, 7), (5, 5), (12, 7), (0, 1), (-3, 1)])
def test_geohash_precision_is_clamped_to_at_most_7(asked: int, used: int) -> None:
    m = Minimiser(KEY, geohash_precision=asked)
    assert m.geohash_precision == used
    [r] = m.minimise([Reading("position", GeoPoint(31.23041, 121.4737))])
    assert r.value == "wtw3sjq"[:used]


def test_minimiser_needs_a_key() -> None:
    with pytest.raises(ValueError):
        Minimiser(b"")


def test_unvalidated_readings_fail_loudly() -> None:
    m = Minimiser(KEY)
    with pytest.raises(KeyError):
        m.minimise([Reading("geohash", "wtw3sjqxyzab")])
    with pytest.raises(TypeError):
        m.minimise([Reading("position", "31,121")])


def test_scrub_payload_masks_coordinates_and_identifiers() -> None:
    from collector.minimise import scrub_payload

    raw = (
        b'{"_type":"location","lat":52.5200086,"lon":13.404954,"SSID":"HomeNet-5G",'
        b'"BSSID":"AA:bb:cc:dd:ee:ff","tel":"+4915112345678","batt":"x"'
    )
    out = scrub_payload(raw, 4096)
    for secret in (b"52.5200086", b"13.404954", b"HomeNet-5G", b"AA:bb:cc", b"4915112345678"):
        assert secret not in out
    assert b'"batt":"x"' in out  # the diagnostic part survives
    assert scrub_payload(raw, 10) == raw[:10]
