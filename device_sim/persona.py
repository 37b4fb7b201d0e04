"""Personas: households of 1-5 members, a latent stability score per member, traits drawn from
it, and the credit outcome.

Model (documented in device_sim/README.md, "Households" and "Ground truth"):

* A household has 1-5 members (:data:`HOUSEHOLD_SIZE_SHARES`), each a user with their own phone,
  consent choices and ground-truth row; member 0 owns the shared home devices and never leaves.
  Household stability ``h ~ N(0, 1)``; member stability ``s = 0.6·h + 0.8·e``, ``e ~ N(0, 1)``.
* The other members move in or out (at most once each, before every application date) with a
  probability that grows as ``h`` falls (:data:`MOVE_RATE_PER_YEAR`).
* Every trait uses its own noisy copy ``z = rho·s + sqrt(1-rho²)·ε`` (rho ≈ 0.55), so traits overlap
  between stable and unstable people and no single trait is an oracle.
* Default: ``default = 1[a - b·s + c·m + sigma·η + ε > 0]`` with ``η ~ N(0, 1)``,
  ``ε ~ Logistic(0, 1)`` and ``m`` the number of membership changes of the member's household
  (``c`` = :data:`HOUSEHOLD_CHANGE_LOGODDS`: the small part of risk that household stability
  carries). The latent score written to the ground truth is ``s - (c/b)·m``, so
  ``P(default | latent, η) = sigmoid(a - b·latent + sigma·η)`` and the oracle sees all of it.
  The intercept ``a`` is calibrated on the fleet so the realised default rate is the target
  rate (rounded to whole users, kept inside the band): a logistic model whose base rate is
  exactly what the caller asked for.
* After the application date, future defaulters behave as if their stability dropped by
  ``distress_shift`` (more erratic routines, outages, low battery): a feature computed from data
  after the application date leaks the label and scores a much higher AUC than an honest one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from device_sim.config import CATEGORIES, SimConfig
from device_sim.world import CITIES, City, FloatArray, offset_point

DEFAULT_SLOPE = 1.2  # b: log-odds of default per SD of (-s)
DEFAULT_NOISE_SD = 0.5  # sigma: unexplained heterogeneity on the log-odds scale
TRAIT_LOADING = 0.55  # rho: how strongly each trait follows s

# Households (device_sim/README.md, "Households").
HOUSEHOLD_SIZE_SHARES = (0.30, 0.33, 0.18, 0.13, 0.06)  # 1, 2, 3, 4, 5 members; mean 2.32
HOUSEHOLD_LOADING = 0.6  # member stability s = 0.6·h + 0.8·e
# A member other than the first moves in (or, if not, out) during the history with probability
# 1 - exp(-rate·span/365) each, rate = MOVE_RATE_PER_YEAR·exp(-MOVE_STABILITY_SLOPE·z_h),
# z_h = 0.55·h + 0.84·ε: unstable households change more. Moves happen on local days
# [1, days - 21): before every member's application date (7-21 days before the end).
MOVE_RATE_PER_YEAR = 0.6
MOVE_STABILITY_SLOPE = 0.7
MOVE_QUIET_DAYS = 21
# c: log-odds of default per membership change of the household (the planted household signal).
HOUSEHOLD_CHANGE_LOGODDS = 0.4
# Coworkers: this share of members work at a workplace shared with others of the fleet (its
# network is seen by each of them on working days); the others work somewhere of their own.
SHARED_WORKPLACE_SHARE = 0.4
MEMBERS_PER_WORKPLACE = 4.0  # expected fleet members per shared workplace
MEAN_HOUSEHOLD_SIZE = sum((i + 1) * p for i, p in enumerate(HOUSEHOLD_SIZE_SHARES))

# Share of users declining each category at onboarding (location is the sensitive one).
DECLINE_SHARE: dict[str, float] = {
    "location": 0.15,
    "connectivity": 0.05,
    "device_health": 0.03,
    "energy": 0.05,
    "presence": 0.08,
    "climate": 0.05,
    "usage": 0.10,
    "relationships": 0.20,  # its own toggle: linking with other users (docs/invariants.md#9)
}
WITHDRAW_SHARE = 0.03  # users who later withdraw one granted category


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass(frozen=True, slots=True)
class Fleet:
    """Fleet-level draws: household sizes and membership changes; latent scores, labels and
    application times of every user (member k of household i is user ``first_user[i] + k``)."""

    first_user: np.ndarray  # int64 [households + 1]
    household_stability: FloatArray  # h per household
    household_changes: np.ndarray  # int64 membership changes per household
    moved_in_day: np.ndarray  # int64 per user: local day the member moved in, -1 never
    moved_out_day: np.ndarray  # int64 per user: local day the member moved out, -1 never
    stability: FloatArray  # s per user
    latent: FloatArray  # s - (c/b)·m per user: what default depends on
    default: np.ndarray  # bool per user
    default_probability: FloatArray
    intercept: float
    application_ts: np.ndarray  # int64 epoch seconds per user

    def user(self, household: int, member: int = 0) -> int:
        return int(self.first_user[household]) + member

    def members(self, household: int) -> int:
        return int(self.first_user[household + 1] - self.first_user[household])


def _membership(
    rng: np.random.Generator, cfg: SimConfig, h: FloatArray, first_user: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(moved-in day, moved-out day) per user and membership changes per household."""
    n_users = int(first_user[-1])
    owner = np.zeros(n_users, dtype=bool)
    owner[first_user[:-1]] = True
    household = np.repeat(np.arange(h.size), np.diff(first_user))
    z_h = TRAIT_LOADING * h + math.sqrt(1 - TRAIT_LOADING**2) * rng.normal(size=h.size)
    span = max(2, cfg.days - MOVE_QUIET_DAYS)
    rate = MOVE_RATE_PER_YEAR * np.exp(-MOVE_STABILITY_SLOPE * z_h)
    p_move = 1.0 - np.exp(-rate * span / 365.0)
    draw_in, draw_out = rng.random(n_users), rng.random(n_users)
    day = rng.integers(1, span, size=n_users)
    moves_in = ~owner & (draw_in < p_move[household])
    moves_out = ~owner & ~moves_in & (draw_out < p_move[household])
    moved_in = np.where(moves_in, day, -1).astype(np.int64)
    moved_out = np.where(moves_out, day, -1).astype(np.int64)
    changes = np.bincount(household[moves_in | moves_out], minlength=h.size).astype(np.int64)
    return moved_in, moved_out, changes


