"""Generate a fleet's message stream and ground truth into a directory (no network).

Layout of ``DIR`` (all deterministic in the config; see README "Stream files"):

* ``parts/part-NNNNN.tsv`` — main stream, one line per publish: ``key<TAB>faults<TAB>topic<TAB>
  payload``; households are cut into parts of ``households_per_part`` (independent of the
  number of processes), each device's lines contiguous and in publish order.
* ``parts/late-NNNNN.tsv`` — messages held back by ``--late-rate``, published after all parts.
* ``devices.jsonl`` — one device per line: the registration record plus ``key``, ``topics``,
  ``household_id`` and ``consented``.
* ``consent_grants.jsonl`` / ``consent_withdrawals.jsonl`` — batches for the admin CLI.
  These three follow from the personas alone (:func:`plan_fleet`) and are written before any
  part is simulated, so ``run`` registers the fleet while the stream is still being generated.
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
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import numpy as np

from device_sim.config import CATEGORIES, SimConfig
from device_sim.faults import render_device
from device_sim.household import (
    DeviceHistory,
    DeviceSpec,
    HouseholdSimulator,
    household_specs,
    unconsented_router_spec,
)
from device_sim.persona import Fleet, Household, Persona, draw_fleet, draw_household
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
    "member",
    "household_members",
    "moved_in_day",
    "moved_out_day",
    "household_changes",
    "workplace",
)


@dataclass(slots=True)
class PartResult:
    index: int
    households: int
    path: Path | None = None  # the part's main stream file
    devices: list[dict[str, Any]] = field(default_factory=list)
    ground_truth: list[dict[str, Any]] = field(default_factory=list)
    messages_by_format: Counter[str] = field(default_factory=Counter)
    base_by_format: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    late_lines: int = 0
    device_days: int = 0
    sha_main: str = ""
    sha_late: str = ""

    @property
    def messages(self) -> int:
        return sum(self.messages_by_format.values())


def part_count(cfg: SimConfig) -> int:
    total = cfg.households + cfg.unconsented_devices
    return (total + cfg.households_per_part - 1) // cfg.households_per_part


def _part_range(cfg: SimConfig, part: int) -> range:
    lo = part * cfg.households_per_part
    return range(lo, min(cfg.households + cfg.unconsented_devices, lo + cfg.households_per_part))


def _device_record(cfg: SimConfig, spec: DeviceSpec, consented: bool) -> dict[str, Any]:
    return {
        **spec.registration(),
        # Bound to its user a day before the history starts: the collector refuses readings
        # dated before a device's binding (a day covers the clock-skew fault).
        "bound_at": format_rfc3339(cfg.start_ts - 86400),
        "key": spec.key,
        "household_id": spec.household_id,
        "topics": list(spec.topics),
        "consented": consented,
    }


def _unconsented_router_ext(cfg: SimConfig, index: int) -> str:
    return f"{cfg.prefix}-x{index - cfg.households:05d}-router"


@dataclass(slots=True)
class FleetPlan:
    """What registration needs, from the personas alone: no household is simulated."""

    parts: list[list[dict[str, Any]]]  # device records of each part, in stream order
    grants: list[dict[str, str]]
    withdrawals: list[dict[str, str]]

    @property
    def devices(self) -> list[dict[str, Any]]:
        return [rec for part in self.parts for rec in part]


def plan_fleet(cfg: SimConfig) -> FleetPlan:
    fleet = draw_fleet(cfg)
    plan = FleetPlan(parts=[], grants=[], withdrawals=[])
    for part in range(part_count(cfg)):
        records: list[dict[str, Any]] = []
        for index in _part_range(cfg, part):
            household = _household_for(cfg, fleet, index)
            if index >= cfg.households:
                spec = unconsented_router_spec(household.owner, _unconsented_router_ext(cfg, index))
                records.append(_device_record(cfg, spec, False))
                continue
            records += [_device_record(cfg, spec, True) for spec in household_specs(cfg, household)]
            for persona in household.members:
                granted_at = format_rfc3339(cfg.start_ts - int(persona.grant_offset_days * 86400))
                for cat in CATEGORIES:
                    if cat not in persona.declined:
                        plan.grants.append(
                            {"user_id": persona.user_id, "category": cat, "at": granted_at}
                        )
                for cat in persona.withdrawn:
                    plan.withdrawals.append({"user_id": persona.user_id, "category": cat})
        plan.parts.append(records)
    return plan


def write_plan(plan: FleetPlan, out_dir: Path) -> None:
    """``devices.jsonl``, ``consent_grants.jsonl``, ``consent_withdrawals.jsonl``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (
        ("devices.jsonl", plan.devices),
        ("consent_grants.jsonl", plan.grants),
        ("consent_withdrawals.jsonl", plan.withdrawals),
    ):
        with (out_dir / name).open("w") as f:
            for row in rows:
                f.write(json.dumps(row, separators=(",", ":")) + "\n")


