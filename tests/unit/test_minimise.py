"""collector.minimise, the geohash encoder and hearth.pseudonym."""

from __future__ import annotations

import hashlib
import hmac
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.adapters import geohash
from collector.adapters.base import GeoPoint, Reading
from collector.minimise import (
    Minimiser,
    StoredReading,
    normalise_bssid,
    scrub_detail,
    scrub_payload,
)
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
    raw = (
        b'{"_type":"location","lat":52.5200086,"lon":13.404954,"SSID":"HomeNet-5G",'
        b'"BSSID":"AA:bb:cc:dd:ee:ff","tel":"+4915112345678","batt":"x"'
    )
    out = scrub_payload(raw, 4096)
    for secret in (b"52.5200086", b"13.404954", b"HomeNet-5G", b"AA:bb:cc", b"4915112345678"):
        assert secret not in out
    assert b'"batt":"x"' in out  # the diagnostic part survives
    assert scrub_payload(raw, 10) == raw[:10]


# -- dead-letter scrubbing: one row per form (issue 11 §4) -----------------------------------
# (form, payload, what must not survive). JSON payloads are scrubbed as a tree, the rest as text.
SCRUB_FORMS: list[tuple[str, bytes, list[bytes]]] = [
    ("mac colon", b'{"x":"AA:bb:cc:dd:ee:ff"}', [b"AA:bb", b"dd:ee:ff"]),
    ("mac colon, iOS short octets", b'{"x":"b0:f2:8:45:94:33"}', [b"b0:f2", b"94:33"]),
    ("mac dash", b'{"x":"aa-bb-cc-dd-ee-ff"}', [b"aa-bb", b"ee-ff"]),
    ("mac dotted", b'{"x":"aabb.ccdd.eeff"}', [b"aabb", b"eeff"]),
    ("mac bare 12-hex", b'{"x":"A42BB0112233"}', [b"A42BB0", b"112233"]),
    ("mac inside text", b'{"note":"ap a4:2b:b0:11:22:33 seen"}', [b"a4:2b", b"22:33"]),
    ("eui-64 (zigbee)", b'{"x":"0x00124b001234abcd"}', [b"00124b", b"1234abcd"]),
    ("phone with +", b'{"x":"+8613812345678"}', [b"13812345678"]),
    ("phone with + and spaces", b'{"x":"+49 151 1234 5678"}', [b"151 1234", b"5678"]),
    ("phone with dashes", b'{"x":"0151-1234-5678"}', [b"1234-5678", b"0151"]),
    ("phone (area) number", b'{"x":"(555) 123-4567"}', [b"123-4567"]),
    ("phone without +", b'{"x":"13812345678"}', [b"13812345678"]),
    ("phone as a number", b'{"x":13812345678}', [b"13812345678"]),
    ("imei as a string", b'{"x":"356938035643809"}', [b"356938035643809"]),
    ("imei as a number", b'{"x":356938035643809}', [b"356938035643809"]),
    ("imsi 15 digits", b'{"x":"460001234567890"}', [b"460001234567890"]),
    ("iccid 20 digits", b'{"x":"89860012345678901234"}', [b"89860012345678901234"]),
    ("17 digits", b'{"x":"12345678901234567"}', [b"12345678901234567"]),
    ("coordinate pair in a string", b'{"x":"31.23041,121.4737"}', [b"31.23", b"121.47"]),
    ("coordinate pair, 2 decimals", b'{"x":"31.23 121.47"}', [b"31.23", b"121.47"]),
    ("coordinate pair as an array", b'{"x":[121.4737,31.23041]}', [b"121.47", b"31.23"]),
    ("coordinate pair array 2 dec.", b'{"g":[31.23,121.47]}', [b"31.23", b"121.47"]),
    ("one coordinate as a number", b'{"x":52.5200086}', [b"52.52"]),
    ("E7 integers in a string", b'{"x":"312304100,1214737000"}', [b"312304100", b"1214737000"]),
    ("E7 integers as an array", b'{"x":[312304100,1214737000]}', [b"312304100", b"1214737000"]),
    ("E7 integer alone", b'{"x":312304100}', [b"312304100"]),
    ("NMEA with hemispheres", b'{"x":"3113.8246,N,12128.4220,E"}', [b"3113.82", b"12128.42"]),
    ("NMEA sentence", b'{"x":"$GPGGA,123519,4807.038,N,01131.000,E"}', [b"4807.0", b"1131.0"]),
    ("key phone, number value", b'{"phone":12345}', [b"12345"]),
    ("key phoneNumber, string", b'{"phoneNumber":"call me"}', [b"call me"]),
    ("key msisdn", b'{"msisdn":"x-42-y"}', [b"x-42-y"]),
    ("key imei, object value", b'{"imei":{"a":"b42"}}', [b"b42"]),
    ("key IMEI1", b'{"IMEI1":"abc"}', [b"abc"]),
    ("key SSID, string", b'{"SSID":"HomeNet"}', [b"HomeNet"]),
    ("key wifi_ssid", b'{"readings":{"wifi_ssid":"Cafe"}}', [b"Cafe"]),
    ("key BSSID, array value", b'{"BSSID":["a4","2b"]}', [b'"a4"', b'"2b"']),
    ("key mac_address", b'{"mac_address":"a4 2b"}', [b"a4 2b"]),
    ("key macAddress", b'{"macAddress":"a4 2b"}', [b"a4 2b"]),
    ("key lat, integer", b'{"lat":31}', [b"31"]),
    ("key lon, string", b'{"lon":"121"}', [b"121"]),
    ("key lng, number", b'{"lng":121.5}', [b"121.5"]),
    ("key latitudeE7", b'{"latitudeE7":312304100}', [b"312304100"]),
    ("key longitude, nested", b'{"pos":{"longitude":[121]}}', [b"121"]),
    ("key sim_id", b'{"readings":{"sim_id":"S1M-7"}}', [b"S1M-7"]),
    ("a key that is a MAC", b'{"aa:bb:cc:dd:ee:01":-60}', [b"aa:bb:cc"]),
    ("net_type outside the allow-list", b'{"readings":{"net_type":"Alices-Net"}}', [b"Alices"]),
    # Not JSON (bad_json): scrubbed as text, keys included, a value cut off mid-string too.
    ("text: cut-off ssid value", b'{"ssid":"HomeNe', [b"HomeNe"]),
    ("text: cut-off coordinates", b'{"lat":52.5200086,"lon":13.4', [b"52.52", b"13.4"]),
    ("text: binary prefix, mac", b'\xff\xfe"bssid": "aa:bb:cc:dd:ee:ff"', [b"aa:bb"]),
    ("text: key=value", b"tel=+4915112345678&imei=356938035643809", [b"49151", b"3569380"]),
    ("text: bare phone", b"call 13812345678 now", [b"13812345678"]),
    ("text: net_type", b'{"net_type":"Alices-Net",', [b"Alices"]),
]


