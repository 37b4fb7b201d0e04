"""Every message the simulator generates adapts without Rejected (the adapters' own code).

Tests may import the collector; device_sim itself never does (docs/architecture.md).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from device_sim.config import SimConfig
from device_sim.generate import generate

registry = pytest.importorskip("collector.adapters.registry")
base = pytest.importorskip("collector.adapters.base")


def test_generated_messages_adapt_cleanly(tmp_path: Path) -> None:
    cfg = SimConfig(households=25, days=4, seed=11, end_ts=1_790_000_000 // 3600 * 3600)
    generate(cfg, tmp_path)
    adapted: Counter[str] = Counter()
    failures: list[str] = []
    signals: Counter[str] = Counter()
    for part in sorted((tmp_path / "parts").glob("part-*.tsv")):
        for line in part.read_text().splitlines():
            _, _, topic, payload = line.split("\t", 3)
            adapter = registry.find_adapter(topic)
            assert adapter is not None, topic
            try:
                messages = adapter.adapt(topic, payload.encode())
            except base.Rejected as exc:
                failures.append(f"{topic}: {exc} :: {payload[:200]}")
                continue
            adapted[adapter.format] += 1
            for msg in messages:
                signals.update(r.signal for r in msg.readings)
    assert not failures, "\n".join(failures[:10])
    assert set(adapted) == {"owntracks", "zigbee2mqtt", "tasmota", "hearth"}
    # The signals features need are really carried.
    for name in (
        "battery_pct",
        "charging",
        "power_w",
        "energy_total_kwh",
        "contact_open",
        "occupancy",
        "temperature_c",
        "online",
        "uptime_s",
        "screen_on",
    ):
        assert signals[name] > 0, name