def _household_for(cfg: SimConfig, fleet: Fleet, index: int) -> Household:
    """Household ``index``; indices past the fleet are unconsented extra users (one member,
    a router)."""
    if index < cfg.households:
        return draw_household(cfg, fleet, index)
    j = index - cfg.households
    base = draw_household(cfg, fleet, j % cfg.households).owner
    user = replace(
        base,
        index=index,
        household_id=f"{cfg.prefix}-x{j:05d}",
        user_id=f"{cfg.prefix}-ux{j:05d}",
    )
    return Household(index, user.household_id, (user,))


def _gt_row(
    cfg: SimConfig, household: Household, p: Persona, devices: list[DeviceHistory]
) -> dict[str, Any]:
    clock = LocalClock(p.city.tz, cfg.start_ts, cfg.end_ts)
    local_app = p.application_ts + int(
        clock.offset_at(np.array([p.application_ts], dtype=np.int64))[0]
    )
    return {
        "user_id": p.user_id,
        "household_id": p.household_id,
        "latent_score": f"{p.latent:.6f}",
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
        "member": p.member,
        "household_members": len(household.members),
        "moved_in_day": "" if p.moved_in_day is None else p.moved_in_day,
        "moved_out_day": "" if p.moved_out_day is None else p.moved_out_day,
        "household_changes": household.changes,
        "workplace": "" if p.workplace is None else f"{p.city.name}:{p.workplace}",
    }


def generate_part(
    cfg: SimConfig, part: int, out_dir: Path, fleet: Fleet | None = None
) -> PartResult:
    """Simulate the households of one part and write its stream files."""
    fleet = fleet if fleet is not None else draw_fleet(cfg)
    households = _part_range(cfg, part)
    main_path = out_dir / "parts" / f"part-{part:05d}.tsv"
    result = PartResult(index=part, households=len(households), path=main_path)
    late_path = out_dir / "parts" / f"late-{part:05d}.tsv"
    sha_main, sha_late = hashlib.sha256(), hashlib.sha256()
    prefix = cfg.prefix
    spoof_pool = [f"{prefix}-h{i:05d}-router" for i in range(min(cfg.households, 50))]
    with (
        main_path.open("w", encoding="utf-8", newline="") as fm,
        late_path.open("w", encoding="utf-8", newline="") as fl,
    ):
        for index in households:
            household = _household_for(cfg, fleet, index)
            sim = HouseholdSimulator(cfg, household)
            consented = index < cfg.households
            if consented:
                devices = sim.simulate()
            else:
                devices = [sim.unconsented_router(_unconsented_router_ext(cfg, index))]
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
                result.device_days += rendered.device_days
                result.devices.append(_device_record(cfg, dev.spec, consented))
            if consented:
                for member in household.members:
                    own = [d for d in devices if d.spec.user_id == member.user_id]
                    result.ground_truth.append(_gt_row(cfg, household, member, own))
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
    device_days: int = 0  # (device, UTC day) pairs with messages: what offline faults draw on

    @property
    def messages(self) -> int:
        return sum(self.messages_by_format.values())


