"""Minimisation: the last step before anything is written (docs/invariants.md#7).

Raw coordinates become a geohash of precision 7 or coarser; Wi-Fi SSID/BSSID and SIM ids become
keyed hashes (:func:`hearth.pseudonym.keyed_hash`). Everything else passes through typed for its
table: numeric as ``float``, categorical as ``str``. The output can only hold catalogue signals of
kind numeric or categorical, so a raw value has no way to reach disk.

Hot path: one dict lookup per reading, tables built once per :class:`Minimiser`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Final, Literal, NamedTuple

from collector.adapters import geohash
from collector.adapters.base import GeoPoint, Reading, ReadingValue
from hearth.pseudonym import (
    DOMAIN_DEAD_LETTER,
    DOMAIN_SIM_ID,
    DOMAIN_WIFI_BSSID,
    DOMAIN_WIFI_SSID,
    keyed_digest,
    keyed_hash,
)
from hearth.signals import SIGNALS

MAX_GEOHASH_PRECISION: Final = 7  # ~150 m; never finer (docs/invariants.md#7)
HASH_CACHE_SIZE: Final = 16384  # per raw signal and Minimiser

StoredKind = Literal["numeric", "categorical"]


class StoredReading(NamedTuple):
    """One value as written: ``signal`` is a stored (non-raw) catalogue name."""

    signal: str
    kind: StoredKind
    value: float | str


def normalise_bssid(bssid: str) -> str:
    """``AA-BB-CC-DD-EE-FF`` / ``aabb.ccdd.eeff`` / ``AABBCCDDEEFF`` / iOS's ``b0:f2:8:45:94:33``
    → ``aa:bb:cc:dd:ee:ff``.

    Phones and routers print the same MAC in different notations (iOS drops leading zeros of
    each octet); one notation keeps one access point one pseudonym. Strings that are not a
    48-bit MAC are only lower-cased.
    """
    lowered = bssid.lower()
    if _COLON_MAC.fullmatch(lowered):  # the common notation: no rebuilding
        return lowered
    octets = _SEPARATORS.split(lowered)
    if len(octets) == 6 and all(_OCTET.fullmatch(o) for o in octets):
        return ":".join(o.zfill(2) for o in octets)
    hex_digits = "".join(c for c in lowered if c not in ":-. ")
    if len(hex_digits) == 12 and _HEX12.fullmatch(hex_digits):
        return ":".join(hex_digits[i : i + 2] for i in range(0, 12, 2))
    return lowered


_COLON_MAC: Final = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_SEPARATORS: Final = re.compile(r"[:-]")
_OCTET: Final = re.compile(r"[0-9a-f]{1,2}")
_HEX12: Final = re.compile(r"[0-9a-f]{12}")


# tuple.__new__ skips the Python-level NamedTuple constructor frame (hot path).
_new = tuple.__new__


class Minimiser:
    """Turns validated readings into what may be stored, with one pseudonym key."""

    def __init__(self, key: bytes, geohash_precision: int = MAX_GEOHASH_PRECISION) -> None:
        if not key:
            raise ValueError("Minimiser needs a non-empty pseudonym key")
        self._key = key
        self._precision = max(1, min(MAX_GEOHASH_PRECISION, geohash_precision))
        # signal name → function(value) → StoredReading, built once.
        table: dict[str, Callable[[ReadingValue], StoredReading]] = {}
        for sig in SIGNALS.values():
            if sig.kind == "numeric":
                table[sig.name] = self._numeric(sig.name)
            elif sig.kind == "categorical" and sig.name not in _DERIVED:
                table[sig.name] = self._categorical(sig.name)
        table["position"] = self._position(_stored_as("position"))
        table["wifi_ssid"] = self._hashed(_stored_as("wifi_ssid"), DOMAIN_WIFI_SSID, None)
        table["wifi_bssid"] = self._hashed(
            _stored_as("wifi_bssid"), DOMAIN_WIFI_BSSID, normalise_bssid
        )
        table["sim_id"] = self._hashed(_stored_as("sim_id"), DOMAIN_SIM_ID, None)
        unhandled = [s.name for s in SIGNALS.values() if s.kind == "raw" and s.name not in table]
        if unhandled:  # a new raw signal needs a minimisation rule before it can be accepted
            raise RuntimeError(f"no minimisation rule for raw signal(s) {unhandled}")
        self._table: Final = table

    @property
    def geohash_precision(self) -> int:
        return self._precision

    def dead_letter_digest(self, topic: str, payload: bytes) -> bytes:
        """Dedupe key of a dead letter: keyed, so it cannot confirm a guessed payload."""
        return keyed_digest(
            self._key, DOMAIN_DEAD_LETTER, topic.encode("utf-8", "surrogateescape"), payload
        )

    def minimise(self, readings: Sequence[Reading]) -> list[StoredReading]:
        """Stored form of each reading, in order. Raises KeyError/TypeError on a reading that
        :func:`collector.validate.check_readings` would have rejected (call it first)."""
        table = self._table
        return [table[r.signal](r.value) for r in readings]

    # -- per-kind converters (closures keep the per-call work to the conversion itself) --

    @staticmethod
    def _numeric(name: str) -> Callable[[ReadingValue], StoredReading]:
        def convert(value: ReadingValue) -> StoredReading:
            if isinstance(value, str | GeoPoint):
                raise TypeError(f"{name}: not a number")
            return _new(StoredReading, (name, "numeric", float(value)))

        return convert

    @staticmethod
    def _categorical(name: str) -> Callable[[ReadingValue], StoredReading]:
        def convert(value: ReadingValue) -> StoredReading:
            if type(value) is not str:
                raise TypeError(f"{name}: not a string")
            return _new(StoredReading, (name, "categorical", value))

        return convert

    def _position(self, target: str) -> Callable[[ReadingValue], StoredReading]:
        precision = self._precision
        encode = geohash.encode

        def convert(value: ReadingValue) -> StoredReading:
            if type(value) is not GeoPoint:
                raise TypeError("position: not a GeoPoint")
            return _new(
                StoredReading, (target, "categorical", encode(value.lat, value.lon, precision))
            )

        return convert

    def _hashed(
        self, target: str, domain: str, normalise: Callable[[str], str] | None
    ) -> Callable[[ReadingValue], StoredReading]:
        key = self._key

        # Devices report the same few networks over and over: memoise the HMAC. The raw ids
        # stay in this process's memory only (as they already are while being processed).
        @lru_cache(maxsize=HASH_CACHE_SIZE)
        def pseudonym(raw: str) -> StoredReading:
            return StoredReading(target, "categorical", keyed_hash(key, domain, raw))

        def convert(value: ReadingValue) -> StoredReading:
            if type(value) is not str:
                raise TypeError(f"{target}: not a string")
            raw = normalise(value) if normalise is not None else value
            return pseudonym(raw)

        return convert


_DERIVED: Final = frozenset(s.stored_as for s in SIGNALS.values() if s.stored_as)


def _stored_as(raw_signal: str) -> str:
    target = SIGNALS[raw_signal].stored_as
    if target is None:  # a catalogue edit that forgot stored_as must fail at start, loudly
        raise RuntimeError(f"signal {raw_signal!r} is raw but has no stored_as")
    return target


# --- Dead letters ---------------------------------------------------------------------------
# A rejected message is kept for diagnosis, but it may be a location fix with one bad field:
# invariant 7 holds for dead letters too. Everything is scrubbed *before* it is cut to size, so
# no identifier can lose the character that made it recognisable. Masking is deliberately
# greedy: a quarantine copy is for seeing a payload's shape, and losing a sensor value that
# looked like a coordinate costs nothing.

REDACTED: Final = "<redacted>"
MAX_DETAIL_CHARS: Final = 500

# Keys whose value is masked whatever its JSON type: a key is split into words (snake, kebab,
# camel case, digits), and any word in this set marks it ("wifiBSSID", "latitudeE7", "sim_id").
_SENSITIVE_WORDS: Final = frozenset(
    {
        "phone", "telephone", "tel", "msisdn", "imei", "imsi", "iccid", "meid", "sim",
        "ssid", "bssid", "essid", "mac", "macaddr", "macaddress", "ieee", "eui",
        "lat", "latitude", "lon", "lng", "longitude",
    }
)  # fmt: skip
# Numeric values under these keys are times (epoch seconds look like phone numbers).
_TIME_WORDS: Final = frozenset({"ts", "tst", "time", "timestamp", "date", "seen", "epoch", "at"})
# Closed-vocabulary categoricals (net_type): a value outside the allow-list is free text.
_ALLOWED_VALUES: Final = {s.name: frozenset(s.allowed) for s in SIGNALS.values() if s.allowed}
_KEY_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")

# Every pattern below is bounded (no unbounded run before something that may fail to follow):
# a payload is attacker-controlled, and a quadratic regex on 64 KiB would stall a replica.
# Each starts with a lookahead for its first character, ahead of its lookbehind: the regex
# engine then skips to such a character instead of trying the lookbehind at every position
# (3-5x on a long text).
_HEX = "[0-9A-Fa-f]"
# MAC / EUI: colon or dash octets (iOS drops leading zeros), Cisco dotted, Zigbee's 0x + 16 hex,
# bare 12 hex.
_MAC: Final = re.compile(
    rf"(?={_HEX})(?<!{_HEX})(?:{_HEX}{{1,2}}([:-]){_HEX}{{1,2}}(?:\1{_HEX}{{1,2}}){{4}}"
    rf"(?:\1{_HEX}{{1,2}}\1{_HEX}{{1,2}})?|{_HEX}{{4}}\.{_HEX}{{4}}\.{_HEX}{{4}}"
    rf"|0[xX]{_HEX}{{16}}|{_HEX}{{12}})(?!{_HEX})"
)
_LONG_ID: Final = re.compile(r"(?=\d)(?<!\d)\d{14,}(?!\d)")  # IMEI/IMSI (15), ICCID (19-20), ...
# Coordinate pairs: decimals ("31.23041,121.4737") and E7 integers ("312304100 1214737000").
_COORD_PAIR: Final = re.compile(
    r"(?=[-\d])(?<![\d.])-?\d{1,3}\.\d{2,}\s{0,3}[,;/ ]\s{0,3}-?\d{1,3}\.\d{2,}(?![\d.])"
    r"|(?=[-\d])(?<![\d.])-?\d{7,10}\s{0,3}[,;/ ]\s{0,3}-?\d{7,10}(?![\d.])"
)
# NMEA ddmm.mmmm / dddmm.mmmm, with its hemisphere letter or with three or more decimals.
_NMEA: Final = re.compile(
    r"(?=\d)(?<![\d.])\d{4,5}\.\d+\s{0,3},\s{0,3}[NSEWnsew](?![A-Za-z])"
    r"|(?=\d)(?<![\d.])\d{4,5}\.\d{3,}"
)
# One coordinate: three or more decimals (finer than a geohash-7 cell); not the fraction of a
# time's seconds ("08:15:30.123").
_DECIMAL: Final = re.compile(r"(?=[-\d])(?<![\d.])(?<!\d:)-?\d{1,3}\.\d{3,}")
_PHONE_INTERNATIONAL: Final = re.compile(r"\+\d(?:[ -]?\d){6,14}(?!\d)")
# "0151 1234 5678", "138-0013-8000", "(555) 123-4567"; an ISO date is not a phone number.
_PHONE_GROUPED: Final = re.compile(
    r"(?=[(\d])(?<![\w.+-])(?!\d{4}-\d\d-\d\d(?!\d))"
    r"\(?\d{2,5}\)?(?:[ -]\(?\d{2,5}\)?){1,4}(?![\w.-])"
)
# A bare run of 7-13 digits: a phone number without separators, an E7 coordinate, or an epoch
# time outside a time key — which cannot be told apart, so all are masked.
_DIGITS: Final = re.compile(r"(?=\d)(?<![\w.])\d{7,13}(?![\w.])")


def _grouped_phone(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match[0])
    return "<phone>" if 7 <= digits <= 15 else match[0]


# Every mask after the MAC's needs a decimal digit, and no mask writes one: a text without
# digits (most keys and words, or a 64 KiB run of letters) skips the seven scans.
_ANY_DIGIT: Final = re.compile(r"\d")
_DIGIT_MASKS: Final[tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...]] = (
    (_LONG_ID, "<id>"),
    (_COORD_PAIR, "<coord>"),
    (_NMEA, "<coord>"),
    (_DECIMAL, "<num>"),
    (_PHONE_INTERNATIONAL, "<phone>"),
    (_PHONE_GROUPED, _grouped_phone),
    (_DIGITS, "<digits>"),
)
# In text that is not JSON: a quoted (or ``key=``) key, then its value — a string (perhaps cut
# off), a flat array or object, or a bare token.
_KEY_VALUE: Final = re.compile(
    r"""(?P<key>"(?P<qk>[^"\\\n]{1,64})"\s{0,8}[:=]\s{0,8}|(?<![\w.])(?P<uk>[A-Za-z_][\w.-]{0,63})=)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"?|\[[^\[\]]*\]?|\{[^{}]*\}?|[^,;&}\]\s]+)"""
)


def _key_words(key: str) -> set[str]:
    return {w.lower() for w in _KEY_WORD.findall(key)}


def _is_sensitive_key(key: str) -> bool:
    return not _SENSITIVE_WORDS.isdisjoint(_key_words(key))


def scrub_text(text: str) -> str:
    """``text`` with MAC addresses, long ids, coordinates and phone numbers masked."""
    text = _MAC.sub("<mac>", text)
    if _ANY_DIGIT.search(text) is None:
        return text
    for pattern, mask in _DIGIT_MASKS:
        text = pattern.sub(mask, text)
    return text


def _scrub_pair(match: re.Match[str]) -> str:
    key = match["qk"] or match["uk"] or ""
    value = match["value"]
    allowed = _ALLOWED_VALUES.get(key)
    if _is_sensitive_key(key) or (allowed is not None and value.strip('"') not in allowed):
        quote = '"' if value.startswith('"') else ""
        return match["key"] + quote + REDACTED + quote
    return match[0]


def scrub_detail(detail: str) -> str:
    """A rejection's one-line detail, scrubbed, then cut to :data:`MAX_DETAIL_CHARS`."""
    return scrub_text(_KEY_VALUE.sub(_scrub_pair, detail))[:MAX_DETAIL_CHARS]


