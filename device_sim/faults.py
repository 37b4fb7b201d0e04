"""Fault injection on one device's rendered history (rates documented in device_sim/README.md).

Faults draw from their own random stream, so a fleet with faults is the fault-free fleet plus
the faults (same behaviour, same base messages). Every injected fault is tagged on its stream
line, so tests and summaries can count them; the payload itself carries the fault the way a
real device would (no tag reaches the broker).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from device_sim.config import FaultRates, SimConfig
from device_sim.formats import dumps, encode
from device_sim.household import DeviceHistory
from device_sim.world import LocalClock

_NUMBER_VALUE = re.compile(r'(":)(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)')
_FIRST_STRING_VALUE = re.compile(r'(":)"[^"]*"')
MALFORMED_KINDS = ("truncated", "bad_json", "wrong_type", "nan", "not_object")


def malform(payload: str, kind: str) -> str:
    """A broken version of ``payload``; never contains a tab or newline (stream format)."""
    if not payload.startswith("{"):  # plain-text payloads (Tasmota LWT) can only be cut
        return payload[: max(1, len(payload) // 2)]
    if kind == "truncated":
        return payload[: max(1, len(payload) // 2)]
    if kind == "bad_json":
        return payload[:-1] + ",}"  # trailing comma
    if kind in ("wrong_type", "nan"):
        # wrong_type: every number becomes a string; nan: every number becomes NaN (not JSON,
        # though Python's json accepts it). A payload without numbers gets its first string
        # value (the timestamp, in the canonical format) turned into a number/NaN instead.
        number = r'\1"\2"' if kind == "wrong_type" else r"\1NaN"
        changed = _NUMBER_VALUE.sub(number, payload)
        if changed == payload:
            changed = _FIRST_STRING_VALUE.sub(
                r"\g<1>12345" if kind == "wrong_type" else r"\g<1>NaN", payload, count=1
            )
        return changed
    return "[" + payload + "]"  # valid JSON, not an object


@dataclass(slots=True)
class Rendered:
    main: list[str] = field(default_factory=list)  # stream lines in publish order
    late: list[str] = field(default_factory=list)  # published after everything else
    faults: Counter[str] = field(default_factory=Counter)
    base_messages: int = 0  # messages before any fault (what a healthy device would send)
    device_days: int = 0  # UTC days of the history on which the device had messages


@dataclass(frozen=True, slots=True)
class _FaultDraws:
    """Every fault decision for one device's ``n`` messages, drawn up front in a fixed order
    so counts are reproducible."""

    offline_days: np.ndarray  # bool per day of the history
    skew_mask: np.ndarray  # the rest: one value per message
    skew: np.ndarray  # seconds, ±2-30 min
    spoof_mask: np.ndarray
    malformed_mask: np.ndarray
    malformed_kind: np.ndarray  # index into MALFORMED_KINDS
    late_mask: np.ndarray
    ooo_draw: np.ndarray  # compared with the out-of-order rate
    dup_mask: np.ndarray
    spoof_pick: np.ndarray  # index into the spoofable ids

    @classmethod
    def draw(
        cls, cfg: SimConfig, n: int, fmt: str, rng: np.random.Generator, spoofable: int
    ) -> _FaultDraws:
        rates = cfg.faults
        offline_days = rng.random(cfg.days + 1) < rates.offline
        skew_mask = rng.random(n) < rates.clock_skew
        skew = rng.choice(np.array([-1, 1]), size=n) * rng.integers(120, 1800, size=n)
        spoof_mask = (rng.random(n) < rates.spoof) & (fmt == "hearth")
        malformed_mask = (rng.random(n) < rates.malformed) & ~spoof_mask
        malformed_kind = rng.integers(0, len(MALFORMED_KINDS), size=n)
        late_mask = rng.random(n) < rates.late
        ooo_draw = rng.random(n)
        dup_mask = rng.random(n) < rates.duplicate
        spoof_pick = rng.integers(0, max(1, spoofable), size=n)
        return cls(
            offline_days,
            skew_mask,
            skew,
            spoof_mask,
            malformed_mask,
            malformed_kind,
            late_mask,
            ooo_draw,
            dup_mask,
            spoof_pick,
        )


# (tags, topic, payload) of one message; tags joined by commas, "" for none
_Entry = tuple[str, str, str]


def render_device(
    cfg: SimConfig,
    hist: DeviceHistory,
    clock: LocalClock,
    rng: np.random.Generator,
    spoof_ids: list[str],
) -> Rendered:
    """Encode a device's events into stream lines, injecting the configured faults."""
    rates: FaultRates = cfg.faults
    spec = hist.spec
    out = Rendered(base_messages=len(hist.ts))
    ts = np.asarray(hist.ts, dtype=np.int64)
    n = len(ts)
    if n == 0:
        return out
    if not rates.any():  # the healthy fleet: what the general path below gives, without draws
        out.device_days = int(np.unique((ts - cfg.start_ts) // 86400).size)
        return _render_healthy(out, hist, ts, clock)
    day_idx = (ts - cfg.start_ts) // 86400
    out.device_days = int(np.unique(day_idx).size)
    draws = _FaultDraws.draw(cfg, n, spec.format, rng, len(spoof_ids))
    keep = ~draws.offline_days[np.clip(day_idx, 0, cfg.days)]
    out.faults["offline_device_days"] += int(draws.offline_days[np.unique(day_idx)].sum())
    out.faults["offline_dropped"] += int((~keep).sum())
    stamp = np.where(draws.skew_mask, ts + draws.skew, ts)
    payloads = encode(spec.format, hist.bodies, stamp, clock)
    kept, late = _tag_messages(hist, payloads, keep, draws, spoof_ids)
    _swap_out_of_order(kept, draws.ooo_draw, rates.out_of_order)
    # Counted before duplication: a duplicate line repeats its original's tags and payload.
    for tags, _, _ in (*kept, *late):
        for tag in tags.split(","):
            if tag:
                out.faults[tag.split(":")[0]] += 1
    key = spec.key
    for j, (tags, topic, payload) in enumerate(kept):
        out.main.append(f"{key}\t{tags}\t{topic}\t{payload}\n")
        if draws.dup_mask[j]:
            out.main.append(f"{key}\t{_tag(tags, 'duplicate')}\t{topic}\t{payload}\n")
            out.faults["duplicate"] += 1
    out.late = [f"{key}\t{tags}\t{topic}\t{payload}\n" for tags, topic, payload in late]
    return out


def _render_healthy(
    out: Rendered, hist: DeviceHistory, ts: np.ndarray, clock: LocalClock
) -> Rendered:
    out.faults["offline_device_days"] += 0
    out.faults["offline_dropped"] += 0
    key = hist.spec.key
    payloads = encode(hist.spec.format, hist.bodies, ts, clock)
    out.main = [
        f"{key}\t\t{topic}\t{payload}\n"
        for topic, payload in zip(hist.topics, payloads, strict=True)
    ]
    return out


def _tag_messages(
    hist: DeviceHistory,
    payloads: list[str],
    keep: np.ndarray,
    draws: _FaultDraws,
    spoof_ids: list[str],
) -> tuple[list[_Entry], list[_Entry]]:
    """The kept messages with their clock-skew, spoof and malformed faults applied and tagged:
    (in order, late)."""
    kept: list[_Entry] = []
    late: list[_Entry] = []
    for i in np.flatnonzero(keep).tolist():
        tag_list: list[str] = []
        payload = payloads[i]
        if draws.skew_mask[i]:
            tag_list.append("clock_skew")
        if draws.spoof_mask[i] and spoof_ids:
            body = hist.bodies[i]
            assert isinstance(body, dict)
            claimed = spoof_ids[int(draws.spoof_pick[i])]
            payload = dumps({**body, "device_id": claimed})
            tag_list.append("spoof")
        elif draws.malformed_mask[i]:
            kind = MALFORMED_KINDS[int(draws.malformed_kind[i])]
            payload = malform(payload, kind)
            tag_list.append(f"malformed:{kind}")
        entry = (",".join(tag_list), hist.topics[i], payload)
        if draws.late_mask[i]:
            late.append((",".join([*tag_list, "late"]), entry[1], entry[2]))
        else:
            kept.append(entry)
    return kept, late


def _swap_out_of_order(kept: list[_Entry], ooo_draw: np.ndarray, rate: float) -> None:
    """Out of order: swap a message with its successor (the successor is published first)."""
    i = 0
    while i < len(kept) - 1:
        if ooo_draw[i] < rate:
            first, second = kept[i], kept[i + 1]
            kept[i] = second
            kept[i + 1] = (_tag(first[0], "out_of_order"), first[1], first[2])
            i += 2
        else:
            i += 1


def _tag(tags: str, tag: str) -> str:
    return f"{tags},{tag}" if tags else tag
