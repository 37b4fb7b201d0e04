"""Minimisation: the last step before anything is written (DESIGN §3.7).

Raw coordinates become a geohash of precision 7 or coarser; Wi-Fi SSID/BSSID and SIM ids become
keyed hashes (:func:`hearth.pseudonym.keyed_hash`). Everything else passes through typed for its
table: numeric as ``float``, categorical as ``str``. The output can only hold catalogue signals of
kind numeric or categorical, so a raw value has no way to reach disk.

Hot path: one dict lookup per reading, tables built once per :class:`Minimiser`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Final, Literal, NamedTuple

from collector.adapters import geohash
from collector.adapters.base import GeoPoint, Reading, ReadingValue
from hearth.pseudonym import (
    DOMAIN_SIM_ID,
    DOMAIN_WIFI_BSSID,
    DOMAIN_WIFI_SSID,
    keyed_hash,
)
from hearth.signals import SIGNALS

MAX_GEOHASH_PRECISION: Final = 7  # ~150 m; never finer (DESIGN §3.7)
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


# --- Dead-letter payloads ---------------------------------------------------------------------
# A rejected message is kept for diagnosis, but it may be a location fix with one bad field:
# invariant 7 holds for dead letters too. Scrubbing works on bytes, so it also covers payloads
# that are not valid JSON (truncated, binary, wrong encoding).
_COORDINATE = re.compile(rb"-?\b\d{1,3}\.\d{3,}")  # ≥ 3 decimals ≈ finer than a geohash-7 cell
_MAC_ADDRESS = re.compile(rb"(?i)\b[0-9a-f]{1,2}(?:[:-][0-9a-f]{1,2}){5}\b")
_PHONE_NUMBER = re.compile(rb"\+\d{7,15}\b")
_IDENTIFIER_VALUE = re.compile(
    rb'(?i)("(?:ssid|bssid|wifi_ssid|wifi_bssid|sim_id|imsi|iccid|imei|msisdn|phone)"\s*:\s*)'
    rb'"(?:[^"\\]|\\.)*"'
)


def scrub_payload(payload: bytes, limit: int) -> bytes:
    """The first ``limit`` bytes of a rejected payload with identifiers and coordinates masked.

    Masks decimal numbers with three or more decimals (coordinates; also some sensor values,
    an acceptable loss for a quarantine copy), MAC addresses, ``+``-prefixed phone numbers and
    the string values of identifier keys (SSID, BSSID, SIM ids, ...).
    """
    kept = payload[:limit]
    kept = _IDENTIFIER_VALUE.sub(rb'\1"<redacted>"', kept)
    kept = _MAC_ADDRESS.sub(b"<mac>", kept)
    kept = _PHONE_NUMBER.sub(b"<phone>", kept)
    return _COORDINATE.sub(b"<num>", kept)