def _scrub_json(node: object, key: str | None = None) -> object:
    if key is not None:
        if _is_sensitive_key(key):
            return REDACTED
        allowed = _ALLOWED_VALUES.get(key)
        if allowed is not None and not (isinstance(node, str) and node in allowed):
            return REDACTED
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for k, v in node.items():
            clean = scrub_text(str(k))
            while clean in out:  # two keys masked alike (a map of MAC → RSSI): keep both
                clean += "'"
            out[clean] = _scrub_json(v, str(k))
        return out
    if isinstance(node, list):
        # [lat, lon] or GeoJSON's [lon, lat(, alt)]
        if (
            2 <= len(node) <= 3
            and all(type(v) in (int, float) for v in node)
            and _COORD_PAIR.fullmatch(",".join(_number_text(v) for v in node[:2]))
        ):
            return "<coord>"
        return [_scrub_json(v) for v in node]
    if isinstance(node, str):
        return scrub_text(node)
    if type(node) in (int, float):
        text = _number_text(node)  # type: ignore[arg-type]
        if key is not None and not _TIME_WORDS.isdisjoint(_key_words(key)):
            clean = _LONG_ID.sub("<id>", text)  # epoch seconds under "ts" are not phone numbers
        else:
            clean = scrub_text(text)
        return node if clean == text else clean
    return node  # bool, None


