"""``python -m device_sim``: a simulated fleet of households (owner: simulator).

Sub-commands:

* ``generate`` — write the message stream and ground truth to a directory (no network).
* ``run`` — generate, register devices and consent through the admin CLI, publish everything
  (QoS 1, bounded window, every PUBACK awaited), withdraw the few withdrawals, print a summary.
  The three overlap (``device_sim/run.py``).
* ``load`` — publish N valid canonical messages at a target rate, for ingest benchmarks.
* ``register``, ``publish``, ``withdraw`` — ``run``'s phases one at a time on a generated
  directory: register its devices and consent grants (one admin CLI call each), publish its
  stream (late messages last), send its withdrawals. A fleet generated once is loaded with
  the fewest processes (the end-to-end test's path).

This module is argparse and output; the work is in ``generate``, ``run`` and ``load``. The
simulator deliberately imports nothing from ``hearth``, ``collector`` or ``features``
(docs/architecture.md): it is an outside fleet speaking public formats, so errors are printed
here.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from device_sim.config import FaultRates, SimConfig
from device_sim.generate import Generated, generate
from device_sim.load import read_device_ids, run_load
from device_sim.publish import (
    DEFAULT_WINDOW,
    Counts,
    PublishError,
    default_mqtt_url,
    parse_mqtt_url,
    publish_files,
)
from device_sim.register import (
    RegistrationError,
    grant_consent,
    read_credentials,
    register_devices,
    withdraw_consent,
)
from device_sim.run import RunOptions, realtime_heartbeats, run_fleet

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69


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


def _positive_rate(text: str) -> float:
    rate = float(text)
    if not rate > 0:
        raise argparse.ArgumentTypeError("a rate in messages per second, above 0")
    return rate


def add_rate_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rate",
        type=_positive_rate,
        default=None,
        help="at most this many messages per second in total (default: as fast as the broker "
        "acknowledges; a replay of months of history should stay below what the collectors "
        "store, or the broker's queue limit drops the rest)",
    )


def add_fleet_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--households", type=int, default=100, help="households (1-5 members each)")
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


def cmd_run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    console = Console(stderr=True)
    mqtt_url = args.mqtt_url or default_mqtt_url()
    try:
        parse_mqtt_url(mqtt_url)
    except ValueError as exc:
        raise UsageError(f"--mqtt-url: {exc}") from None
    options = RunOptions(
        out=args.out,
        mqtt_url=mqtt_url,
        processes=args.processes,
        window=args.window,
        rate=args.rate,
        register=not args.no_register,
        ground_truth=args.ground_truth,
    )
    with _progress(console) as progress:
        outcome = run_fleet(cfg, options, progress)
    gen, counts, timings, extra = outcome.generated, outcome.counts, outcome.timings, outcome.extra
    if options.register:
        extra["consent withdrawals"] = withdraw_consent(args.out)
    if args.realtime:
        extra["realtime heartbeats"] = realtime_heartbeats(
            console, mqtt_url, args.out, outcome.creds, args.realtime_minutes, args.speed
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
    return 0 if counts.complete else 1


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


def _generated(out: Path) -> Path:
    if not (out / "devices.jsonl").is_file():
        raise UsageError(f"--out {out}: no generated fleet (run python -m device_sim generate)")
    return out


def cmd_register(args: argparse.Namespace) -> int:
    out = _generated(args.out)
    started = time.monotonic()
    creds = register_devices(out)
    grants = grant_consent(out)
    print(
        f"devices={sum(1 for _ in (out / 'devices.jsonl').open())} credentials={len(creds)} "
        f"grants={grants} elapsed_s={time.monotonic() - started:.1f}"
    )
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    out = _generated(args.out)
    mqtt_url = args.mqtt_url or default_mqtt_url()
    try:
        parse_mqtt_url(mqtt_url)
    except ValueError as exc:
        raise UsageError(f"--mqtt-url: {exc}") from None
    creds = None if args.anonymous else read_credentials(out) or None
    started = time.monotonic()
    counts = Counts()
    for pattern in ("part-*.tsv", "late-*.tsv"):  # late messages after everything else
        files = sorted((out / "parts").glob(pattern))
        counts.add(
            publish_files(mqtt_url, files, creds, args.processes, args.window, rate=args.rate)
        )
    elapsed = time.monotonic() - started
    print(
        f"published={counts.published} acked={counts.acked} refused={counts.refused} "
        f"connect_failures={counts.connect_failures} elapsed_s={elapsed:.1f} "
        f"rate={counts.acked / elapsed if elapsed > 0 else 0.0:.0f}"
    )
    return 0 if counts.complete else 1


def cmd_withdraw(args: argparse.Namespace) -> int:
    print(f"withdrawals={withdraw_consent(_generated(args.out))}")
    return 0


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
    add_rate_arg(r)
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

    reg = sub.add_parser("register", help="register a generated fleet's devices and consent grants")
    reg.add_argument("--out", type=Path, default=Path("out/sim"), help="generated directory")
    reg.set_defaults(func=cmd_register)
    pub = sub.add_parser("publish", help="publish a generated fleet's stream (late messages last)")
    pub.add_argument("--out", type=Path, default=Path("out/sim"), help="generated directory")
    pub.add_argument("--mqtt-url", default=None)
    pub.add_argument("--processes", type=int, default=2, help="publisher processes")
    pub.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    add_rate_arg(pub)
    pub.add_argument(
        "--anonymous",
        action="store_true",
        help="one connection per process instead of each device's own credentials",
    )
    pub.set_defaults(func=cmd_publish)
    wd = sub.add_parser("withdraw", help="send a generated fleet's consent withdrawals (now)")
    wd.add_argument("--out", type=Path, default=Path("out/sim"), help="generated directory")
    wd.set_defaults(func=cmd_withdraw)
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


__all__ = ["main"]
