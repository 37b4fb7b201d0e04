"""Per-format cost of the pure pipeline steps: adapt → check_readings → minimise.

Runs every accepted sample of each format in a loop (GC on, as in production) and prints
µs per message; the last line is ``key=value`` pairs for scripts. Short by default (the machine
is shared); ``--seconds`` sets the time per format.

    .venv/bin/python bench/adapters.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

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
    by_format: dict[str, list[Sample]] = defaultdict(list)
    for sample in load_samples():
        if sample.reject is None and sample.expected:
            by_format[sample.format].append(sample)
    results = {fmt: bench(samples, args.seconds) for fmt, samples in sorted(by_format.items())}
    print(f"{'format':<14}{'samples':>8}{'µs/msg':>10}{'msg/s':>12}")
    for fmt, us in results.items():
        print(f"{fmt:<14}{len(by_format[fmt]):>8}{us:>10.2f}{1e6 / us:>12,.0f}")
    print(" ".join(f"{fmt}_us_per_msg={us:.2f}" for fmt, us in results.items()))


if __name__ == "__main__":
    main()