@pytest.mark.parametrize(
    ("form", "payload", "secrets"), SCRUB_FORMS, ids=[f[0] for f in SCRUB_FORMS]
)
def test_scrub_payload_masks_every_form(form: str, payload: bytes, secrets: list[bytes]) -> None:
    out = scrub_payload(payload, 4096)
    for secret in secrets:
        assert secret not in out, f"{form}: {secret!r} survived in {out!r}"
    assert out != payload


KEPT_FORMS: list[tuple[str, bytes, bytes]] = [
    ("a plain reading", b'{"readings":{"battery_pct":76}}', b'"battery_pct":76'),
    ("an allowed net_type", b'{"readings":{"net_type":"wifi"}}', b'"net_type":"wifi"'),
    ("an ISO time", b'{"ts":"2024-05-01T08:15:30.123+08:00"}', b"2024-05-01T08:15:30.123+08:00"),
    ("epoch seconds under a time key", b'{"tst":1714531200}', b'"tst":1714531200'),
    ("a temperature", b'{"temperature":21.5,"humidity":45}', b'"temperature":21.5'),
    ("a keyed hash", b'{"h":"0123456789abcdef0123456789abcdef"}', b"0123456789abcdef0123"),
    ("a geohash", b'{"g":"wtw3sjq"}', b"wtw3sjq"),
]


@pytest.mark.parametrize(("form", "payload", "kept"), KEPT_FORMS, ids=[f[0] for f in KEPT_FORMS])
def test_scrub_payload_keeps_what_identifies_nobody(form: str, payload: bytes, kept: bytes) -> None:
    assert kept in scrub_payload(payload, 4096), form


@pytest.mark.parametrize("cut", range(20, 60))
def test_scrub_payload_scrubs_before_it_truncates(cut: int) -> None:
    # Whatever the limit, no prefix of an identifier that the scrubber would catch survives.
    payload = b'{"note":"x","x":"+4915112345678","y":"356938035643809","z":"aa:bb:cc:dd:ee:ff"}'
    out = scrub_payload(payload, cut)
    assert len(out) <= cut
    for fragment in (b"+49151", b"3569380", b"aa:bb:cc"):
        assert fragment not in out


@pytest.mark.parametrize(
    ("detail", "secret"),
    [
        ("readings.aa:bb:cc:dd:ee:ff: Input should be a valid number", "aa:bb:cc"),
        ("unreadable time '+4915112345678'", "4915112345678"),
        ("epoch seconds 356938035643809 out of range", "356938035643809"),
        ("x" * 490 + " 356938035643809", "3569380"),  # cut after scrubbing, not before
    ],
)
def test_scrub_detail_masks_then_truncates(detail: str, secret: str) -> None:
    out = scrub_detail(detail)
    assert secret not in out and len(out) <= 500


def test_scrub_detail_keeps_a_plain_reason() -> None:
    detail = "2099-01-01T00:00:00+00:00 is 27000 days, 0:00:00 in the future"
    assert scrub_detail(detail) == detail


@given(st.binary(max_size=600), st.integers(min_value=0, max_value=700))
def test_scrub_payload_never_raises_and_respects_the_limit(payload: bytes, limit: int) -> None:
    assert len(scrub_payload(payload, limit)) <= limit


def test_scrub_payload_survives_deep_nesting() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert scrub_payload(deep, 64) == deep[:64]


ADVERSARIAL = {  # 60 kB shapes that make an unbounded regex backtrack quadratically
    "spaces after a decimal": b"1.23" + b" " * 60_000 + b"x",
    "spaces in a JSON string": b'{"x":"1.23' + b" " * 60_000 + b'"}',
    "spaces after an E7 integer": b"1234567" + b" " * 60_000 + b"x",
    "spaces after a quoted key": b'"lat":' + b" " * 60_000 + b",",
    "spaces after NMEA": b"1234.5" + b" " * 60_000 + b",",
    "digit groups": b"12-34 " * 10_000,
    "hex octets": b"a:" * 30_000,
}


@pytest.mark.parametrize("payload", ADVERSARIAL.values(), ids=list(ADVERSARIAL))
def test_scrubbing_a_hostile_payload_takes_linear_time(payload: bytes) -> None:
    # About 0.1 s each here; a quadratic pattern takes minutes (a stalled replica).
    started = time.perf_counter()
    scrub_payload(payload, 4096)
    scrub_detail(payload.decode())
    assert time.perf_counter() - started < 2.0
