"""One household's simulated history: a day-by-day routine turned into device events.

The routine (wake, leave, return, sleep, charging, nights away, holidays, outages, moves) is
drawn per local day from each member's traits; devices then observe it in their own format:
each member's phone (OwnTracks fixes and home-region transitions) and optional phone companion
app (canonical); the first member's router (canonical), plug (Tasmota or Zigbee2MQTT), door,
motion and climate sensors (Zigbee2MQTT), which follow the first member's routine. Members
share the home, its Wi-Fi and its outages while they live there (they move in and out on the
days :mod:`device_sim.persona` drew), and live in a home of their own otherwise; coworkers
share their workplace's Wi-Fi. Events are spread over the day the way real devices report:
night charging, morning door, evening power peak, location fixes while awake.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from device_sim.config import SimConfig
from device_sim.formats import Body, tasmota_uptime, wifi_quality
from device_sim.persona import Household, Persona, Traits
from device_sim.rand import FastRandom
from device_sim.world import CITIES, LocalClock, offset_point

# At scale 1 the devices send about 24.5 messages per household-day (measured; README,
# "Message budget"), so scale = --messages-per-day / 24.5 hits the requested budget.
BASE_MESSAGES_PER_DAY = 24.5


@dataclass(slots=True)
class DeviceSpec:
    key: str  # "<format>:<external_id>", unique in the fleet
    household_id: str
    user_id: str
    kind: str
    format: str
    external_id: str
    tz: str
    topics: tuple[str, ...]
    consented: bool = True

    def registration(self) -> dict[str, str]:
        return {
            "user_id": self.user_id,
            "kind": self.kind,
            "format": self.format,
            "external_id": self.external_id,
            "tz": self.tz,
            "user_tz": self.tz,
        }


@dataclass(slots=True)
class DeviceHistory:
    spec: DeviceSpec
    ts: list[int] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    bodies: list[Body] = field(default_factory=list)

    def add(self, ts: float, topic: str, body: Body) -> None:
        self.ts.append(int(ts))
        self.topics.append(topic)
        self.bodies.append(body)


@dataclass(slots=True)
class Day:
    """The drawn routine of one local day; hours are local, relative to local midnight."""

    utc_midnight: int
    weekday: int
    away: bool
    traits: Traits
    wake: float
    sleep: float
    works: bool
    out_from: float  # leaves home (work or errand); NaN if stays in
    out_to: float
    night_home: bool
    overnight_charge: bool
    charge_start: float
    home: tuple[float, float]
    dest: tuple[float, float]  # where the user is when out (work or errand place)
    away_at: tuple[float, float]


_ACCURACIES = (5, 10, 12, 16, 25, 40, 65)


def _clip(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def _random_ssid(rng: np.random.Generator, style: str) -> str:
    hexs = "".join(f"{int(x):X}" for x in rng.integers(0, 16, size=4))
    if style == "cn":
        return ("ChinaNet-" if rng.random() < 0.5 else "TP-LINK_") + hexs
    if style == "de":
        return ("FRITZ!Box 7590 " if rng.random() < 0.5 else "Vodafone-") + hexs
    return ("NETGEAR" if rng.random() < 0.5 else "BT-Hub-") + hexs


def _random_bssid(rng: np.random.Generator) -> str:
    octets = rng.integers(0, 256, size=6)
    octets[0] = int(octets[0]) & 0xFC  # globally administered unicast
    return ":".join(f"{int(o):02x}" for o in octets)


def _iccid(rng: np.random.Generator) -> str:
    return "8986" + "".join(str(int(d)) for d in rng.integers(0, 10, size=15))


def _make_spec(
    p: Persona, kind: str, fmt: str, external_id: str, topics: tuple[str, ...]
) -> DeviceSpec:
    return DeviceSpec(
        key=f"{fmt}:{external_id}",
        household_id=p.household_id,
        user_id=p.user_id,
        kind=kind,
        format=fmt,
        external_id=external_id,
        tz=p.city.tz,
        topics=topics,
    )


def household_specs(cfg: SimConfig, household: Household) -> list[DeviceSpec]:
    """The devices of a consenting household, member by member, in the order
    :meth:`HouseholdSimulator.simulate` returns their histories. A function of the personas
    alone (no random draws), so a fleet can be registered while it is still being simulated."""
    return [spec for p in household.members for spec in member_specs(cfg, p)]


def member_specs(cfg: SimConfig, p: Persona) -> list[DeviceSpec]:
    """One member's devices: phone(s), then the kinds in ``p.devices`` (the first member's
    include the home's)."""
    prefix = cfg.prefix
    tag = "" if p.member == 0 else f"m{p.member}"
    owner = f"{prefix}h{p.index:05d}{tag}"
    specs = []
    topics: tuple[str, ...]
    for name in ["phone"] + (["phone2"] if p.device_change_day is not None else []):
        ext = f"{owner}/{name}"
        topics = (f"owntracks/{ext}", f"owntracks/{ext}/event")
        specs.append(_make_spec(p, "phone", "owntracks", ext, topics))
    for kind in p.devices:
        if kind in ("phone_app", "router"):
            member = f"-{tag}" if tag else ""
            ext = f"{prefix}-h{p.index:05d}{member}-{'app' if kind == 'phone_app' else 'router'}"
            streams = ("usage", "sim") if kind == "phone_app" else ("status",)
            topics = tuple(f"hearth/v1/{ext}/{stream}" for stream in streams)
            specs.append(_make_spec(p, kind, "hearth", ext, topics))
        elif kind == "plug" and p.plug_format == "tasmota":
            ext = f"tasmota_{owner}"
            topics = (f"tele/{ext}/SENSOR", f"tele/{ext}/STATE", f"tele/{ext}/LWT")
            specs.append(_make_spec(p, "plug", "tasmota", ext, topics))
        elif kind in ("plug", "door", "motion", "climate"):
            ext = f"{prefix}_h{p.index:05d}_{kind}"
            specs.append(_make_spec(p, kind, "zigbee2mqtt", ext, (f"zigbee2mqtt/{ext}",)))
    return specs


