"""``device_sim run``: generate the fleet, register it and publish it, the three overlapping.

Registration starts from the plan (the personas) before any household is simulated; each
stream part is published as soon as it is written and its devices are registered; the parts
that hold late messages go out after everything else. :func:`run_fleet` drives that and
returns what happened; the CLI prints it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID

from device_sim.config import SimConfig
from device_sim.generate import FleetPlan, Generated, PartResult, generate, part_count
from device_sim.publish import (
    Counts,
    Credentials,
    PartPublisher,
    WindowedClient,
    parse_mqtt_url,
    publish_files,
)
from device_sim.register import grant_consent, load_devices, register_devices

# The collector applies registry and consent changes within a fraction of a second (LISTEN/
# NOTIFY, 0.25 s polls, then a reload); publishing waits this long after the last grant so the
# first messages never meet a collector that does not know their device or consent yet.
REGISTRY_SETTLE_S = 2.0


def registration_batches(parts: int) -> list[list[int]]:
    """Stream parts grouped for registration: 1, 4, 16, ... parts per batch, so the first part is
    published seconds after the start while the rest of the fleet is still registering. Few
    batches: each costs two admin CLI start-ups (~1 s of CPU each, far more on a busy box)."""
    batches, start, size = [], 0, 1
    while start < parts:
        batches.append(list(range(start, min(parts, start + size))))
        start += size
        size *= 4
    return batches


class _Registration(threading.Thread):
    """Registers the planned fleet and grants its consent in batches while the stream is being
    generated; ``REGISTRY_SETTLE_S`` after a batch's grants, hands its parts and credentials to
    ``on_batch``. Not alive any more once every batch is handed over (or one failed)."""

    def __init__(
        self,
        out_dir: Path,
        plan: FleetPlan,
        on_batch: Callable[[list[int], Credentials | None], None],
    ) -> None:
        super().__init__(name="register", daemon=True)
        self.out_dir = out_dir
        self.plan = plan
        self.on_batch = on_batch
        self.grants = 0
        self.seconds = 0.0
        self.batches: list[str] = []  # "<devices>/<seconds>s" per batch
        self.error: BaseException | None = None

    def run(self) -> None:
        started = time.monotonic()
        timers: list[threading.Timer] = []
        try:
            for k, parts in enumerate(registration_batches(len(self.plan.parts))):
                batch_started = time.monotonic()
                devices = [rec for p in parts for rec in self.plan.parts[p]]
                creds = register_devices(self.out_dir, devices, f".batch{k}") or None
                users = {str(rec["user_id"]) for rec in devices}
                grants = [g for g in self.plan.grants if g["user_id"] in users]
                self.grants += grant_consent(self.out_dir, grants, f".batch{k}")
                self.batches.append(f"{len(devices)}/{time.monotonic() - batch_started:.0f}s")
                timer = threading.Timer(REGISTRY_SETTLE_S, self.on_batch, (parts, creds))
                timer.daemon = True
                timer.start()
                timers.append(timer)
        except BaseException as exc:  # re-raised by the main thread
            self.error = exc
        finally:
            for timer in timers:
                timer.join()
            self.seconds = time.monotonic() - started


class _Feeder:
    """Hands each generated part to the publishers once its devices are registered."""

    def __init__(self, publisher: PartPublisher) -> None:
        self.publisher = publisher
        self.lock = threading.Lock()
        self.generated: dict[int, tuple[Path, list[str]]] = {}
        self.registered: set[int] = set()
        self.everything_registered = False  # --no-register: publish anonymously at once
        self.creds: Credentials | None = None
        self.first_submit: float | None = None

    def part_done(self, index: int, path: Path, keys: list[str]) -> None:
        with self.lock:
            self.generated[index] = (path, keys)
            self._release()

    def registered_parts(self, parts: list[int], creds: Credentials | None) -> None:
        with self.lock:
            self.registered.update(parts)
            if creds:
                self.creds = {**(self.creds or {}), **creds}
            self._release()

    def register_all_anonymous(self) -> None:
        with self.lock:
            self.everything_registered = True
            self._release()

    def _release(self) -> None:
        for index in sorted(self.generated):
            if not (self.everything_registered or index in self.registered):
                continue
            path, keys = self.generated.pop(index)
            creds = self.creds
            part_creds = None if creds is None else {k: creds[k] for k in keys if k in creds}
            self.publisher.submit(path, part_creds)
            if self.first_submit is None:
                self.first_submit = time.monotonic()


@dataclass(frozen=True, slots=True)
class RunOptions:
    out: Path  # stream directory
    mqtt_url: str
    processes: int
    window: int  # max unacknowledged publishes per connection
    register: bool  # False: publish anonymously, no registration or consent
    ground_truth: Path | None = None
    rate: float | None = None  # messages per second in total (None: as fast as possible)


@dataclass(slots=True)
class RunOutcome:
    generated: Generated
    counts: Counts
    creds: Credentials | None  # what the devices published as (None: anonymous)
    timings: dict[str, float]  # generate, register, publish, total (seconds)
    extra: dict[str, Any] = field(default_factory=dict)  # summary rows


class _FleetRun:
    """One ``run``: the progress bars, the publisher processes, the part feeder and the
    registration thread, wired to ``generate``'s plan and part callbacks."""

    def __init__(self, cfg: SimConfig, options: RunOptions, progress: Progress) -> None:
        self.cfg = cfg
        self.options = options
        self.progress = progress
        self.gen_task = progress.add_task(
            "generate", total=cfg.households + cfg.unconsented_devices
        )
        self.reg_task = progress.add_task(
            "register", total=part_count(cfg), visible=options.register
        )
        self.pub_task = progress.add_task("publish", total=None)
        self.pub_total = 0
        self.publisher = PartPublisher(  # forks: before any thread starts
            options.mqtt_url,
            options.processes,
            options.window,
            on_progress=self._advancer(self.pub_task),
            client_tag="publish",
            rate=options.rate,
        )
        self.feeder = _Feeder(self.publisher)
        self.registration: _Registration | None = None

    def _advancer(self, task: TaskID) -> Callable[[int], None]:
        return lambda n: self.progress.advance(task, n)

    def on_registered(self, parts: list[int], creds: Credentials | None) -> None:
        self.progress.advance(self.reg_task, len(parts))
        self.feeder.registered_parts(parts, creds)

    def on_plan(self, plan: FleetPlan) -> None:
        if not self.options.register:
            self.feeder.register_all_anonymous()
        else:
            self.registration = _Registration(self.options.out, plan, self.on_registered)
            self.registration.start()

    def on_part(self, res: PartResult) -> None:
        self.progress.advance(self.gen_task, res.households)
        self.pub_total += res.messages - res.late_lines
        self.progress.update(self.pub_task, total=self.pub_total)
        assert res.path is not None
        self.feeder.part_done(res.index, res.path, [str(rec["key"]) for rec in res.devices])
        self.publisher.poll()  # a broker that refuses us stops the run now, not after generating

    def await_registration(self, gen: Generated, timings: dict[str, float]) -> dict[str, Any]:
        """Wait for the registration thread (forwarding publish progress meanwhile); its
        summary rows."""
        registration = self.registration
        if registration is None:
            return {}
        while registration.is_alive():
            registration.join(0.2)
            self.publisher.poll()
        if registration.error is not None:
            raise registration.error
        timings["register"] = registration.seconds
        return {
            "consent grants": registration.grants,
            "registration batches": " ".join(registration.batches),
            "devices registered": gen.devices,
            "publishing as": "each device" if self.feeder.creds else "anonymous",
        }

    def publish_late(self, gen: Generated) -> Counts:
        """The late messages, after everything else was acknowledged."""
        late = sorted((self.options.out / "parts").glob("late-*.tsv"))
        if not gen.late_lines:
            return Counts()
        late_task = self.progress.add_task("late", total=gen.late_lines)
        return publish_files(
            self.options.mqtt_url,
            late,
            self.feeder.creds,
            processes=self.options.processes,
            window=self.options.window,
            on_progress=self._advancer(late_task),
            client_tag="late",
            rate=self.options.rate,
        )


