"""Per-format cost of the pure pipeline steps: adapt → check_readings → minimise.

Runs every accepted sample of each format in a loop (GC on, as in production) and prints
µs per message; no issue sets a target for it. The last line is ``key=value`` pairs for scripts,
with the load average at start and end (bench/_common.py). Short by default (the machine is
shared); ``--seconds`` sets the time per format.

    .venv/bin/python bench/adapters.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from bench._common import Bench
from collector.adapters.registry import find_adapter
from collector.adapters.samples import Sample, load_samples
from collector.minimise import Minimiser
from collector.validate import check_readings


def run_once(samples: list[Sample], minimiser: Minimiser) -> int:
    stored = 0
    for sample in samples:
        adapter = find_adapter(sample.topic)
        assert adapter is not None
        for msg in adapter.adapt(sample.topic, sample.payload):
            check_readings(msg)
            stored += len(minimiser.minimise(msg.readings))
    return stored


def bench(samples: list[Sample], seconds: float) -> float:
    """Best-of-3 µs per message."""
    minimiser = Minimiser(b"bench-key")
    run_once(samples, minimiser)  # warm caches, fail fast on a broken sample
    best = float("inf")
    for _ in range(3):
        rounds = 0
        start = time.perf_counter()
        deadline = start + seconds / 3
        while True:
            run_once(samples, minimiser)
            rounds += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        best = min(best, (now - start) / (rounds * len(samples)) * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.6, help="time per format")
    args = parser.parse_args()
    report = Bench()
    by_format: dict[str, list[Sample]] = defaultdict(list)
    for sample in load_samples():
        if sample.reject is None and sample.expected:
            by_format[sample.format].append(sample)
    results = {fmt: bench(samples, args.seconds) for fmt, samples in sorted(by_format.items())}
    report.table(
        ["format", "samples", "µs/msg", "msg/s"],
        [[f, len(by_format[f]), f"{us:.2f}", f"{1e6 / us:,.0f}"] for f, us in results.items()],
    )
    report.finish(**{f"{fmt}_us_per_msg": f"{us:.2f}" for fmt, us in results.items()})


if __name__ == "__main__":
    main()