def unconsented_router_spec(p: Persona, ext: str) -> DeviceSpec:
    spec = _make_spec(p, "router", "hearth", ext, (f"hearth/v1/{ext}/status",))
    spec.consented = False
    return spec


@dataclass(frozen=True, slots=True)
class _Plug:
    """An energy plug's fixed properties, and the household load it meters."""

    watts: np.ndarray  # mean power per UTC hour from ``start_hour``
    cum_kwh: np.ndarray  # energy metered before each of those hours
    start_hour: int
    total0: float  # kWh on the meter when the history starts
    boot0: int  # last boot before the history (UTC)
    wifi: tuple[str, str]  # (SSID, BSSID)
    signal0: float  # mean Wi-Fi signal, dBm
    lq0: float  # mean Zigbee link quality
    voltage0: float  # mains voltage


@dataclass(frozen=True, slots=True)
class _PlugReading:
    total: float  # kWh
    today: float
    yesterday: float
    power: float  # W
    current: float  # A


@dataclass(slots=True)
class _PhoneBattery:
    """A phone's charge along its events: it drains (a third as fast before wake-up), charges
    in the overnight windows, and is plugged in for a while when it runs low or flat."""

    windows: list[tuple[int, int]]  # overnight charging, UTC, in time order
    drain_pct_per_h: float
    level: float = 80.0
    last_ts: int = 0
    charge_until: int = 0  # plugged in after running low or flat
    window: int = 0  # the first window not over at ``last_ts``

    def at(self, ts: int, hour: float, day: Day, rng: FastRandom) -> bool | None:
        """Move the level on to ``ts``; whether the phone is charging then, or ``None`` when
        it is flat and off (no message)."""
        windows = self.windows
        while self.window < len(windows) and windows[self.window][1] <= self.last_ts:
            self.window += 1
        dt_h = (ts - self.last_ts) / 3600.0
        charging = ts < self.charge_until or (
            self.window < len(windows) and windows[self.window][0] <= ts < windows[self.window][1]
        )
        if charging:
            self.level = min(100.0, self.level + 45.0 * dt_h)
        else:
            drain = self.drain_pct_per_h * dt_h * (0.3 if hour < day.wake else 1)
            self.level = max(0.0, self.level - drain)
        self.last_ts = ts
        if self.level <= 0.0:
            # Flat battery: the phone is off until its owner notices and plugs it in.
            if rng.random() < 0.5:
                return None
            self.charge_until = ts + int(3600 * rng.uniform(0.7, 2.0))
            charging = True
            self.level = 1.0
        if not charging and self.level < day.traits.low_battery_pct and rng.random() < 0.7:
            self.charge_until = ts + int(3600 * rng.uniform(0.7, 2.0))
            charging = True
        return charging


def _workplace_wifi(cfg: SimConfig, p: Persona) -> tuple[str, str]:
    """A shared workplace's network: a function of (seed, city, workplace) alone, so every
    coworker's phone sees the same one."""
    assert p.workplace is not None
    rng = np.random.default_rng([cfg.seed, 7, CITIES.index(p.city), p.workplace])
    return _random_ssid(rng, "en"), _random_bssid(rng)


