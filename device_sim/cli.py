"""``python -m device_sim``: a simulated fleet of households (owner: simulator).

Sub-commands:

* ``generate`` — write the message stream and ground truth to a directory (no network).
* ``run`` — generate, register devices and consent through the admin CLI, publish everything
  (QoS 1, bounded window, every PUBACK awaited), withdraw the few withdrawals, print a summary.
  The three overlap: registration starts from the personas before any household is simulated,
  and each stream part is published as soon as it is written and the fleet is registered.
* ``load`` — publish N valid canonical messages at a target rate, for ingest benchmarks.

The simulator deliberately imports nothing from ``hearth``, ``collector`` or ``features``
(DESIGN §1): it is an outside fleet speaking public formats, so errors are printed here.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from device_sim.config import FaultRates, SimConfig
from device_sim.generate import FleetPlan, Generated, PartResult, generate, part_count
from device_sim.load import read_device_ids, run_load
from device_sim.publish import (
    DEFAULT_WINDOW,
    Counts,
    Credentials,
    PartPublisher,
    PublishError,
    WindowedClient,
    default_mqtt_url,
    parse_mqtt_url,
    publish_files,
)
from device_sim.register import (
    RegistrationError,
    grant_consent,
    load_devices,
    register_devices,
    withdraw_consent,
)

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69

# The collector applies registry and consent changes within a fraction of a second (LISTEN/
# NOTIFY, 0.25 s polls, then a reload); publishing waits this long after the last grant so the
# first messages never meet a collector that does not know their device or consent yet.
REGISTRY_SETTLE_S = 2.0


class UsageError(Exception):
    pass


def parse_end(text: str | None) -> int:
    """``--end``: RFC 3339 / ISO date; default now floored to the hour."""
    if not text:
        return int(time.time()) // 3600 * 3600
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--end: not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _band(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected LOW,HIGH e.g. 0.08,0.12") from None
    return lo, hi


def add_fleet_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--households", type=int, default=100, help="households (one user each)")
    p.add_argument("--days", type=int, default=90, help="days of history")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--end", help="end of history, RFC 3339 (default: now floored to the hour)")
    p.add_argument("--messages-per-day", type=float, default=30.0, help="per household per day")
    p.add_argument("--default-rate", type=float, default=0.10, help="target default rate")
    p.add_argument("--default-band", type=_band, default=(0.08, 0.12), metavar="LOW,HIGH")
    p.add_argument(
        "--distress-shift",
        type=float,
        default=1.5,
        help="stability drop of future defaulters after the application date (SDs)",
    )
    p.add_argument("--id-prefix", default="", help="prefix of user/device ids (default s<seed>)")
    p.add_argument("--processes", type=int, default=2, help="worker processes")
    p.add_argument(
        "--ground-truth",
        type=Path,
        default=None,
        help="ground truth CSV path (default: <out>/ground_truth.csv)",
    )
    f = p.add_argument_group("faults (see device_sim/README.md)")
    f.add_argument("--offline-rate", type=float, default=0.0, help="share of device-days dropped")
    f.add_argument("--duplicate-rate", type=float, default=0.0, help="share published twice")
    f.add_argument("--out-of-order-rate", type=float, default=0.0, help="share swapped with next")
    f.add_argument("--late-rate", type=float, default=0.0, help="share published at the very end")
    f.add_argument("--clock-skew-rate", type=float, default=0.0, help="share stamped ±2-30 min off")
    f.add_argument("--malformed-rate", type=float, default=0.0, help="share with broken payloads")
    f.add_argument(
        "--spoof-rate",
        type=float,
        default=0.0,
        help="share of canonical messages claiming another device id",
    )
    f.add_argument(
        "--unconsented-devices",
        type=int,
        default=0,
        help="extra users with one device each and no consent at all",
    )


def config_from(args: argparse.Namespace) -> SimConfig:
    cfg = SimConfig(
        households=args.households,
        days=args.days,
        seed=args.seed,
        end_ts=parse_end(args.end),
        messages_per_day=args.messages_per_day,
        default_rate=args.default_rate,
        default_band=args.default_band,
        distress_shift=args.distress_shift,
        faults=FaultRates(
            offline=args.offline_rate,
            duplicate=args.duplicate_rate,
            out_of_order=args.out_of_order_rate,
            late=args.late_rate,
            clock_skew=args.clock_skew_rate,
            malformed=args.malformed_rate,
            spoof=args.spoof_rate,
        ),
        unconsented_devices=args.unconsented_devices,
        id_prefix=args.id_prefix,
    )
    try:
        cfg.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return cfg


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _generate(
    args: argparse.Namespace, cfg: SimConfig, console: Console
) -> tuple[Generated, float]:
    started = time.monotonic()
    with _progress(console) as progress:
        task = progress.add_task("generate", total=cfg.households + cfg.unconsented_devices)
        gen = generate(
            cfg,
            args.out,
            processes=args.processes,
            ground_truth_path=args.ground_truth,
            on_part=lambda res: progress.advance(task, res.households),
        )
    return gen, time.monotonic() - started


def _summary(
    console: Console,
    gen: Generated,
    timings: dict[str, float],
    counts: Counts | None,
    extra: dict[str, Any],
) -> None:
    table = Table(title="device_sim summary", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("households", str(gen.households))
    table.add_row("users (ground truth)", str(gen.users))
    table.add_row("default rate", f"{gen.default_rate:.3f}")
    table.add_row("devices", str(gen.devices))
    for fmt, n in sorted(gen.messages_by_format.items()):
        table.add_row(f"messages {fmt}", f"{n:,}")
    table.add_row("messages total", f"{gen.messages:,}")
    for fault, n in sorted(gen.faults.items()):
        table.add_row(f"fault {fault}", f"{n:,}")
    for key, value in extra.items():
        table.add_row(key, str(value))
    if counts is not None:
        table.add_row("published", f"{counts.published:,}")
        table.add_row("PUBACKed", f"{counts.acked:,}")
        table.add_row("refused by broker", f"{counts.refused:,}")
        table.add_row("device connect failures", str(counts.connect_failures))
    for name, seconds in timings.items():
        table.add_row(f"elapsed {name}", f"{seconds:.1f} s")
    publish_s = timings.get("publish", 0.0)
    if counts is not None and publish_s > 0:
        table.add_row("publish rate", f"{counts.acked / publish_s:,.0f} msg/s")
    table.add_row("stream sha256", gen.stream_sha256[:16] + "…")
    console.print(table)


def cmd_generate(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    console = Console(stderr=True)
    gen, elapsed = _generate(args, cfg, console)
    _summary(console, gen, {"generate": elapsed}, None, {"output": str(args.out)})
    print(
        f"households={gen.households} devices={gen.devices} messages={gen.messages} "
        f"default_rate={gen.default_rate:.4f} elapsed_s={elapsed:.1f} sha256={gen.stream_sha256}"
    )
    return 0


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
        self.batches: list[str] = []  # "<devices> devices <seconds> s" per batch
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


def _realtime(
    console: Console,
    mqtt_url: str,
    out_dir: Path,
    creds: dict[str, tuple[str, str]] | None,
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


def cmd_run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    console = Console(stderr=True)
    mqtt_url = args.mqtt_url or default_mqtt_url()
    try:
        parse_mqtt_url(mqtt_url)
    except ValueError as exc:
        raise UsageError(f"--mqtt-url: {exc}") from None
    started = time.monotonic()
    timings: dict[str, float] = {}
    extra: dict[str, Any] = {}
    registration: _Registration | None = None
    with _progress(console) as progress:
        gen_task = progress.add_task("generate", total=cfg.households + cfg.unconsented_devices)
        reg_task = progress.add_task(
            "register", total=part_count(cfg), visible=not args.no_register
        )
        pub_task = progress.add_task("publish", total=None)
        pub_total = 0
        publisher = PartPublisher(  # forks: before any thread starts
            mqtt_url,
            args.processes,
            args.window,
            on_progress=lambda n: progress.advance(pub_task, n),
            client_tag="publish",
        )
        feeder = _Feeder(publisher)

        def on_registered(parts: list[int], creds: Credentials | None) -> None:
            progress.advance(reg_task, len(parts))
            feeder.registered_parts(parts, creds)

        def on_plan(plan: FleetPlan) -> None:
            nonlocal registration
            if args.no_register:
                feeder.register_all_anonymous()
            else:
                registration = _Registration(args.out, plan, on_registered)
                registration.start()

        def on_part(res: PartResult) -> None:
            nonlocal pub_total
            progress.advance(gen_task, res.households)
            pub_total += res.messages - res.late_lines
            progress.update(pub_task, total=pub_total)
            assert res.path is not None
            feeder.part_done(res.index, res.path, [str(rec["key"]) for rec in res.devices])
            publisher.poll()  # a broker that refuses us stops the run now, not after generating

        try:
            gen = generate(
                cfg,
                args.out,
                processes=args.processes,
                ground_truth_path=args.ground_truth,
                on_part=on_part,
                on_plan=on_plan,
            )
            timings["generate"] = time.monotonic() - started
            if registration is not None:
                while registration.is_alive():
                    registration.join(0.2)
                    publisher.poll()
                if registration.error is not None:
                    raise registration.error
                timings["register"] = registration.seconds
                extra["consent grants"] = registration.grants
                extra["registration batches"] = " ".join(registration.batches)
                extra["devices registered"] = gen.devices
                extra["publishing as"] = "each device" if feeder.creds else "anonymous"
            counts = publisher.finish()
        except BaseException:
            publisher.abort()
            raise
        late = sorted((args.out / "parts").glob("late-*.tsv"))
        if gen.late_lines:
            late_task = progress.add_task("late", total=gen.late_lines)
            counts.add(
                publish_files(
                    mqtt_url,
                    late,
                    feeder.creds,
                    processes=args.processes,
                    window=args.window,
                    on_progress=lambda n: progress.advance(late_task, n),
                    client_tag="late",
                )
            )
    finished = time.monotonic()
    timings["publish"] = finished - (feeder.first_submit or finished)
    timings["total"] = finished - started  # generate, register and publish overlap
    if not args.no_register:
        extra["consent withdrawals"] = withdraw_consent(args.out)
    if args.realtime:
        extra["realtime heartbeats"] = _realtime(
            console, mqtt_url, args.out, feeder.creds, args.realtime_minutes, args.speed
        )
    _summary(console, gen, timings, counts, extra)
    rate = counts.acked / timings["publish"] if timings["publish"] > 0 else 0.0
    print(
        f"households={gen.households} devices={gen.devices} messages={gen.messages} "
        f"published={counts.published} acked={counts.acked} refused={counts.refused} "
        f"connect_failures={counts.connect_failures} generate_s={timings['generate']:.1f} "
        f"register_s={timings.get('register', 0.0):.1f} publish_s={timings['publish']:.1f} "
        f"rate={rate:.0f} total_s={timings['total']:.1f}"
    )
    lost = counts.published - counts.acked - counts.refused
    return 0 if lost == 0 and counts.connect_failures == 0 and counts.refused == 0 else 1


def cmd_load(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    mqtt_url = args.mqtt_url or default_mqtt_url()
    creds = None
    if args.device_ids:
        try:
            ids, creds = read_device_ids(args.device_ids)
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"--device-ids: {exc}") from None
    else:
        prefix = args.id_prefix or "load"
        ids = [f"{prefix}-{i:05d}" for i in range(args.devices)]
    try:
        report = run_load(
            mqtt_url,
            args.messages,
            args.rate,
            args.processes,
            ids,
            creds,
            args.window,
            args.topic_format,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    table = Table(title="device_sim load")
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in (
        ("processes", report.processes),
        ("devices", len(ids)),
        ("published", f"{report.counts.published:,}"),
        ("PUBACKed", f"{report.counts.acked:,}"),
        ("refused", f"{report.counts.refused:,}"),
        ("elapsed", f"{report.elapsed_s:.2f} s"),
        ("rate", f"{report.rate:,.0f} msg/s"),
    ):
        table.add_row(name, str(value))
    console.print(table)
    print(
        f"published={report.counts.published} acked={report.counts.acked} "
        f"refused={report.counts.refused} elapsed_s={report.elapsed_s:.3f} rate={report.rate:.0f}"
    )
    return 0 if report.counts.acked == args.messages else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m device_sim",
        description="Simulated households with ground truth, speaking OwnTracks, Zigbee2MQTT, "
        "Tasmota and canonical hearth/v1 over MQTT.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="write the message stream and ground truth (no network)")
    add_fleet_args(g)
    g.add_argument("--out", type=Path, default=Path("out/sim"), help="output directory")
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser("run", help="generate, register, publish and summarise")
    add_fleet_args(r)
    r.add_argument("--out", type=Path, default=Path("out/sim"), help="stream directory")
    r.add_argument(
        "--mqtt-url", default=None, help="default: $HEARTH_MQTT_URL or mqtt://127.0.0.1:1883"
    )
    r.add_argument(
        "--window", type=int, default=DEFAULT_WINDOW, help="max unacknowledged publishes"
    )
    r.add_argument("--no-register", action="store_true", help="skip registration and consent")
    r.add_argument(
        "--realtime", action="store_true", help="keep publishing in real time afterwards"
    )
    r.add_argument("--realtime-minutes", type=float, default=0.0, help="0 = until Ctrl-C")
    r.add_argument("--speed", type=float, default=1.0, help="real-time clock acceleration")
    r.set_defaults(func=cmd_run)

    lo = sub.add_parser("load", help="publish N valid canonical messages for benchmarks")
    lo.add_argument("--messages", type=int, required=True)
    lo.add_argument("--rate", type=float, default=0.0, help="target msg/s in total (0 = max)")
    lo.add_argument("--processes", type=int, default=2)
    lo.add_argument("--topic-format", choices=["hearth"], default="hearth")
    lo.add_argument("--devices", type=int, default=100, help="device ids <prefix>-NNNNN to use")
    lo.add_argument("--id-prefix", default="", help="prefix of generated device ids (default load)")
    lo.add_argument(
        "--device-ids",
        type=Path,
        default=None,
        help="file of device ids, or JSON lines from `collector devices add` (creds)",
    )
    lo.add_argument("--mqtt-url", default=None)
    lo.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    lo.set_defaults(func=cmd_load)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (PublishError, RegistrationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
    return code


__all__ = ["main", "part_count"]