def run_fleet(cfg: SimConfig, options: RunOptions, progress: Progress) -> RunOutcome:
    """Generate, register and publish the fleet; returns once every publish has its PUBACK.
    Consent withdrawals are left to the caller (they are stamped with the time they are made)."""
    started = time.monotonic()
    timings: dict[str, float] = {}
    run = _FleetRun(cfg, options, progress)
    try:
        gen = generate(
            cfg,
            options.out,
            processes=options.processes,
            ground_truth_path=options.ground_truth,
            on_part=run.on_part,
            on_plan=run.on_plan,
        )
        timings["generate"] = time.monotonic() - started
        extra = run.await_registration(gen, timings)
        counts = run.publisher.finish()
    except BaseException:
        run.publisher.abort()
        raise
    counts.add(run.publish_late(gen))
    finished = time.monotonic()
    timings["publish"] = finished - (run.feeder.first_submit or finished)
    timings["total"] = finished - started  # generate, register and publish overlap
    return RunOutcome(gen, counts, run.feeder.creds, timings, extra)


def realtime_heartbeats(
    console: Console,
    mqtt_url: str,
    out_dir: Path,
    creds: Credentials | None,
    minutes: float,
    speed: float,
) -> int:
    """Keep the fleet's canonical routers alive in real time: a heartbeat per tick."""
    routers = [d for d in load_devices(out_dir) if d["kind"] == "router"]
    endpoint = parse_mqtt_url(mqtt_url)
    tick = max(1.0, 300.0 / speed)
    deadline = time.monotonic() + minutes * 60 if minutes > 0 else float("inf")
    sent = 0
    console.print(f"realtime: {len(routers)} routers, heartbeat every {tick:.0f} s (Ctrl-C stops)")
    shared = None if creds else WindowedClient(endpoint, "device-sim-realtime")
    try:
        while time.monotonic() < deadline:
            now = int(time.time())
            stamp = datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            for dev in routers:
                ext = dev["external_id"]
                body = json.dumps(
                    {
                        "ts": stamp,
                        "device_id": ext,
                        "readings": {"online": 1, "uptime_s": now % 86400},
                    },
                    separators=(",", ":"),
                )
                if shared is not None:
                    shared.publish(f"hearth/v1/{ext}/status", body)
                elif creds and dev["key"] in creds:
                    user, pw = creds[dev["key"]]
                    client = WindowedClient(endpoint, user, 10, username=user, password=pw)
                    client.publish(f"hearth/v1/{ext}/status", body)
                    client.close()
                sent += 1
            time.sleep(min(tick, max(0.0, deadline - time.monotonic())))  # pacing
    except KeyboardInterrupt:
        pass
    finally:
        if shared is not None:
            shared.close()
    return sent