class HouseholdSimulator:
    """Generates every device history of one household (deterministic in seed and index):
    the first member's devices and home, then each other member's phone and app."""

    def __init__(self, cfg: SimConfig, household: Household) -> None:
        self.household = household
        self.first = _Resident(cfg, household.owner)
        self.others = [_Resident(cfg, m, self.first) for m in household.members[1:]]
        self.clock = self.first.clock

    def simulate(self) -> list[DeviceHistory]:
        out = self.first.simulate()
        for resident in self.others:
            out.extend(resident.simulate())
        return out

    def unconsented_router(self, ext: str) -> DeviceHistory:
        return self.first.unconsented_router(ext)


class _Resident:
    """One member's routine and devices. The first member's home (Wi-Fi, outages) is the
    household's; another member (``household`` given) shares it while living there."""

    def __init__(
        self, cfg: SimConfig, persona: Persona, household: _Resident | None = None
    ) -> None:
        self.cfg = cfg
        self.p = persona
        stream = [cfg.seed, 3, persona.index] + ([persona.member] if persona.member else [])
        self.rng = np.random.default_rng(stream)
        self.r = FastRandom(self.rng)
        self.scale = cfg.messages_per_day / BASE_MESSAGES_PER_DAY
        self.clock = LocalClock(persona.city.tz, cfg.start_ts, cfg.end_ts)
        local_start = int(self.clock.to_local(np.array([cfg.start_ts], dtype=np.int64))[0])
        self.first_local_midnight = (local_start // 86400) * 86400
        local_end = int(self.clock.to_local(np.array([cfg.end_ts], dtype=np.int64))[0])
        self.n_days = (local_end - self.first_local_midnight) // 86400 + 1
        if household is None:
            self.homes_wifi = [
                (_random_ssid(self.rng, persona.city.ssid_style), _random_bssid(self.rng))
                for _ in persona.homes
            ]
        else:
            self.homes_wifi = household.homes_wifi
        self.other_wifi = (_random_ssid(self.rng, persona.city.ssid_style), _random_bssid(self.rng))
        if persona.workplace is not None:
            self.work_wifi = _workplace_wifi(cfg, persona)
        else:
            self.work_wifi = (_random_ssid(self.rng, "en"), _random_bssid(self.rng))
        self.days = self._draw_days()
        self.outages: list[tuple[int, int]] = (
            self._draw_outages() if household is None else household.outages
        )
        self.phone_gaps = self._draw_phone_gaps()

    # ---- routine -------------------------------------------------------------------------

    def _home_index(self, day: int) -> int:
        idx = 0
        for i, (from_day, _, _) in enumerate(self.p.homes):
            if day >= from_day:
                idx = i
        return idx

    def _home_point(self, day: int) -> tuple[float, float]:
        """Where the member sleeps on local day ``day``: the household's home while a member,
        else their own."""
        if self.p.lives_in(day) or self.p.other_home is None:
            _, lat, lon = self.p.homes[self._home_index(day)]
            return lat, lon
        return self.p.other_home

    def _draw_days(self) -> list[Day]:
        p, rng, n = self.p, self.rng, self.n_days
        normals = rng.normal(size=(n, 5))
        uniforms = rng.random(size=(n, 6))
        away = np.zeros(n, dtype=bool)
        away_at: dict[int, tuple[float, float]] = {}
        for h in p.holidays:
            for d in range(h.start_day, min(n, h.start_day + h.days)):
                away[d] = True
                away_at[d] = (h.lat, h.lon)
        days: list[Day] = []
        for d in range(n):
            local_midnight = self.first_local_midnight + d * 86400
            utc_midnight = self.clock.local_midnight_utc(local_midnight)
            distressed = p.defaults and utc_midnight >= p.application_ts
            t = p.distress if distressed else p.normal
            weekday = int((local_midnight // 86400 + 3) % 7)  # 1970-01-01 was a Thursday
            weekend = weekday >= 5
            shift = t.weekend_shift_h if weekend else 0.0
            wake = float(_clip(p.wake_mean_h + shift + t.wake_sd_h * normals[d, 0], 3.0, 13.0))
            sleep = float(
                _clip(p.sleep_mean_h + shift + t.sleep_sd_h * normals[d, 1], wake + 10, 28.5)
            )
            home_lat, home_lon = self._home_point(d)
            works = (not weekend) and (not away[d]) and uniforms[d, 0] < t.commute_prob
            out_from = out_to = math.nan
            dest = p.work
            if works:
                out_from = wake + 0.7 + 0.25 * abs(normals[d, 2])
                out_to = max(out_from + 3.0, p.return_mean_h + t.return_sd_h * normals[d, 3])
            elif not away[d] and uniforms[d, 1] < 0.6:
                out_from = wake + 1.0 + uniforms[d, 2] * max(0.5, sleep - wake - 4.0)
                out_to = min(sleep - 0.5, out_from + 0.5 + 3.0 * uniforms[d, 3])
                ang = 2 * math.pi * uniforms[d, 4]
                r = t.mobility_km * math.sqrt(-2 * math.log(max(1e-9, 1 - uniforms[d, 5])))
                dest = offset_point(home_lat, home_lon, r * math.sin(ang), r * math.cos(ang))
            night_home = (not away[d]) and self.r.random() < t.night_home_prob
            overnight = night_home and self.r.random() < t.overnight_charge_prob
            charge_start = sleep - 0.3 + t.charge_sd_h * normals[d, 4]
            days.append(
                Day(
                    utc_midnight=utc_midnight,
                    weekday=weekday,
                    away=bool(away[d]),
                    traits=t,
                    wake=wake,
                    sleep=sleep,
                    works=works,
                    out_from=out_from,
                    out_to=out_to,
                    night_home=night_home,
                    overnight_charge=overnight,
                    charge_start=charge_start,
                    home=(home_lat, home_lon),
                    dest=dest,
                    away_at=away_at.get(d, (home_lat, home_lon)),
                )
            )
        return days

    def _draw_outages(self) -> list[tuple[int, int]]:
        """Household power/internet outages: every home device is silent meanwhile."""
        out: list[tuple[int, int]] = []
        for day in self.days:
            for _ in range(int(self.r.poisson(day.traits.outage_rate))):
                start = day.utc_midnight + int(self.r.uniform(0, 86400))
                dur = int(3600 * (0.2 + self.r.exponential(day.traits.outage_mean_h)))
                out.append((start, start + dur))
        return sorted(out)

    def _draw_phone_gaps(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for day in self.days:
            for _ in range(int(self.r.poisson(day.traits.phone_gap_rate))):
                start = day.utc_midnight + int(self.r.uniform(0, 86400))
                out.append((start, start + int(3600 * (1 + self.r.exponential(10.0)))))
        return sorted(out)

    @staticmethod
    def _inside(intervals: list[tuple[int, int]], ts: float) -> bool:
        return any(a <= ts < b for a, b in intervals)

    def _at(self, d: int, hour: float) -> int:
        return self.days[d].utc_midnight + int(hour * 3600)

    def _place(self, d: int, hour: float) -> tuple[str, float, float]:
        """Where the user is at local ``hour`` of day ``d`` (hour may exceed 24: next night)."""
        day = self.days[d]
        if day.away:
            return "away", *day.away_at
        if hour < day.wake:
            prev = self.days[d - 1] if d > 0 else day
            if prev.night_home or prev.away:
                return ("home", *day.home) if not prev.away else ("away", *prev.away_at)
            return "other", *prev.dest
        if hour >= day.sleep and not day.night_home:
            return "other", *day.dest
        if not math.isnan(day.out_from) and day.out_from <= hour < day.out_to:
            return ("work" if day.works else "other"), *day.dest
        return "home", *day.home

    # ---- devices -------------------------------------------------------------------------

    def simulate(self) -> list[DeviceHistory]:
        specs = member_specs(self.cfg, self.p)
        phones = [spec for spec in specs if spec.kind == "phone"]
        devices: list[DeviceHistory] = []
        devices.extend(self._phones(phones))
        for spec in specs[len(phones) :]:
            kind = spec.kind
            if kind == "phone_app":
                devices.append(self._phone_app(spec))
            elif kind == "router":
                devices.append(self._router(spec))
            elif kind == "plug":
                devices.append(self._plug(spec))
            elif kind == "door":
                devices.append(self._door(spec))
            elif kind == "motion":
                devices.append(self._motion(spec))
            elif kind == "climate":
                devices.append(self._climate(spec))
        start, end = self.cfg.start_ts, self.cfg.end_ts
        for dev in devices:
            order = sorted(
                (i for i, ts in enumerate(dev.ts) if start <= ts < end), key=lambda i: dev.ts[i]
            )
            dev.ts = [dev.ts[i] for i in order]
            dev.topics = [dev.topics[i] for i in order]
            dev.bodies = [dev.bodies[i] for i in order]
        return devices

    def _count(self, rate: float) -> int:
        return int(self.r.poisson(rate * self.scale))

    def _phones(self, specs: list[DeviceSpec]) -> list[DeviceHistory]:
        """OwnTracks: location fixes while awake (few at night) and home enter/leave events."""
        rng, change = self.r, self.p.device_change_day
        histories = [DeviceHistory(spec) for spec in specs]
        owner = specs[0].external_id.rsplit("/", 1)[0]
        tid = owner[-2:]
        events = self._phone_events()
        battery = _PhoneBattery(
            self._charge_windows(), self.p.drain_pct_per_h, last_ts=events[0][0] if events else 0
        )
        for ts, what, hour, d in events:
            if self._inside(self.phone_gaps, ts) or d >= len(self.days):
                continue
            charging = battery.at(ts, hour, self.days[d], rng)
            if charging is None:
                continue
            dev = histories[1] if change is not None and d >= change else histories[0]
            place, lat, lon = self._place(d, hour)
            lat, lon = offset_point(lat, lon, *((rng.normal() * 0.03, rng.normal() * 0.03)))
            acc = rng.choice(_ACCURACIES)
            batt = round(battery.level)
            bs = (3 if batt >= 100 else 2) if charging else 1
            if what == "fix":
                body = self._location_fix(place, lat, lon, acc, batt, bs, tid)
                wifi = self._phone_wifi(place, d, ts)
                if wifi is not None:
                    body["conn"] = "w"
                    body["SSID"], body["BSSID"] = wifi
                dev.add(ts, dev.spec.topics[0], body)
            else:
                dev.add(ts, dev.spec.topics[1], self._home_transition(d, what, acc, tid))
        return histories

    def _phone_events(self) -> list[tuple[int, str, float, int]]:
        """``(utc, "fix" | "leave" | "enter", local hour, day)`` of every location fix and home
        transition, in time order."""
        rng = self.r
        events: list[tuple[int, str, float, int]] = []
        for d, day in enumerate(self.days):
            for _ in range(self._count(7.5)):
                if rng.random() < 0.12:
                    hour = rng.uniform(0, day.wake)
                else:
                    hour = rng.uniform(day.wake, min(day.sleep, 24.0))
                events.append((self._at(d, hour), "fix", hour, d))
            if not math.isnan(day.out_from):
                events.append((self._at(d, day.out_from), "leave", day.out_from, d))
                events.append((self._at(d, day.out_to), "enter", day.out_to, d))
            if not day.night_home and not day.away:
                events.append((self._at(d, day.sleep - 0.5), "leave", day.sleep - 0.5, d))
                events.append((self._at(d, 24 + day.wake + 0.5), "enter", day.wake + 0.5, d + 1))
        events.sort()
        return events

    def _charge_windows(self) -> list[tuple[int, int]]:
        """Overnight charging: from the evening's charge start to the next wake-up (UTC)."""
        return [
            (
                self._at(d, day.charge_start),
                self._at(d, 24 + self.days[min(d + 1, len(self.days) - 1)].wake),
            )
            for d, day in enumerate(self.days)
            if day.overnight_charge
        ]

    def _location_fix(
        self, place: str, lat: float, lon: float, acc: int, batt: int, bs: int, tid: str
    ) -> dict[str, object]:
        """An OwnTracks ``location`` on the mobile network (Wi-Fi is added by the caller)."""
        rng = self.r
        return {
            "_type": "location",
            "acc": acc,
            "alt": int(rng.integers(0, 80)),
            "batt": batt,
            "bs": bs,
            "conn": "m",
            "lat": round(lat, 6),
            "lon": round(lon, 6),
            "m": 1,
            "t": "u" if rng.random() < 0.8 else "p",
            "tid": tid,
            "tst": 0,
            "vac": int(rng.integers(3, 30)),
            "vel": 0 if place in ("home", "work") else int(rng.integers(0, 40)),
        }

    def _phone_wifi(self, place: str, d: int, ts: int) -> tuple[str, str] | None:
        """The (SSID, BSSID) the phone is on at ``place``: home's unless in an outage (the
        member's own home's when not living in the household), the office's half the time at
        work."""
        if place == "home" and not self.p.lives_in(d):
            return self.other_wifi
        if place == "home" and not self._inside(self.outages, ts):
            return self.homes_wifi[self._home_index(d)]
        if place == "work" and self.r.random() < 0.5:
            return self.work_wifi
        return None

    def _home_transition(self, d: int, event: str, acc: int, tid: str) -> dict[str, object]:
        """An OwnTracks ``transition`` of the "Home" region (``event``: enter or leave)."""
        home_lat, home_lon = self.days[min(d, len(self.days) - 1)].home
        return {
            "_type": "transition",
            "acc": acc,
            "desc": "Home",
            "event": event,
            "lat": round(home_lat, 6),
            "lon": round(home_lon, 6),
            "t": "c",
            "tid": tid,
            "tst": 0,
            "wtst": self.cfg.start_ts - 86400 * 200,
        }

    def _phone_app(self, spec: DeviceSpec) -> DeviceHistory:
        """Canonical companion app: screen on at wake, off at sleep, daily SIM identity."""
        rng, p = self.r, self.p
        ext, topics = spec.external_id, spec.topics
        dev = DeviceHistory(spec)
        sims = [_iccid(self.rng) for _ in range(len(p.sim_change_days) + 1)]

        def usage(ts: int, on: int) -> None:
            if not self._inside(self.phone_gaps, ts):
                body = {"ts": "", "device_id": ext, "readings": {"screen_on": on}}
                dev.add(ts, topics[0], body)

        for d, day in enumerate(self.days):
            usage(self._at(d, day.wake + rng.uniform(0, 0.15)), 1)
            usage(self._at(d, day.sleep + rng.uniform(-0.1, 0.2)), 0)
            for _ in range(self._count(0.6)):
                hour = rng.uniform(day.wake + 1, max(day.wake + 1.5, day.sleep - 1))
                usage(self._at(d, hour), 0)
                usage(self._at(d, hour + rng.uniform(0.05, 0.5)), 1)
            if rng.random() < day.traits.night_activity_prob * 3:
                hour = 24 + rng.uniform(1.0, 4.0)
                usage(self._at(d, hour), 1)
                usage(self._at(d, hour + rng.uniform(0.1, 0.6)), 0)
            if rng.random() < min(1.0, 0.9 * self.scale):
                sim = sims[sum(1 for c in p.sim_change_days if d >= c)]
                ts = self._at(d, rng.uniform(day.wake, min(24.0, day.sleep)))
                if not self._inside(self.phone_gaps, ts):
                    body = {"ts": "", "device_id": ext, "readings": {"sim_id": sim}}
                    dev.add(ts, topics[1], body)
        return dev

    def _periodic(self, period_h: float) -> list[int]:
        """Report times every ``period_h`` (scaled) with jitter, skipping outages."""
        period = max(300, int(3600 * period_h / self.scale))
        times = []
        t = self.cfg.start_ts + int(self.r.uniform(0, period))
        while t < self.cfg.end_ts:
            jittered = t + int(self.r.normal(0, period * 0.05))
            if not self._inside(self.outages, jittered):
                times.append(jittered)
            t += period
        return times

    def _uptime_at(self, ts: int, boot0: int) -> int:
        last_boot = boot0
        for _a, b in self.outages:
            if b <= ts:
                last_boot = b
        return ts - last_boot

    def _router(self, spec: DeviceSpec) -> DeviceHistory:
        """Canonical router heartbeat; outages show as silence and an uptime reset."""
        ext, topics = spec.external_id, spec.topics
        dev = DeviceHistory(spec)
        boot0 = self.cfg.start_ts - int(self.r.uniform(1, 60) * 86400)
        rssi0 = self.r.uniform(-70, -45)
        for ts in self._periodic(6.0):
            readings = {
                "online": 1,
                "uptime_s": self._uptime_at(ts, boot0),
                "rssi_dbm": round(rssi0 + self.r.normal(0, 2.5)),
            }
            dev.add(ts, topics[0], {"ts": "", "device_id": ext, "readings": readings})
        return dev

    def _hourly_power(self) -> tuple[np.ndarray, int]:
        """Plug power per UTC hour over the period (W), from a daily profile in local time."""
        start_hour = self.cfg.start_ts // 3600 - 24
        hours = self.cfg.days * 24 + 48
        utc_hours = (start_hour + np.arange(hours, dtype=np.int64)) * 3600
        local_h = (self.clock.to_local(utc_hours) % 86400) // 3600
        profile = np.full(24, 0.025)
        profile[6:9] += 0.05
        profile[18:23] += 0.09
        profile /= profile.sum()
        day_idx = np.clip(
            (self.clock.to_local(utc_hours) - self.first_local_midnight) // 86400,
            0,
            self.n_days - 1,
        )
        level = np.empty(self.n_days)
        for d, day in enumerate(self.days):
            cv = day.traits.energy_cv
            sigma = math.sqrt(math.log(1 + cv * cv))
            level[d] = self.p.energy_kwh_day * math.exp(sigma * self.r.normal() - sigma**2 / 2)
            if day.away:
                level[d] *= 0.3
        watts = 1000.0 * level[day_idx] * profile[local_h]
        for a, b in self.outages:
            lo, hi = a // 3600 - start_hour, b // 3600 - start_hour + 1
            watts[max(0, lo) : max(0, min(hours, hi))] = 0.0
        return watts, start_hour

    def _plug(self, spec: DeviceSpec) -> DeviceHistory:
        """Energy plug: Tasmota tele SENSOR/STATE (+LWT Online), or a Zigbee2MQTT plug."""
        rng = self.r
        watts, start_hour = self._hourly_power()
        cum_kwh = np.concatenate([[0.0], np.cumsum(watts) / 1000.0])
        total0 = float(rng.uniform(5, 400))
        boot0 = self.cfg.start_ts - int(rng.uniform(1, 90) * 86400)
        plug = _Plug(
            watts=watts,
            cum_kwh=cum_kwh,
            start_hour=start_hour,
            total0=total0,
            boot0=boot0,
            wifi=self.homes_wifi[0],
            signal0=rng.uniform(-80, -50),
            lq0=rng.uniform(60, 200),
            voltage0=(
                230.0 if self.p.city.ssid_style != "en" or "London" in self.p.city.name else 120.0
            ),
        )
        tasmota = spec.format == "tasmota"
        topics = spec.topics
        dev = DeviceHistory(spec)
        last_report: int | None = None
        for ts in self._periodic(4.0):
            reading = self._plug_reading(plug, ts)
            if tasmota:
                energy = self._tasmota_energy(plug, reading, ts, last_report)
                dev.add(ts, topics[0], {"Time": "", "ENERGY": energy})
                if last_report is None:
                    dev.add(ts - 5, topics[2], "Online")
                if rng.random() < 0.25:
                    dev.add(ts + 1, topics[1], self._tasmota_state(plug, ts))
            else:
                dev.add(ts, topics[0], self._zigbee_plug(plug, reading))
            last_report = ts
        return dev

    def _plug_reading(self, plug: _Plug, ts: int) -> _PlugReading:
        """What the plug measures at ``ts``: its meter (total, today, yesterday in kWh) and the
        momentary power (the hour's mean with noise) and current."""
        watts, cum_kwh, start_hour = plug.watts, plug.cum_kwh, plug.start_hour
        h = min(len(watts) - 1, max(0, ts // 3600 - start_hour))
        frac = (ts % 3600) / 3600.0
        total = plug.total0 + float(cum_kwh[h] + watts[h] * frac / 1000.0)
        local = ts + self.clock.offset_of(ts)
        midnight_utc = ts - (local % 86400)
        mh = min(len(watts) - 1, max(0, midnight_utc // 3600 - start_hour))
        today = max(0.0, float(cum_kwh[h] - cum_kwh[mh]) + watts[h] * frac / 1000.0)
        yh = max(0, mh - 24)
        yesterday = float(cum_kwh[mh] - cum_kwh[yh])
        power = max(0.0, float(watts[h]) * (1 + self.r.normal(0, 0.15)))
        return _PlugReading(total, today, yesterday, power, power / plug.voltage0)

    def _tasmota_energy(
        self, plug: _Plug, reading: _PlugReading, ts: int, last_report: int | None
    ) -> dict[str, object]:
        """Tasmota's ``ENERGY`` object of a ``tele/<topic>/SENSOR`` report."""
        rng, power = self.r, reading.power
        factor = 0.0 if power < 1 else round(float(rng.uniform(0.55, 0.98)), 2)
        apparent = round(power / factor) if factor else 0
        period_wh = 0 if last_report is None else round(power * (ts - last_report) / 3600)
        return {
            "TotalStartTime": "2024-01-15T10:12:44",
            "Total": round(reading.total, 3),
            "Yesterday": round(reading.yesterday, 3),
            "Today": round(reading.today, 3),
            "Period": period_wh,
            "Power": round(power),
            "ApparentPower": apparent,
            "ReactivePower": round(math.sqrt(max(0, apparent**2 - power**2))),
            "Factor": factor,
            "Voltage": round(plug.voltage0 + rng.normal(0, 2)),
            "Current": round(reading.current, 3),
        }

    def _tasmota_state(self, plug: _Plug, ts: int) -> dict[str, object]:
        """A Tasmota ``tele/<topic>/STATE`` report: uptime since the last outage, Wi-Fi."""
        up = self._uptime_at(ts, plug.boot0)
        signal = round(plug.signal0 + self.r.normal(0, 3))
        ssid, bssid = plug.wifi
        return {
            "Time": "",
            "Uptime": tasmota_uptime(up),
            "UptimeSec": up,
            "Heap": 25,
            "SleepMode": "Dynamic",
            "Sleep": 50,
            "LoadAvg": 19,
            "MqttCount": 1 + sum(1 for a, _ in self.outages if a < ts),
            "POWER": "ON",
            "Wifi": {
                "AP": 1,
                "SSId": ssid,
                "BSSId": bssid,
                "Channel": 6,
                "Mode": "11n",
                "RSSI": wifi_quality(signal),
                "Signal": signal,
                "LinkCount": 1,
                "Downtime": "0T00:00:03",
            },
        }

    def _zigbee_plug(self, plug: _Plug, reading: _PlugReading) -> dict[str, object]:
        """A Zigbee2MQTT smart plug's state message."""
        rng = self.r
        return {
            "current": round(reading.current, 2),
            "energy": round(reading.total, 2),
            "linkquality": int(_clip(plug.lq0 + rng.normal(0, 12), 0, 255)),
            "power": round(reading.power, 1),
            "state": "ON",
            "voltage": round(plug.voltage0 + rng.normal(0, 2), 1),
            "last_seen": "",
        }

    def _battery_sensor(self, spec: DeviceSpec) -> tuple[DeviceHistory, float, float]:
        dev = DeviceHistory(spec)
        return dev, float(self.r.uniform(70, 100)), float(self.r.uniform(40, 200))

    def _battery_at(self, start_pct: float, ts: int) -> int:
        elapsed_days = (ts - self.cfg.start_ts) / 86400
        return int(max(5, start_pct - 0.05 * elapsed_days))

    def _door(self, spec: DeviceSpec) -> DeviceHistory:
        """Door contact (``contact: true`` = closed): opens when leaving/returning, plus extras."""
        dev, batt0, lq0 = self._battery_sensor(spec)
        rng = self.r
        openings: list[int] = []
        for d, day in enumerate(self.days):
            if day.away:
                continue
            if not math.isnan(day.out_from):
                openings += [self._at(d, day.out_from), self._at(d, day.out_to)]
            if not day.night_home:
                openings += [self._at(d, day.sleep - 0.5), self._at(d, 24 + day.wake + 0.5)]
            for _ in range(self._count(day.traits.door_extra_rate)):
                openings.append(self._at(d, rng.uniform(day.wake, min(day.sleep, 24.0))))
        for ts in openings:
            if self._inside(self.outages, ts):
                continue
            for offset, contact in ((0, False), (int(rng.uniform(4, 45)), True)):
                body = {
                    "battery": self._battery_at(batt0, ts),
                    "contact": contact,
                    "linkquality": int(_clip(lq0 + rng.normal(0, 10), 0, 255)),
                    "voltage": 2900 + self._battery_at(batt0, ts) * 2,
                    "last_seen": "",
                }
                dev.add(ts + offset, dev.spec.topics[0], body)
        return dev

    def _motion(self, spec: DeviceSpec) -> DeviceHistory:
        """Motion sensor: occupancy true while someone is home and awake; false ~90 s later."""
        dev, batt0, lq0 = self._battery_sensor(spec)
        rng = self.r
        for d, day in enumerate(self.days):
            if day.away:
                continue
            hours = [rng.uniform(day.wake, min(day.sleep, 24.0)) for _ in range(self._count(1.5))]
            if rng.random() < day.traits.night_activity_prob * 3:
                hours.append(rng.uniform(0.5, 4.5))
            for hour in hours:
                if self._place(d, hour)[0] != "home":
                    continue
                ts = self._at(d, hour)
                if self._inside(self.outages, ts):
                    continue
                for offset, occ in ((0, True), (int(rng.uniform(60, 180)), False)):
                    body = {
                        "battery": self._battery_at(batt0, ts),
                        "illuminance_lux": int(rng.integers(0, 400)) if 7 < hour < 19 else 2,
                        "linkquality": int(_clip(lq0 + rng.normal(0, 10), 0, 255)),
                        "occupancy": occ,
                        "last_seen": "",
                    }
                    dev.add(ts + offset, dev.spec.topics[0], body)
        return dev

    def _climate(self, spec: DeviceSpec) -> DeviceHistory:
        """Temperature/humidity sensor reporting every few hours."""
        dev, batt0, lq0 = self._battery_sensor(spec)
        rng = self.r
        base = float(rng.uniform(19.0, 23.5))
        for ts in self._periodic(4.0):
            hour = ((ts + self.clock.offset_of(ts)) % 86400) / 3600.0
            d = min(self.n_days - 1, max(0, (ts - self.days[0].utc_midnight) // 86400))
            cool = 3.0 if self.days[d].away else 0.0
            temp = base - cool + 1.2 * math.sin(2 * math.pi * (hour - 9) / 24) + rng.normal(0, 0.3)
            hum = 47 + 6 * math.sin(2 * math.pi * (hour - 3) / 24) + rng.normal(0, 2)
            body = {
                "battery": self._battery_at(batt0, ts),
                "humidity": round(float(_clip(hum, 5, 95)), 1),
                "linkquality": int(_clip(lq0 + rng.normal(0, 10), 0, 255)),
                "temperature": round(temp, 1),
                "voltage": 2900 + self._battery_at(batt0, ts) * 2,
                "last_seen": "",
            }
            dev.add(ts, dev.spec.topics[0], body)
        return dev

    def unconsented_router(self, ext: str) -> DeviceHistory:
        return self._router(unconsented_router_spec(self.p, ext))