def draw_fleet(cfg: SimConfig) -> Fleet:
    rng = np.random.default_rng([cfg.seed, 0xF1EE7])
    sizes = 1 + rng.choice(len(HOUSEHOLD_SIZE_SHARES), size=cfg.households,
                           p=np.array(HOUSEHOLD_SIZE_SHARES))  # fmt: skip
    first_user = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(first_user[-1])
    household = np.repeat(np.arange(cfg.households), sizes)
    h = rng.normal(size=cfg.households)
    s = HOUSEHOLD_LOADING * h[household] + math.sqrt(1 - HOUSEHOLD_LOADING**2) * rng.normal(size=n)
    eta = rng.normal(size=n)
    eps = rng.logistic(size=n)
    moved_in, moved_out, changes = _membership(rng, cfg, h, first_user)
    latent = s - HOUSEHOLD_CHANGE_LOGODDS / DEFAULT_SLOPE * changes[household]
    score = -DEFAULT_SLOPE * latent + DEFAULT_NOISE_SD * eta + eps  # default iff a + score > 0
    lo, hi = cfg.default_band
    k = round(cfg.default_rate * n)
    k = min(max(k, math.ceil(lo * n - 1e-9)), math.floor(hi * n + 1e-9))
    k = min(max(k, 0), n)
    order = np.sort(score)[::-1]
    if k == 0:
        intercept = -float(order[0]) - 1.0
    elif k == n:
        intercept = -float(order[-1]) + 1.0
    else:
        intercept = -float(order[k - 1] + order[k]) / 2.0
    default = score + intercept > 0
    prob = np.array(
        [
            _sigmoid(intercept - DEFAULT_SLOPE * li + DEFAULT_NOISE_SD * ei)
            for li, ei in zip(latent, eta, strict=False)
        ]
    )
    # Application 7-21 days before the end of history, on the hour.
    back = rng.uniform(7 * 86400, 21 * 86400, size=n).astype(np.int64)
    application_ts = ((cfg.end_ts - back) // 3600) * 3600
    return Fleet(
        first_user=first_user,
        household_stability=h,
        household_changes=changes,
        moved_in_day=moved_in,
        moved_out_day=moved_out,
        stability=s,
        latent=latent,
        default=default,
        default_probability=prob,
        intercept=intercept,
        application_ts=application_ts,
    )


@dataclass(frozen=True, slots=True)
class Traits:
    """Behavioural parameters of one persona in one phase (normal, or post-application distress)."""

    wake_sd_h: float
    sleep_sd_h: float
    weekend_shift_h: float
    commute_prob: float
    return_sd_h: float
    night_home_prob: float
    mobility_km: float
    outage_rate: float  # household outages per day
    outage_mean_h: float
    phone_gap_rate: float  # phone offline episodes per day
    energy_cv: float
    overnight_charge_prob: float
    charge_sd_h: float
    low_battery_pct: float  # daytime chargers plug in around this level
    door_extra_rate: float
    night_activity_prob: float


def traits_from(z: FloatArray) -> Traits:
    """Map per-trait stability draws (higher = more stable) to behaviour."""
    e = math.exp
    return Traits(
        wake_sd_h=0.35 * e(-0.5 * z[0]),
        sleep_sd_h=0.45 * e(-0.5 * z[1]),
        weekend_shift_h=0.8 * e(-0.3 * z[2]),
        commute_prob=_sigmoid(1.6 + 0.8 * z[3]),
        return_sd_h=0.5 * e(-0.5 * z[4]),
        night_home_prob=_sigmoid(2.6 + 0.9 * z[5]),
        mobility_km=4.0 * e(-0.35 * z[6]),
        outage_rate=0.015 * e(-0.9 * z[7]),
        outage_mean_h=1.5 * e(-0.4 * z[7]),
        phone_gap_rate=0.012 * e(-1.0 * z[8]),
        energy_cv=0.18 * e(-0.45 * z[9]),
        overnight_charge_prob=_sigmoid(1.4 + 1.0 * z[10]),
        charge_sd_h=0.5 * e(-0.5 * z[11]),
        low_battery_pct=float(np.clip(30 + 10 * z[12], 3, 60)),
        door_extra_rate=1.0 * e(-0.3 * z[13]),
        night_activity_prob=0.08 * e(-0.6 * z[14]),
    )


N_TRAITS = 15


@dataclass(frozen=True, slots=True)
class Holiday:
    start_day: int
    days: int
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Persona:
    """One member of a household: a user with their own phone, traits, consent and outcome."""

    index: int  # the household's
    household_id: str
    user_id: str
    stability: float
    defaults: bool
    default_probability: float
    application_ts: int
    city: City
    homes: tuple[tuple[int, float, float], ...]  # (from_day, lat, lon): residential moves
    work: tuple[float, float]
    wake_mean_h: float
    sleep_mean_h: float
    return_mean_h: float
    energy_kwh_day: float
    drain_pct_per_h: float
    normal: Traits
    distress: Traits  # used after the application date if the user will default
    holidays: tuple[Holiday, ...]
    sim_change_days: tuple[int, ...]
    device_change_day: int | None
    devices: tuple[str, ...]  # kinds present in the household besides the phone
    plug_format: str
    declined: tuple[str, ...]
    withdrawn: tuple[str, ...]
    grant_offset_days: float  # consent granted this many days before the history starts
    member: int = 0  # 0: the household's first member (owns the shared home devices)
    latent: float = 0.0  # what default depends on: stability - (c/b)·household changes
    moved_in_day: int | None = None  # local day the member joined the household
    moved_out_day: int | None = None  # local day the member left it
    other_home: tuple[float, float] | None = None  # where the member lives when not a member
    workplace: int | None = None  # shared workplace (coworkers) in the city, else None

    def lives_in(self, day: int) -> bool:
        """Whether the member lives in the household on local day ``day``."""
        if self.moved_in_day is not None and day < self.moved_in_day:
            return False
        return self.moved_out_day is None or day < self.moved_out_day


@dataclass(frozen=True, slots=True)
class Household:
    """A household: its members (member 0 first); home, city and home devices are member 0's."""

    index: int
    household_id: str
    members: tuple[Persona, ...]
    changes: int = 0  # membership changes (moves in and out) during the history

    @property
    def owner(self) -> Persona:
        return self.members[0]


def _pick_city(rng: np.random.Generator) -> City:
    weights = np.array([c.weight for c in CITIES])
    return CITIES[int(rng.choice(len(CITIES), p=weights / weights.sum()))]


def _draw_homes(
    rng: np.random.Generator, cfg: SimConfig, city: City, years: float, z_moves: float
) -> list[tuple[int, float, float]]:
    """``(from_day, lat, lon)`` of the first home and of each residential move (fewer for
    the stable)."""
    home = offset_point(city.lat, city.lon, *(rng.normal(size=2) * 6.0))
    homes: list[tuple[int, float, float]] = [(0, home[0], home[1])]
    n_moves = min(3, int(rng.poisson(years * 0.5 * math.exp(-0.9 * z_moves))))
    for day in sorted(rng.integers(1, max(2, cfg.days), size=n_moves).tolist()):
        lat, lon = offset_point(city.lat, city.lon, *(rng.normal(size=2) * 6.0))
        homes.append((int(day), lat, lon))
    return homes


def _draw_holidays(
    rng: np.random.Generator, cfg: SimConfig, years: float, home: tuple[float, float]
) -> list[Holiday]:
    """Trips away, about three a year: most regional, the rest near another city."""
    holidays: list[Holiday] = []
    for _ in range(int(rng.poisson(years * 3.0))):
        other = CITIES[int(rng.integers(len(CITIES)))]
        if rng.random() < 0.6:  # most trips are regional
            dest = offset_point(home[0], home[1], *(rng.normal(size=2) * 120.0))
        else:
            dest = offset_point(other.lat, other.lon, *(rng.normal(size=2) * 3.0))
        holidays.append(
            Holiday(int(rng.integers(0, cfg.days)), int(rng.integers(2, 10)), dest[0], dest[1])
        )
    return holidays


def _draw_phone_changes(
    rng: np.random.Generator, cfg: SimConfig, years: float, z_dev: float
) -> tuple[tuple[int, ...], int | None]:
    """Days the SIM card changes, and the day the phone is replaced (None: never)."""
    n_sim = min(3, int(rng.poisson(years * 0.4 * math.exp(-1.0 * z_dev))))
    sim_days = tuple(sorted(int(d) for d in rng.integers(1, max(2, cfg.days), size=n_sim)))
    device_change: int | None = None
    if rng.random() < 1 - math.exp(-years * 0.4 * math.exp(-0.8 * z_dev)):
        device_change = int(rng.integers(1, max(2, cfg.days)))
    return sim_days, device_change


def _draw_devices(rng: np.random.Generator) -> tuple[list[str], str]:
    """The device kinds besides the phone, and the plug's format."""
    kinds: list[str] = []
    for kind, share in (
        ("phone_app", 0.5),
        ("router", 0.65),
        ("plug", 0.75),
        ("door", 0.55),
        ("motion", 0.45),
        ("climate", 0.40),
    ):
        if rng.random() < share:
            kinds.append(kind)
    plug_format = "tasmota" if rng.random() < 0.5 else "zigbee2mqtt"
    return kinds, plug_format


def _draw_consent(rng: np.random.Generator) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Categories declined at onboarding, and the one (if any) withdrawn later."""
    declined = tuple(c for c in CATEGORIES if rng.random() < DECLINE_SHARE[c])
    granted = [c for c in CATEGORIES if c not in declined]
    withdrawn: tuple[str, ...] = ()
    if granted and rng.random() < WITHDRAW_SHARE:
        withdrawn = (granted[int(rng.integers(len(granted)))],)
    return declined, withdrawn


def shared_workplaces(cfg: SimConfig, city: City) -> int:
    """How many shared workplaces the city has: about :data:`MEMBERS_PER_WORKPLACE` of the
    fleet's members who work at a shared one each."""
    expected = cfg.households * MEAN_HOUSEHOLD_SIZE * city.weight * SHARED_WORKPLACE_SHARE
    return max(1, round(expected / MEMBERS_PER_WORKPLACE))


def workplace_site(cfg: SimConfig, city: City, workplace: int) -> tuple[float, float]:
    """Where a shared workplace is: a function of (seed, city, workplace) alone, so coworkers
    in different households (and stream parts) agree on it."""
    rng = np.random.default_rng([cfg.seed, 6, CITIES.index(city), workplace])
    return offset_point(city.lat, city.lon, *(rng.normal(size=2) * 4.0))


def _draw_work(
    rng: np.random.Generator, cfg: SimConfig, city: City, home: tuple[float, float]
) -> tuple[tuple[float, float], int | None]:
    """Where the member works, and the shared workplace's number (None: a place of their own)."""
    if rng.random() < SHARED_WORKPLACE_SHARE:
        k = int(rng.integers(shared_workplaces(cfg, city)))
        return workplace_site(cfg, city, k), k
    angle = rng.uniform(0, 2 * math.pi)
    dist = float(rng.gamma(2.0, 3.0))
    return offset_point(home[0], home[1], dist * math.sin(angle), dist * math.cos(angle)), None


def draw_household(cfg: SimConfig, fleet: Fleet, index: int) -> Household:
    owner = draw_persona(cfg, fleet, index)
    members = [owner] + [draw_member(cfg, fleet, owner, j) for j in range(1, fleet.members(index))]
    return Household(index, owner.household_id, tuple(members), int(fleet.household_changes[index]))


def draw_member(cfg: SimConfig, fleet: Fleet, owner: Persona, member: int) -> Persona:
    """Member ``member`` (≥ 1) of the owner's household: own traits, phone, work, consent; the
    household's city and homes; another home of their own while they are not a member."""
    k = fleet.user(owner.index, member)
    rng = np.random.default_rng([cfg.seed, 1, owner.index, member])
    s = float(fleet.stability[k])
    z = TRAIT_LOADING * s + math.sqrt(1 - TRAIT_LOADING**2) * rng.normal(size=N_TRAITS)
    city = owner.city
    home = owner.homes[0][1], owner.homes[0][2]
    other = offset_point(city.lat, city.lon, *(rng.normal(size=2) * 6.0))
    work, workplace = _draw_work(rng, cfg, city, home)
    wake = float(np.clip(6.6 + 0.8 * rng.normal(), 4.5, 10.0))
    holidays = _draw_holidays(rng, cfg, cfg.days / 365.0, home)
    sim_days, device_change = _draw_phone_changes(rng, cfg, cfg.days / 365.0, float(z[10]))
    app = ("phone_app",) if rng.random() < 0.5 else ()
    declined, withdrawn = _draw_consent(rng)
    moved_in, moved_out = int(fleet.moved_in_day[k]), int(fleet.moved_out_day[k])
    return replace(
        owner,
        user_id=f"{owner.user_id}-m{member}",
        stability=s,
        defaults=bool(fleet.default[k]),
        default_probability=float(fleet.default_probability[k]),
        application_ts=int(fleet.application_ts[k]),
        work=work,
        wake_mean_h=wake,
        sleep_mean_h=float(np.clip(wake + 16.2 + 0.6 * rng.normal(), 20.5, 26.5)),
        return_mean_h=float(np.clip(18.0 + 0.8 * rng.normal(), 15.0, 21.5)),
        drain_pct_per_h=float(np.clip(5.0 + 1.5 * rng.normal(), 2.5, 10.0)),
        normal=traits_from(z),
        distress=traits_from(z - cfg.distress_shift),
        holidays=tuple(holidays),
        sim_change_days=sim_days,
        device_change_day=device_change,
        devices=app,
        declined=declined,
        withdrawn=withdrawn,
        grant_offset_days=float(rng.uniform(1, 60)),
        member=member,
        latent=float(fleet.latent[k]),
        moved_in_day=moved_in if moved_in >= 0 else None,
        moved_out_day=moved_out if moved_out >= 0 else None,
        other_home=other,
        workplace=workplace,
    )


def draw_persona(cfg: SimConfig, fleet: Fleet, index: int) -> Persona:
    """The first member of household ``index``."""
    rng = np.random.default_rng([cfg.seed, 1, index])
    k = fleet.user(index)
    s = float(fleet.stability[k])
    eps = rng.normal(size=N_TRAITS)
    z = TRAIT_LOADING * s + math.sqrt(1 - TRAIT_LOADING**2) * eps
    normal = traits_from(z)
    distress = traits_from(z - cfg.distress_shift)
    city = _pick_city(rng)
    years = cfg.days / 365.0
    homes = _draw_homes(rng, cfg, city, years, z_moves=float(z[6]))
    home = homes[0][1], homes[0][2]
    work, workplace = _draw_work(rng, cfg, city, home)
    wake = float(np.clip(6.6 + 0.8 * rng.normal(), 4.5, 10.0))
    holidays = _draw_holidays(rng, cfg, years, home)
    sim_days, device_change = _draw_phone_changes(rng, cfg, years, z_dev=float(z[10]))
    kinds, plug_format = _draw_devices(rng)
    declined, withdrawn = _draw_consent(rng)
    prefix = cfg.prefix
    return Persona(
        index=index,
        household_id=f"{prefix}-h{index:05d}",
        user_id=f"{prefix}-u{index:05d}",
        stability=s,
        defaults=bool(fleet.default[k]),
        default_probability=float(fleet.default_probability[k]),
        application_ts=int(fleet.application_ts[k]),
        city=city,
        homes=tuple(homes),
        work=work,
        wake_mean_h=wake,
        sleep_mean_h=float(np.clip(wake + 16.2 + 0.6 * rng.normal(), 20.5, 26.5)),
        return_mean_h=float(np.clip(18.0 + 0.8 * rng.normal(), 15.0, 21.5)),
        energy_kwh_day=float(math.exp(math.log(1.2) + 0.5 * rng.normal())),
        drain_pct_per_h=float(np.clip(5.0 + 1.5 * rng.normal(), 2.5, 10.0)),
        normal=normal,
        distress=distress,
        holidays=tuple(holidays),
        sim_change_days=sim_days,
        device_change_day=device_change,
        devices=tuple(kinds),
        plug_format=plug_format,
        declined=declined,
        withdrawn=withdrawn,
        grant_offset_days=float(rng.uniform(1, 60)),
        latent=float(fleet.latent[k]),
        workplace=workplace,
    )
