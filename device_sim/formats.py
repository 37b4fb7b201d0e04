"""Payload encoders for the public device formats the simulator speaks.

Each device's history is a list of events ``(true_ts, topic, body)``; ``body`` is the JSON object
without its timestamp field (or a plain string, e.g. a Tasmota LWT). The timestamp field is
filled in here, vectorised, from the *stamped* time (which differs from the true time only when
the clock-skew fault is injected), then the body is serialised compactly.

Formats, as their projects document them:

* OwnTracks (``owntracks/<user>/<device>``, ``.../event``): ``tst`` = epoch seconds.
* Zigbee2MQTT (``zigbee2mqtt/<friendly_name>``): ``last_seen`` with ``advanced.last_seen:
  ISO_8601`` = JavaScript ``toISOString()``, e.g. ``2026-03-01T08:15:00.123Z``.
* Tasmota (``tele/<topic>/SENSOR|STATE|LWT``): ``Time`` = naive *local* time
  ``2026-03-01T09:15:00``; LWT payload is the plain text ``Online``/``Offline``.
* Canonical (``hearth/v1/<device_id>/<stream>``): ``{"ts": RFC 3339, "device_id", "readings"}``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from device_sim.json_fast import compact_dumps
from device_sim.world import IntArray, LocalClock, iso_ms_utc, naive_local, rfc3339_utc

TsKind = Literal["epoch", "iso_ms", "naive_local", "rfc3339"]

Body = dict[str, Any] | str

TS_FIELD: dict[str, tuple[str, TsKind]] = {
    "owntracks": ("tst", "epoch"),
    "zigbee2mqtt": ("last_seen", "iso_ms"),
    "tasmota": ("Time", "naive_local"),
    "hearth": ("ts", "rfc3339"),
}


def dumps(body: Body) -> str:
    if isinstance(body, str):
        return body
    return compact_dumps(body)


def _millis(ts: IntArray) -> IntArray:
    """A deterministic sub-second part so Zigbee2MQTT stamps look like real clocks."""
    ms: IntArray = (ts * 2654435761 + 12345) % 1000
    return ms


def stamp_strings(fmt: str, stamp_ts: IntArray, clock: LocalClock) -> list[Any]:
    """The timestamp field values of ``fmt`` for each event."""
    _, kind = TS_FIELD[fmt]
    if kind == "epoch":
        values: list[Any] = stamp_ts.tolist()
        return values
    if kind == "iso_ms":
        return iso_ms_utc(stamp_ts * 1000 + _millis(stamp_ts))
    if kind == "naive_local":
        return naive_local(clock.to_local(stamp_ts))
    return rfc3339_utc(stamp_ts)


def encode(fmt: str, bodies: list[Body], stamp_ts: IntArray, clock: LocalClock) -> list[str]:
    """Fill in each body's timestamp field and serialise it."""
    field, _ = TS_FIELD[fmt]
    stamps = stamp_strings(fmt, stamp_ts, clock) if len(bodies) else []
    out: list[str] = []
    for body, stamp in zip(bodies, stamps, strict=False):
        if isinstance(body, str):
            out.append(body)
            continue
        if field in body:
            body[field] = stamp
        out.append(compact_dumps(body))
    return out


def tasmota_uptime(seconds: int) -> str:
    """Tasmota's ``Uptime``: ``<days>T<hh>:<mm>:<ss>``."""
    days, rest = divmod(max(0, seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}T{hours:02d}:{minutes:02d}:{secs:02d}"


def wifi_quality(dbm: float) -> int:
    """Tasmota's ``RSSI`` is a 0-100 quality derived from the dBm ``Signal``."""
    return int(np.clip(2 * (dbm + 100), 0, 100))
