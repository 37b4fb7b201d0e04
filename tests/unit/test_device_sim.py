"""device_sim: determinism, ground truth, fault rates and payload shapes (no network)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from device_sim.config import FaultRates, SimConfig
from device_sim.generate import FleetPlan, PartResult, generate
from device_sim.persona import draw_fleet
from device_sim.run import registration_batches

END = 1_790_000_000 // 3600 * 3600


def _cfg(**kw: object) -> SimConfig:
    base: dict[str, object] = {"households": 6, "days": 5, "seed": 7, "end_ts": END}
    base.update(kw)
    return SimConfig(**base)  # type: ignore[arg-type]


def _stream_digest(out: Path) -> str:
    h = hashlib.sha256()
    for f in sorted((out / "parts").glob("*.tsv")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _lines(out: Path) -> list[list[str]]:
    rows = []
    for f in sorted((out / "parts").glob("*.tsv")):
        for line in f.read_text().splitlines():
            rows.append(line.split("\t", 3))
    return rows


def test_same_seed_gives_byte_identical_streams(tmp_path: Path) -> None:
    cfg = _cfg(households=8, households_per_part=3, faults=FaultRates(duplicate=0.05, late=0.05))
    a = generate(cfg, tmp_path / "a", processes=1)
    b = generate(cfg, tmp_path / "b", processes=2)  # parallelism must not change bytes
    assert a.messages > 500
    assert a.stream_sha256 == b.stream_sha256
    assert _stream_digest(tmp_path / "a") == _stream_digest(tmp_path / "b")
    for name in ("ground_truth.csv", "devices.jsonl", "consent_grants.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    c = generate(_cfg(households=8, households_per_part=3, seed=8), tmp_path / "c")
    assert c.stream_sha256 != a.stream_sha256
    assert _stream_digest(tmp_path / "c") != _stream_digest(tmp_path / "a")


def test_ground_truth_one_row_per_user_with_rate_in_band(tmp_path: Path) -> None:
    cfg = _cfg(households=300, days=2, default_rate=0.1, default_band=(0.08, 0.12))
    gen = generate(cfg, tmp_path)
    rows = list(csv.DictReader((tmp_path / "ground_truth.csv").open()))
    assert len(rows) == gen.users
    assert len({r["user_id"] for r in rows}) == gen.users
    # Households of 1-5 members (device_sim/README.md, "Households"), one row per member.
    members = Counter(r["household_id"] for r in rows)
    assert len(members) == 300 and set(members.values()) <= {1, 2, 3, 4, 5}
    assert 2.0 <= gen.users / 300 <= 2.7
    rate = sum(int(r["default"]) for r in rows) / len(rows)
    assert 0.08 <= rate <= 0.12
    for r in rows:
        app = r["application_time"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:00:00Z", app)
        float(r["latent_score"])
    # Defaulters are less stable on average (the model's sign).
    s_bad = [float(r["latent_score"]) for r in rows if r["default"] == "1"]
    s_good = [float(r["latent_score"]) for r in rows if r["default"] == "0"]
    assert sum(s_bad) / len(s_bad) < sum(s_good) / len(s_good) - 0.3
    tzs = {r["tz"] for r in rows}
    assert {"Asia/Shanghai", "Europe/Berlin", "America/New_York"} <= tzs
    # 15 % decline location: roughly, and grants never include a declined category.
    declined = sum("location" in r["declined_categories"].split(";") for r in rows)
    assert 0.067 * len(rows) <= declined <= 0.267 * len(rows)
    grants = [json.loads(x) for x in (tmp_path / "consent_grants.jsonl").open()]
    by_user = {(g["user_id"], g["category"]) for g in grants}
    for r in rows:
        for cat in filter(None, r["declined_categories"].split(";")):
            assert (r["user_id"], cat) not in by_user
    start = datetime.fromtimestamp(cfg.start_ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert grants and all(g["at"] < start for g in grants)  # backdated before the history


def test_message_budget_is_about_thirty_per_household_day(tmp_path: Path) -> None:
    gen = generate(_cfg(households=20, days=6), tmp_path)
    # ~30 for the first member and the home's devices, ~11 more for each other member.
    per_day = gen.messages / (20 * 6) - 11 * (gen.users - 20) / 20
    assert 22 <= per_day <= 38
    assert set(gen.messages_by_format) == {"owntracks", "zigbee2mqtt", "tasmota", "hearth"}


RATE = 0.05


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("faulty")
    rates = FaultRates(
        offline=RATE,
        duplicate=RATE,
        out_of_order=RATE,
        late=RATE,
        clock_skew=RATE,
        malformed=RATE,
        spoof=0.2,
    )
    gen = generate(_cfg(households=30, days=12, faults=rates, unconsented_devices=3), out)
    return out, gen


def _within(count: int, n: int, rate: float) -> bool:
    sd = math.sqrt(n * rate * (1 - rate))
    return abs(count - n * rate) <= 4.5 * sd + 2


def test_each_fault_appears_at_its_rate(faulty: tuple[Path, object]) -> None:
    out, _gen = faulty
    rows = _lines(out)
    originals = [r for r in rows if "duplicate" not in r[1].split(",")]
    n = len(originals)
    assert n > 5000
    tags = Counter(t.split(":")[0] for r in originals for t in r[1].split(",") if t)
    assert _within(tags["clock_skew"], n, RATE)
    assert _within(tags["late"], n, RATE)
    assert _within(tags["malformed"], n, RATE * 0.95)  # spoofed messages are not malformed too
    dups = sum("duplicate" in r[1].split(",") for r in rows)
    assert _within(dups, n, RATE)
    assert _within(tags["out_of_order"], n, RATE * 0.9)
    canonical = [r for r in originals if r[2].startswith("hearth/v1/")]
    assert _within(sum("spoof" in r[1] for r in canonical), len(canonical), 0.2)
    manifest = json.loads((out / "manifest.json").read_text())
    # Offline faults drop whole device-days: the count of days is binomial, the count of
    # messages is not (its variance grows with the messages a device sends per day).
    assert _within(manifest["faults"]["offline_device_days"], manifest["device_days"], RATE)
    base = sum(manifest["base_messages_by_format"].values())
    per_day = base / manifest["device_days"]
    assert abs(manifest["faults"]["offline_dropped"] - base * RATE) <= per_day * (
        4.5 * math.sqrt(manifest["device_days"] * RATE * (1 - RATE)) + 2
    )


def test_faults_are_really_in_the_payloads(faulty: tuple[Path, object]) -> None:
    out, _ = faulty
    rows = _lines(out)
    seen_dup = set()
    for _key, tags, topic, payload in rows:
        tagset = set(tags.split(",")) - {""}
        if any(t.startswith("malformed") for t in tagset):
            try:
                obj = json.loads(
                    payload, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c))
                )
            except ValueError:
                continue
            if isinstance(obj, dict):  # wrong_type: numbers became strings, or (a payload
                # without numbers, device_sim.faults.malform) its first string a number
                assert ('":"' in payload and not re.search(r'":-?\d', payload)) or re.search(
                    r'^\{"[^"]*":12345[,}]', payload
                )
            continue
        if "spoof" in tagset:
            claimed = json.loads(payload)["device_id"]
            assert claimed != topic.split("/")[2]
        if "duplicate" in tagset:
            seen_dup.add((topic, payload))
        if topic.startswith("hearth/v1/") and "late" not in tagset:
            body = json.loads(payload)
            assert body["device_id"] == topic.split("/")[2] or "spoof" in tagset
    assert seen_dup
    # Out-of-order lines: the tagged message follows one stamped later.
    ooo = 0
    for i, (key, tags, topic, payload) in enumerate(rows):
        if "out_of_order" in tags and topic.startswith("owntracks/") and i > 0:
            prev = rows[i - 1]
            if prev[0] == key and prev[3].startswith("{") and payload.startswith("{"):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    ooo += int(json.loads(prev[3])["tst"]) > int(json.loads(payload)["tst"])
    assert ooo > 0


def test_unconsented_devices_have_no_grants(faulty: tuple[Path, object]) -> None:
    out, _ = faulty
    devices = [json.loads(x) for x in (out / "devices.jsonl").open()]
    extra = [d for d in devices if not d["consented"]]
    assert len(extra) == 3
    granted_users = {json.loads(x)["user_id"] for x in (out / "consent_grants.jsonl").open()}
    assert not {d["user_id"] for d in extra} & granted_users
    gt_users = {r["user_id"] for r in csv.DictReader((out / "ground_truth.csv").open())}
    assert not {d["user_id"] for d in extra} & gt_users


def test_payload_shapes_follow_the_documented_formats(tmp_path: Path) -> None:
    generate(_cfg(households=12, days=3), tmp_path)
    kinds: Counter[str] = Counter()
    for _, _, topic, payload in _lines(tmp_path):
        if topic.startswith("owntracks/"):
            body = json.loads(payload)
            kinds[body["_type"]] += 1
            assert isinstance(body["tst"], int) and isinstance(body["lat"], float)
            if body["_type"] == "location":
                assert body["conn"] in {"w", "m"} and 0 <= body["batt"] <= 100
                assert ("SSID" in body) == (body["conn"] == "w")
            else:
                assert topic.endswith("/event") and body["event"] in {"enter", "leave"}
        elif topic.startswith("zigbee2mqtt/"):
            body = json.loads(payload)
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["last_seen"])
            kinds["z2m"] += 1
        elif topic.startswith("tele/"):
            if topic.endswith("/LWT"):
                assert payload in {"Online", "Offline"}
                continue
            body = json.loads(payload)
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", body["Time"])
            if topic.endswith("/SENSOR"):
                assert {"Total", "Today", "Power"} <= set(body["ENERGY"])
            else:
                assert isinstance(body["UptimeSec"], int) and "Signal" in body["Wifi"]
            kinds["tasmota"] += 1
        else:
            assert topic.startswith("hearth/v1/")
            body = json.loads(payload)
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["ts"])
            assert body["device_id"] == topic.split("/")[2]
            kinds["hearth"] += 1
    assert kinds["location"] and kinds["transition"] and kinds["z2m"] and kinds["tasmota"]


def test_registration_files_are_written_before_the_stream(tmp_path: Path) -> None:
    """``run`` registers from the plan while parts are generated: the plan must be complete
    before the first part and name exactly the devices the parts then contain."""
    events: list[str] = []
    plans: list[FleetPlan] = []
    parts: list[PartResult] = []

    def on_plan(plan: FleetPlan) -> None:
        events.append("plan")
        plans.append(plan)
        assert (tmp_path / "devices.jsonl").stat().st_size > 0
        assert (tmp_path / "consent_grants.jsonl").stat().st_size > 0
        assert not list((tmp_path / "parts").glob("*.tsv"))

    def on_part(res: PartResult) -> None:
        events.append(f"part{res.index}")
        assert res.path is not None and res.path.stat().st_size > 0
        parts.append(res)

    cfg = _cfg(households=7, households_per_part=3, unconsented_devices=2)
    generate(cfg, tmp_path, processes=2, on_plan=on_plan, on_part=on_part)
    assert events == ["plan", "part0", "part1", "part2"]
    (plan,) = plans
    written = [json.loads(x) for x in (tmp_path / "devices.jsonl").open()]
    assert written == plan.devices == [rec for res in parts for rec in res.devices]
    assert [len(p) for p in plan.parts] == [len(res.devices) for res in parts]
    keys = {rec["key"] for rec in written}
    for res in parts:
        assert res.path is not None
        streamed = {line.split("\t", 1)[0] for line in res.path.read_text().splitlines()}
        assert streamed <= keys & {rec["key"] for rec in res.devices}
    grants = [json.loads(x) for x in (tmp_path / "consent_grants.jsonl").open()]
    assert grants == plan.grants
    assert not {d["user_id"] for d in written if not d["consented"]} & {
        g["user_id"] for g in grants
    }


def test_registration_batches_grow() -> None:
    assert registration_batches(1) == [[0]]
    assert registration_batches(3) == [[0], [1, 2]]
    batches = registration_batches(21)
    assert [len(b) for b in batches] == [1, 4, 16]
    assert [p for b in batches for p in b] == list(range(21))


def _bssids_by_user(out: Path) -> dict[str, set[str]]:
    """Every Wi-Fi access point each user's devices reported, from the stream files."""
    owner = {d["key"]: d["user_id"] for d in map(json.loads, (out / "devices.jsonl").open())}
    seen: dict[str, set[str]] = {}
    for key, _tags, _topic, payload in _lines(out):
        body = json.loads(payload) if payload.startswith("{") else {}
        bssid = body.get("BSSID") or body.get("Wifi", {}).get("BSSId")
        if bssid:
            seen.setdefault(owner[key], set()).add(bssid)
    return seen


