"""Everything that decides a simulated fleet. Same config → byte-identical streams."""

from __future__ import annotations

from dataclasses import dataclass, field

# Category names of the consent scopes (docs/invariants.md, "Data categories"). Spelled out here
# on purpose: the simulator must not import the product's code (docs/architecture.md), it speaks
# the public contract.
CATEGORIES: tuple[str, ...] = (
    "location",
    "connectivity",
    "device_health",
    "energy",
    "presence",
    "climate",
    "usage",
    "relationships",  # no signal of its own: links to other users (docs/invariants.md#9)
)


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Requested fault rates; each is documented in device_sim/README.md."""

    offline: float = 0.0  # share of device-days dropped entirely
    duplicate: float = 0.0  # share of messages published twice
    out_of_order: float = 0.0  # share of messages swapped with their successor
    late: float = 0.0  # share of messages held back and published after everything else
    clock_skew: float = 0.0  # share of messages whose timestamp is shifted by minutes
    malformed: float = 0.0  # share of messages replaced by a malformed payload
    spoof: float = 0.0  # share of canonical messages claiming another device's id

    def any(self) -> bool:
        return any(v > 0 for v in self.as_dict().values())

    def as_dict(self) -> dict[str, float]:
        return {
            "offline": self.offline,
            "duplicate": self.duplicate,
            "out_of_order": self.out_of_order,
            "late": self.late,
            "clock_skew": self.clock_skew,
            "malformed": self.malformed,
            "spoof": self.spoof,
        }


@dataclass(frozen=True, slots=True)
class SimConfig:
    households: int
    days: int
    seed: int
    end_ts: int  # epoch seconds; end of simulated history (exclusive)
    messages_per_day: float = 30.0  # target per household per simulated day
    default_rate: float = 0.10  # target share of users who default
    default_band: tuple[float, float] = (0.08, 0.12)
    # How much a future defaulter's stability drops after the application date (in SDs of s).
    distress_shift: float = 1.5
    faults: FaultRates = field(default_factory=FaultRates)
    unconsented_devices: int = 0
    id_prefix: str = ""  # prefix of user/device ids; default "s<seed>"
    households_per_part: int = 50  # households per stream part file (not per process)

    @property
    def start_ts(self) -> int:
        return self.end_ts - self.days * 86400

    @property
    def prefix(self) -> str:
        return self.id_prefix or f"s{self.seed}"

    def validate(self) -> None:
        if self.households < 1:
            raise ValueError("--households must be at least 1")
        if self.days < 1:
            raise ValueError("--days must be at least 1")
        if self.messages_per_day <= 0:
            raise ValueError("--messages-per-day must be positive")
        lo, hi = self.default_band
        if not 0 <= lo <= self.default_rate <= hi <= 1:
            raise ValueError("need 0 <= band low <= --default-rate <= band high <= 1")
        for name, rate in self.faults.as_dict().items():
            if not 0 <= rate < 1:
                raise ValueError(f"--{name.replace('_', '-')}-rate must be in [0, 1)")
        if self.unconsented_devices < 0:
            raise ValueError("--unconsented-devices must be >= 0")
