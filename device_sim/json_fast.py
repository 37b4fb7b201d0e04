"""Compact JSON for the simulator's payloads, through the C encoder ``json`` itself uses.

Why: ``json.JSONEncoder.encode`` builds a new C encoder (``json.encoder.c_make_encoder``, not
part of ``json``'s documented API) on every call and keeps a dict for circular-reference
checks. The payloads are small trees without cycles, so :func:`compact_dumps` builds that
encoder once, without the check: the same bytes at about half the cost. Where the C encoder is
missing (another Python implementation) it is the plain encoder.

tests/unit/test_private_apis.py checks that the result still equals ``json.dumps``'s.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=True)

compact_dumps: Callable[[Any], str] = _encoder.encode
if c_make_encoder is not None:
    # What ``_encoder.encode`` runs: (markers, default, encoder, indent, key separator, item
    # separator, sort_keys, skipkeys, allow_nan); markers None = no circular-reference check.
    _c_encode = c_make_encoder(
        None, _encoder.default, encode_basestring, None, ":", ",", False, False, True
    )

    def compact_dumps(body: Any) -> str:
        return "".join(_c_encode(body, 0))
