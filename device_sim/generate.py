"""Generate a fleet's message stream and ground truth into a directory (no network).

Layout of ``DIR`` (all deterministic in the config; see README "Stream files"):

* ``parts/part-NNNNN.tsv`` — main stream, one line per publish: ``key<TAB>faults<TAB>topic<TAB>
  payload``; households are cut into parts of ``households_per_part`` (independent of the
  number of processes), each device's lines contiguous and in publish order.
* ``parts/late-NNNNN.tsv`` — messages held back by ``--late-rate``, published after all parts.
* ``devices.jsonl`` — one device per line: the registration record plus ``key``, ``topics``,
  ``household_id`` and ``consented``.
* ``consent_grants.jsonl`` / ``consent_withdrawals.jsonl`` — batches for the admin CLI.
* ``ground_truth.csv`` — one row per (consenting) user.
* ``manifest.json`` — config, counts and ``stream_sha256`` over all part files in order.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from device_sim.config import CATEGORIES, SimConfig
from device_sim.faults import render_device
from device_sim.household import DeviceHistory, HouseholdSimulator
from device_sim.persona import Fleet, Persona, draw_fleet, draw_persona
from device_sim.world import LocalClock, format_rfc3339

GROUND_TRUTH_FIELDS = (
    "user_id",
    "household_id",
    "latent_score",
    "default",
    "default_probability",
    "application_date",
    "application_time",
    "tz",
    "city",
    "device_kinds",
    "n_devices",
    "declined_categories",
    "withdrawn_categories",
    "night_home_prob",
    "outage_rate_per_day",
    "overnight_charge_prob",
    "moves",
    "holidays",
    "sim_changes",
    "device_change_day",
)


@dataclass(slots=True)
class PartResult:
    index: int
    households: int
    devices: list[dict[str, Any]] = field(default_factory=list)
    ground_truth: list[dict[str, Any]] = field(default_factory=list)
    grants: list[dict[str, str]] = field(default_factory=list)
    withdrawals: list[dict[str, str]] = field(default_factory=list)
    messages_by_format: Counter[str] = field(default_factory=Counter)
    base_by_format: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    late_lines: int = 0
    sha_main: str = ""
    sha_late: str = ""


def part_count(cfg: SimConfig) -> int:
    total = cfg.households + cfg.unconsented_devices
    return (total + cfg.households_per_part - 1) // cfg.households_per_part


def _persona_for(cfg: SimConfig, fleet: Fleet, index: int) -> Persona:
    """Persona of household ``index``; indices past the fleet are unconsented extra users."""
    if index < cfg.households:
        return draw_persona(cfg, fleet, index)
    j = index - cfg.households
    base = draw_persona(cfg, fleet, j % cfg.households)
    return replace(
        base,
        index=index,
        household_id=f"{cfg.prefix}-x{j:05d}",
        user_id=f"{cfg.prefix}-ux{j:05d}",
    )


def _gt_row(cfg: SimConfig, p: Persona, devices: list[DeviceHistory]) -> dict[str, Any]:
    clock = LocalClock(p.city.tz, cfg.start_ts, cfg.end_ts)
    local_app = p.application_ts + int(
        clock.offset_at(np.array([p.application_ts], dtype=np.int64))[0]
    )
    return {
        "user_id": p.user_id,
        "household_id": p.household_id,
        "latent_score": f"{p.stability:.6f}",
        "default": int(p.defaults),
        "default_probability": f"{p.default_probability:.6f}",
        "application_date": format_rfc3339(local_app)[:10],
        "application_time": format_rfc3339(p.application_ts),
        "tz": p.city.tz,
        "city": p.city.name,
        "device_kinds": ";".join(sorted({d.spec.kind for d in devices})),
        "n_devices": len(devices),
        "declined_categories": ";".join(p.declined),
        "withdrawn_categories": ";".join(p.withdrawn),
        "night_home_prob": f"{p.normal.night_home_prob:.4f}",
        "outage_rate_per_day": f"{p.normal.outage_rate:.5f}",
        "overnight_charge_prob": f"{p.normal.overnight_charge_prob:.4f}",
        "moves": len(p.homes) - 1,
        "holidays": len(p.holidays),
        "sim_changes": len(p.sim_change_days),
        "device_change_day": "" if p.device_change_day is None else p.device_change_day,
    }


def generate_part(
    cfg: SimConfig, part: int, out_dir: Path, fleet: Fleet | None = None
) -> PartResult:
    """Simulate the households of one part and write its stream files."""
    fleet = fleet if fleet is not None else draw_fleet(cfg)
    total = cfg.households + cfg.unconsented_devices
    lo = part * cfg.households_per_part
    hi = min(total, lo + cfg.households_per_part)
    result = PartResult(index=part, households=hi - lo)
    main_path = out_dir / "parts" / f"part-{part:05d}.tsv"
    late_path = out_dir / "parts" / f"late-{part:05d}.tsv"
    sha_main, sha_late = hashlib.sha256(), hashlib.sha256()
    prefix = cfg.prefix
    spoof_pool = [f"{prefix}-h{i:05d}-router" for i in range(min(cfg.households, 50))]
    with (
        main_path.open("w", encoding="utf-8", newline="") as fm,
        late_path.open("w", encoding="utf-8", newline="") as fl,
    ):
        for index in range(lo, hi):
            persona = _persona_for(cfg, fleet, index)
            sim = HouseholdSimulator(cfg, persona)
            consented = index < cfg.households
            if consented:
                devices = sim.simulate()
            else:
                devices = [sim.unconsented_router(f"{prefix}-x{index - cfg.households:05d}-router")]
            fault_rng = np.random.default_rng([cfg.seed, 4, index])
            for dev in devices:
                others = [x for x in spoof_pool if x != dev.spec.external_id]
                rendered = render_device(cfg, dev, sim.clock, fault_rng, others)
                text_main = "".join(rendered.main)
                text_late = "".join(rendered.late)
                fm.write(text_main)
                fl.write(text_late)
                sha_main.update(text_main.encode())
                sha_late.update(text_late.encode())
                fmt = dev.spec.format
                result.messages_by_format[fmt] += len(rendered.main) + len(rendered.late)
                result.base_by_format[fmt] += rendered.base_messages
                result.faults.update(rendered.faults)
                result.late_lines += len(rendered.late)
                record = {
                    **dev.spec.registration(),
                    "key": dev.spec.key,
                    "household_id": dev.spec.household_id,
                    "topics": list(dev.spec.topics),
                    "consented": consented,
                }
                result.devices.append(record)
            if not consented:
                continue
            result.ground_truth.append(_gt_row(cfg, persona, devices))
            granted_at = format_rfc3339(cfg.start_ts - int(persona.grant_offset_days * 86400))
            for cat in CATEGORIES:
                if cat not in persona.declined:
                    result.grants.append(
                        {"user_id": persona.user_id, "category": cat, "at": granted_at}
                    )
            for cat in persona.withdrawn:
                result.withdrawals.append({"user_id": persona.user_id, "category": cat})
    result.sha_main = sha_main.hexdigest()
    result.sha_late = sha_late.hexdigest()
    return result


def _worker(args: tuple[SimConfig, int, str]) -> PartResult:
    cfg, part, out_dir = args
    return generate_part(cfg, part, Path(out_dir))


@dataclass(slots=True)
class Generated:
    out_dir: Path
    parts: int
    households: int
    devices: int
    users: int
    messages_by_format: Counter[str]
    base_by_format: Counter[str]
    faults: Counter[str]
    late_lines: int
    stream_sha256: str
    default_rate: float

    @property
    def messages(self) -> int:
        return sum(self.messages_by_format.values())


def iter_parts(cfg: SimConfig, out_dir: Path, processes: int) -> Iterator[PartResult]:
    n = part_count(cfg)
    jobs = [(cfg, i, str(out_dir)) for i in range(n)]
    if processes <= 1 or n <= 1:
        fleet = draw_fleet(cfg)
        for i in range(n):
            yield generate_part(cfg, i, out_dir, fleet)
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(min(processes, n)) as pool:
        yield from pool.imap(_worker, jobs)


def generate(
    cfg: SimConfig,
    out_dir: Path,
    processes: int = 1,
    ground_truth_path: Path | None = None,
    on_part: Callable[[PartResult], None] | None = None,
) -> Generated:
    """Write the whole fleet to ``out_dir`` (cleaning old part files) and return its summary."""
    cfg.validate()
    (out_dir / "parts").mkdir(parents=True, exist_ok=True)
    for old in (out_dir / "parts").glob("*.tsv"):
        old.unlink()
    stream_hash = hashlib.sha256()
    late_hashes: list[str] = []
    messages: Counter[str] = Counter()
    base: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    devices = users = defaults = late = 0
    gt_path = ground_truth_path or out_dir / "ground_truth.csv"
    gt_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        (out_dir / "devices.jsonl").open("w") as f_dev,
        (out_dir / "consent_grants.jsonl").open("w") as f_grant,
        (out_dir / "consent_withdrawals.jsonl").open("w") as f_wd,
        gt_path.open("w", newline="") as f_gt,
    ):
        writer = csv.DictWriter(f_gt, fieldnames=GROUND_TRUTH_FIELDS, lineterminator="\n")
        writer.writeheader()
        for res in iter_parts(cfg, out_dir, processes):
            stream_hash.update(res.sha_main.encode())
            late_hashes.append(res.sha_late)
            messages.update(res.messages_by_format)
            base.update(res.base_by_format)
            faults.update(res.faults)
            late += res.late_lines
            devices += len(res.devices)
            for rec in res.devices:
                f_dev.write(json.dumps(rec, separators=(",", ":")) + "\n")
            for row in res.grants:
                f_grant.write(json.dumps(row, separators=(",", ":")) + "\n")
            for row in res.withdrawals:
                f_wd.write(json.dumps(row, separators=(",", ":")) + "\n")
            for gt in res.ground_truth:
                writer.writerow(gt)
                users += 1
                defaults += int(gt["default"])
            if on_part is not None:
                on_part(res)
    for h in late_hashes:
        stream_hash.update(h.encode())
    gen = Generated(
        out_dir=out_dir,
        parts=part_count(cfg),
        households=cfg.households,
        devices=devices,
        users=users,
        messages_by_format=messages,
        base_by_format=base,
        faults=faults,
        late_lines=late,
        stream_sha256=stream_hash.hexdigest(),
        default_rate=defaults / users if users else 0.0,
    )
    manifest = {
        "config": {**asdict(cfg), "faults": cfg.faults.as_dict()},
        "start": format_rfc3339(cfg.start_ts),
        "end": format_rfc3339(cfg.end_ts),
        "parts": gen.parts,
        "households": gen.households,
        "users": users,
        "devices": devices,
        "messages": gen.messages,
        "messages_by_format": dict(sorted(messages.items())),
        "base_messages_by_format": dict(sorted(base.items())),
        "faults": dict(sorted(faults.items())),
        "late_lines": late,
        "default_rate": gen.default_rate,
        "ground_truth": os.path.relpath(gt_path, out_dir),
        "stream_sha256": gen.stream_sha256,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return gen