def _iter_parts(cfg: SimConfig, out_dir: Path, pool: Pool | None) -> Iterator[PartResult]:
    """Every part in order (a pool simulates several at once)."""
    n = part_count(cfg)
    if pool is None:
        fleet = draw_fleet(cfg)
        for i in range(n):
            yield generate_part(cfg, i, out_dir, fleet)
        return
    yield from pool.imap(_worker, [(cfg, i, str(out_dir)) for i in range(n)])


def generate(
    cfg: SimConfig,
    out_dir: Path,
    processes: int = 1,
    ground_truth_path: Path | None = None,
    on_part: Callable[[PartResult], None] | None = None,
    on_plan: Callable[[FleetPlan], None] | None = None,
) -> Generated:
    """Write the whole fleet to ``out_dir`` (cleaning old part files) and return its summary.

    The registration files come first (then ``on_plan``), then the parts in order, each
    reported to ``on_part`` as soon as its stream file is complete."""
    cfg.validate()
    (out_dir / "parts").mkdir(parents=True, exist_ok=True)
    for old in (out_dir / "parts").glob("*.tsv"):
        old.unlink()
    n = part_count(cfg)
    # The pool forks before on_plan may start threads (registration in `run`).
    pool = (
        multiprocessing.get_context("fork").Pool(min(processes, n))
        if processes > 1 and n > 1
        else None
    )
    try:
        plan = plan_fleet(cfg)
        write_plan(plan, out_dir)
        if on_plan is not None:
            on_plan(plan)
        return _collect_parts(
            cfg, out_dir, plan, _iter_parts(cfg, out_dir, pool), ground_truth_path, on_part
        )
    finally:
        if pool is not None:
            pool.terminate()


def _collect_parts(
    cfg: SimConfig,
    out_dir: Path,
    plan: FleetPlan,
    parts: Iterator[PartResult],
    ground_truth_path: Path | None,
    on_part: Callable[[PartResult], None] | None,
) -> Generated:
    """Ground truth, counts, hashes and manifest from the parts as they complete."""
    stream_hash = hashlib.sha256()
    late_hashes: list[str] = []
    messages: Counter[str] = Counter()
    base: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    devices = users = defaults = late = device_days = 0
    gt_path = ground_truth_path or out_dir / "ground_truth.csv"
    gt_path.parent.mkdir(parents=True, exist_ok=True)
    with gt_path.open("w", newline="") as f_gt:
        writer = csv.DictWriter(f_gt, fieldnames=GROUND_TRUTH_FIELDS, lineterminator="\n")
        writer.writeheader()
        for res in parts:
            stream_hash.update(res.sha_main.encode())
            late_hashes.append(res.sha_late)
            messages.update(res.messages_by_format)
            base.update(res.base_by_format)
            faults.update(res.faults)
            late += res.late_lines
            device_days += res.device_days
            devices += len(res.devices)
            if res.devices != plan.parts[res.index]:
                raise RuntimeError(f"part {res.index}: simulated devices differ from the plan")
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
        device_days=device_days,
    )
    _write_manifest(cfg, gen, gt_path)
    return gen


def _write_manifest(cfg: SimConfig, gen: Generated, gt_path: Path) -> None:
    """``manifest.json``: the configuration and what was generated from it."""
    manifest = {
        "config": {**asdict(cfg), "faults": cfg.faults.as_dict()},
        "start": format_rfc3339(cfg.start_ts),
        "end": format_rfc3339(cfg.end_ts),
        "parts": gen.parts,
        "households": gen.households,
        "users": gen.users,
        "devices": gen.devices,
        "messages": gen.messages,
        "messages_by_format": dict(sorted(gen.messages_by_format.items())),
        "base_messages_by_format": dict(sorted(gen.base_by_format.items())),
        "faults": dict(sorted(gen.faults.items())),
        "late_lines": gen.late_lines,
        "device_days": gen.device_days,
        "default_rate": gen.default_rate,
        "ground_truth": os.path.relpath(gt_path, gen.out_dir),
        "stream_sha256": gen.stream_sha256,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (gen.out_dir / "manifest.json").write_text(text)
