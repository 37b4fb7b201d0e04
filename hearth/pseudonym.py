"""Keyed pseudonyms for identifiers that must never be stored raw (docs/invariants.md#7).

``keyed_hash`` is HMAC-SHA256 keyed with ``HEARTH_PSEUDONYM_KEY``: without the key nobody can
test a guessed SSID, BSSID or SIM number against the stored value (a plain hash of a 48-bit BSSID
or a 19-digit ICCID is brute-forced in minutes). The ``domain`` separates uses — the same raw
string hashed as an SSID and as an audit subject gives unrelated values, so pseudonyms cannot be
joined across purposes — and the NUL byte between domain and value keeps ``("ab", "c")`` and
``("a", "bc")`` apart.

Why 32 hex chars (128 bits): the value is a join key, not a signature. 128 bits keep accidental
collisions out of reach (birthday bound ~2^64 values) while halving the index and row width of
the full 64-char digest, on a column written for every Wi-Fi fix.
"""

from __future__ import annotations

import hmac

HASH_HEX_CHARS = 32

# Domains in use; one place so two callers never share one by accident.
DOMAIN_WIFI_SSID = "wifi_ssid"
DOMAIN_WIFI_BSSID = "wifi_bssid"
DOMAIN_SIM_ID = "sim_id"
DOMAIN_AUDIT_SUBJECT = "audit_subject"
DOMAIN_DEAD_LETTER = "dead_letter"
DOMAIN_LINK_END = "link_end"  # the other end of a stored snapshot's relationship link


def keyed_hash(key: bytes, domain: str, value: str) -> str:
    """Hex HMAC-SHA256 of ``domain + "\\0" + value`` under ``key``, first 32 hex chars."""
    if not key:
        raise ValueError("keyed_hash needs a non-empty key")
    message = domain.encode() + b"\0" + value.encode()
    # hmac.digest is the one-shot OpenSSL path: several times faster than hmac.new(...).
    return hmac.digest(key, message, "sha256")[: HASH_HEX_CHARS // 2].hex()


def keyed_digest(key: bytes, domain: str, *parts: bytes) -> bytes:
    """Raw 32-byte HMAC-SHA256 of ``domain NUL part1 NUL part2 ...`` under ``key``.

    For binary keys such as the dead-letter dedupe digest: an unkeyed hash of a payload would
    let anyone holding the table confirm a guessed message (docs/invariants.md#7).
    """
    if not key:
        raise ValueError("keyed_digest needs a non-empty key")
    return hmac.digest(key, b"\0".join([domain.encode(), *parts]), "sha256")