def test_household_members_share_the_home_network_and_coworkers_the_office(
    tmp_path: Path,
) -> None:
    gen = generate(_cfg(households=40, days=40, seed=5), tmp_path)
    rows = list(csv.DictReader((tmp_path / "ground_truth.csv").open()))
    bssids = _bssids_by_user(tmp_path)
    households: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        households.setdefault(r["household_id"], []).append(r)
    assert gen.users == len(rows) > 40
    shared = 0
    for members in households.values():
        first = members[0]
        assert first["member"] == "0" and first["moved_in_day"] == first["moved_out_day"] == ""
        for m in members[1:]:
            assert bssids.get(m["user_id"], set()) & bssids.get(first["user_id"], set())
            shared += 1
            if m["moved_in_day"] or m["moved_out_day"]:  # a home of their own too
                assert bssids[m["user_id"]] - bssids[first["user_id"]]
        changes = sum(bool(m["moved_in_day"] or m["moved_out_day"]) for m in members)
        assert all(int(m["household_changes"]) == changes for m in members)
    assert shared > 20
    # Coworkers at one shared workplace from different households (whose homes' networks differ)
    # see one office network.
    household_of = {r["user_id"]: r["household_id"] for r in rows}
    by_workplace: dict[str, list[str]] = {}
    for r in rows:
        if r["workplace"]:
            by_workplace.setdefault(r["workplace"], []).append(r["user_id"])
    pairs = [
        (a, b)
        for users in by_workplace.values()
        for a in users
        for b in users
        if a < b and household_of[a] != household_of[b]
    ]
    office = [bssids.get(a, set()) & bssids.get(b, set()) for a, b in pairs]
    assert pairs and sum(bool(o) for o in office) >= 0.8 * len(pairs)


def test_membership_changes_carry_part_of_the_risk() -> None:
    fleet = draw_fleet(_cfg(households=20_000, days=90, seed=3))
    household = np.repeat(np.arange(20_000), np.diff(fleet.first_user))
    changed = fleet.household_changes[household] > 0
    assert changed.sum() > 2000
    assert fleet.default[changed].mean() > fleet.default[~changed].mean() + 0.02
    # The latent score the oracle sees carries that part: c/b per change below stability.
    gap = fleet.stability - fleet.latent
    np.testing.assert_allclose(gap, fleet.household_changes[household] * 0.4 / 1.2)