def _number_text(value: float) -> str:
    """A JSON number as written, with an integral float as an integer (13800138000.0)."""
    if type(value) is float and value.is_integer() and abs(value) < 1e17:
        return str(int(value))
    return repr(value)


def scrub_payload(payload: bytes, limit: int) -> bytes:
    """A rejected payload with identifiers and coordinates masked, then cut to ``limit`` bytes.

    JSON is scrubbed as a tree (and re-serialised compactly): the value of any key naming a
    phone, IMEI/IMSI/ICCID, SIM, SSID, BSSID, MAC, latitude or longitude is replaced whatever
    its type; a closed-vocabulary categorical (``net_type``) outside its allow-list likewise;
    every other string, number and key is masked for MAC addresses (colon, dash, dotted, bare
    12-hex), long digit runs (IMEI/IMSI/ICCID), coordinates (decimal pairs, E7 integers, NMEA,
    any number with three or more decimals) and phone numbers. Anything that is not JSON
    (truncated, binary, another encoding) is scrubbed as text with the same rules, keys
    included. Scrubbing comes first, truncation last.
    """
    try:
        tree = json.loads(payload)
        scrubbed = json.dumps(_scrub_json(tree), ensure_ascii=True, separators=(",", ":"))
        kept = scrubbed.encode("ascii")
    except (ValueError, RecursionError):  # not JSON (or too deep for a tree walk): as text
        text = payload.decode("utf-8", "surrogateescape")
        kept = scrub_text(_KEY_VALUE.sub(_scrub_pair, text)).encode("utf-8", "surrogateescape")
    return kept[:limit]
