"""The household graph: hand-built households with closed-form expected values.

Every user below lives in UTC and sends readings on the hour, so nights and weekdays are plain
arithmetic on the 90-day grid ending at T (day 0 = T - 90 days; the 30-day window's nights are
the evenings of days 59 .. 89: 31 nights, weeks of 7 nights from the evening of day 59).

* Household 1: A and B, every night at home together (a Wi-Fi access point and a geohash).
* Household 2: C stays and reports on even days only; D lives there until day 75 and then
  elsewhere; E moves in on day 80 — the member moving out mid-window.
* F lives alone; G consented to relationships but to neither network category (no linkable
  data); H never consented to relationships.
* Daytime: A works at an office network every weekday, F there on even weekdays (coworkers);
  C at an office of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from features.catalogue.library.sightings import MAX_HOME_PEOPLE
from features.engine import FeatureVector, Knowledge, compute_vectors
from features.rollups import refresh_rollups
from hearth.signals import Category
from tests.support.builders import CategoricalRow, add_device, add_user, insert_categorical
from tests.support.households import (
    HISTORY,
    ING,
    NETWORK,
    OTHERS,
    T,
    at,
    home,
    office,
    weekday,
)

WINDOW_30 = range(60, 90)  # the 30-day window's days; its nights: evenings of 59 .. 89
WEEKDAYS_30 = [d for d in WINDOW_30 if weekday(d)]


def _people(conn: psycopg.Connection[tuple[object, ...]], prefix: str) -> None:
    granted = at(-20, 0)
    for name in "ABCDEF":
        add_user(conn, f"{prefix}{name}", granted_at=granted)
    add_user(conn, f"{prefix}G", categories=(Category.RELATIONSHIPS, *OTHERS), granted_at=granted)
    add_user(conn, f"{prefix}H", categories=(*NETWORK, *OTHERS), granted_at=granted)
    for name in "ABCDEFGH":
        add_device(conn, f"{prefix}{name}-phone", f"{prefix}{name}", "phone")


def _people_in(conn: psycopg.Connection[tuple[object, ...]], users: list[str]) -> None:
    for user in users:
        add_user(conn, user, granted_at=at(-20, 0))
        add_device(conn, f"{user}-phone", user, "phone")


def _readings(prefix: str) -> list[CategoricalRow]:
    def dev(name: str) -> tuple[str, str]:
        return f"{prefix}{name}-phone", f"{prefix}{name}"

    rows: list[CategoricalRow] = []
    for day in HISTORY:
        rows += home(*dev("A"), day, "net-h1", "cellh1a")
        rows += home(*dev("B"), day, "net-h1", "cellh1a")
        if day % 2 == 0:
            rows += home(*dev("C"), day, "net-h2", "cellh2a")
        if day < 75:
            rows += home(*dev("D"), day, "net-h2", "cellh2a")
        else:
            rows += home(*dev("D"), day, "net-d2", "celld2a")
        if day >= 80:
            rows += home(*dev("E"), day, "net-h2", "cellh2a")
        else:
            rows += home(*dev("E"), day, "net-e0", "celle0a")
        rows += home(*dev("F"), day, "net-f", "cellf0a")
        rows += home(*dev("G"), day, "net-g", "cellg0a")  # not consented: never stored
        rows += home(*dev("H"), day, "net-h1", "cellh1a")  # shares A and B's home: no consent
        if weekday(day):
            rows += office(*dev("A"), day, "net-work")
            rows += office(*dev("C"), day, "net-c-work")
            if day % 2 == 0:
                rows += office(*dev("F"), day, "net-work")
    # G's connectivity and location were never consented: the collector would not store them.
    return [r for r in rows if r[2] != f"{prefix}G"]


@pytest.fixture(scope="module")
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def vectors(db: psycopg.Connection[tuple[object, ...]]) -> dict[str, FeatureVector]:
    _people(db, "hh-")
    insert_categorical(db, _readings("hh-"))
    refresh_rollups(db, full=True)  # back-dated ingest times: below any earlier watermark
    users = [f"hh-{n}" for n in "ABCDEFGH"]
    return {v.user_id.removeprefix("hh-"): v for v in compute_vectors(db, users, T)}


def value(vectors: dict[str, FeatureVector], user: str, name: str) -> float | None:
    return vectors[user].values[name].value


def test_household_of_two_every_night(vectors: dict[str, FeatureVector]) -> None:
    for user in "AB":
        assert value(vectors, user, "household_size_30d") == 2
        assert value(vectors, user, "household_size_90d") == 2
        assert value(vectors, user, "linkable_night_share_30d") == 1.0
        assert value(vectors, user, "household_churn_30d") == 0.0
        assert value(vectors, user, "household_tenure_30d") == 30  # censored: no change seen
        assert value(vectors, user, "household_network_stability_30d") == 1.0
    # H saw the same home every night but never consented to relationships: not counted, and
    # H's own relationship features are null for that reason.
    for cell in (c for n, c in vectors["H"].values.items() if n.startswith("household_size")):
        assert cell.value is None and cell.reason == "not_consented"


def test_member_moving_out_mid_window(vectors: dict[str, FeatureVector]) -> None:
    # C: sightings on even days 60 .. 88 (15 of 31 nights); D co-resident on even days 60 .. 74
    # (8 nights), E on even days 80 .. 88 (5): both linked (≥ 4 nights).
    assert value(vectors, "C", "linkable_night_share_30d") == pytest.approx(15 / 31)
    assert value(vectors, "C", "household_size_30d") == 3
    # Weekly sets {C, D}, {C, D}, {C, D}, {C, E}, {C, E}: one change, distance 2/3 of 4 pairs.
    assert value(vectors, "C", "household_churn_30d") == pytest.approx(2 / 3 / 4)
    assert value(vectors, "C", "household_tenure_30d") == 31 - 7 * 3
    # Home: the geohash (ties with the access point go to the geohash). Seen by C, D or E on
    # nights 59 .. 74, the even nights 76 and 78, and 80 .. 89: 28 of 31.
    assert value(vectors, "C", "household_network_stability_30d") == pytest.approx(28 / 31)
    # D: linked to C only (E came after D left); sets {D, C} x3 then {D} x2.
    assert value(vectors, "D", "household_size_30d") == 2
    assert value(vectors, "D", "household_churn_30d") == pytest.approx(1 / 2 / 4)
    assert value(vectors, "D", "household_tenure_30d") == 31 - 7 * 3
    # D's home is the household's (16 nights against 15 at the new place), seen by D on nights
    # 59 .. 74 and by C on the even nights 76 .. 88: 23 of 31.
    assert value(vectors, "D", "household_network_stability_30d") == pytest.approx(23 / 31)
    # E: linked to C from day 80 (5 even nights); E's own home before that was another one.
    assert value(vectors, "E", "household_size_30d") == 2


def test_lives_alone_is_not_no_data(vectors: dict[str, FeatureVector]) -> None:
    assert value(vectors, "F", "household_size_30d") == 1
    assert value(vectors, "F", "linkable_night_share_30d") == 1.0
    assert value(vectors, "F", "household_churn_30d") == 0.0
    # G consented to relationships but to neither network category: nothing linkable.
    assert value(vectors, "G", "linkable_night_share_30d") == 0.0
    assert value(vectors, "G", "household_size_30d") is None
    assert vectors["G"].values["household_size_30d"].reason is None  # no data, not no consent


def test_daytime_network_regularity(vectors: dict[str, FeatureVector]) -> None:
    n = len(WEEKDAYS_30)
    f_days = [d for d in WEEKDAYS_30 if d % 2 == 0]
    assert len(f_days) >= 3
    assert value(vectors, "A", "daytime_network_regularity_30d") == pytest.approx(1.0)
    assert value(vectors, "F", "daytime_network_regularity_30d") == pytest.approx(len(f_days) / n)
    assert value(vectors, "C", "daytime_network_regularity_30d") == 0.0  # an office of one
    assert value(vectors, "B", "daytime_network_regularity_30d") is None  # no daytime data


def test_a_link_formed_after_t_does_not_count_at_t(
    db: psycopg.Connection[tuple[object, ...]],
) -> None:
    _people(db, "pit-")
    rows: list[CategoricalRow] = []
    for day in HISTORY:
        rows += home("pit-A-phone", "pit-A", day, "net-pit", "cellpit")
        # B moves in with A two days after T; before that B lives elsewhere.
        rows += home("pit-B-phone", "pit-B", day, "net-pit-b", "cellpib")
    for day in range(92, 100):
        rows += home("pit-B-phone", "pit-B", day, "net-pit", "cellpit")
        rows += home("pit-A-phone", "pit-A", day, "net-pit", "cellpit")
    # C's readings of A's home have event times before T but reached Hearth after T.
    late = [
        (t, "pit-C-phone", "pit-C", signal, value, T + timedelta(hours=3))
        for day in range(60, 90)
        for (t, _, _, signal, value, _) in home("pit-C-phone", "pit-C", day, "net-pit", "cellpit")
    ]
    insert_categorical(db, rows + late)
    refresh_rollups(db, full=True)  # back-dated ingest times: below the watermark
    at_t = {v.user_id: v for v in compute_vectors(db, ["pit-A"], T)}
    assert at_t["pit-A"].values["household_size_30d"].value == 1
    later = T + timedelta(days=10)
    after = {v.user_id: v for v in compute_vectors(db, ["pit-A"], later)}
    assert after["pit-A"].values["household_size_30d"].value == 3  # B (8 nights) and C
    # Known at its event time (replayed history): C's late readings count as of T.
    replay = compute_vectors(db, ["pit-A"], T, knowledge=Knowledge.EVENT)
    assert replay[0].values["household_size_30d"].value == 2


def test_a_device_day_partly_known_at_t_counts_its_known_hours(
    db: psycopg.Connection[tuple[object, ...]],
) -> None:
    # network_sightings keeps one row per device-day: a day whose readings reached Hearth
    # partly before and partly after T is recomputed from raw rows as of T, hour by hour.
    _people_in(db, ["mix-A", "mix-Q", "mix-R"])

    def reading(user: str, day: int, hour: int, late: bool = False) -> CategoricalRow:
        t = at(day, hour)
        ingested = T + timedelta(hours=5) if late else t + ING
        return (t, f"{user}-phone", user, "wifi_bssid_hash", "net-mix", ingested)

    rows = [r for day in HISTORY for r in home("mix-A-phone", "mix-A", day, "net-mix", "cellmx")]
    for day in range(60, 64):  # Q: 23:00 known at T, 22:00 of the same day not: 4 nights
        rows += [reading("mix-Q", day, 23), reading("mix-Q", day, 22, late=True)]
    for day in range(60, 63):  # R: 3 nights known at T ...
        rows.append(reading("mix-R", day, 23))
    for day in range(63, 66):  # ... and 3 days known at noon only, their nights after T
        rows += [reading("mix-R", day, 12), reading("mix-R", day, 22, late=True)]
    insert_categorical(db, rows)
    refresh_rollups(db, full=True)
    mixed = db.execute(
        """SELECT count(*) FROM network_sightings WHERE user_id IN ('mix-Q', 'mix-R')
              AND first_ingested_at <= %(t)s AND max_ingested_at > %(t)s""",
        {"t": T},
    ).fetchone()
    assert mixed == (7,)  # the rows this test is about
    at_t = compute_vectors(db, ["mix-A"], T)[0].values
    assert at_t["household_size_30d"].value == 2  # A and Q; R's 3 known nights are too few
    later = compute_vectors(db, ["mix-A"], T + timedelta(days=1))[0].values
    assert later["household_size_30d"].value == 3  # R's 6 nights known by then


def test_a_network_too_many_people_share_links_nobody(
    db: psycopg.Connection[tuple[object, ...]],
) -> None:
    # Ten consenting people sleep under one access point and in one geohash (a dormitory);
    # two of them also share a second access point of their own.
    users = [f"dorm-{i}" for i in range(10)]
    _people_in(db, users)
    rows: list[CategoricalRow] = []
    for day in HISTORY:
        for u in users:
            rows += home(f"{u}-phone", u, day, "net-dorm", "celldor")
        t = at(day, 2)
        rows += [(t, f"{u}-phone", u, "wifi_bssid_hash", "net-pair", t + timedelta(minutes=1))
                 for u in users[:2]]  # fmt: skip
    insert_categorical(db, rows)
    refresh_rollups(db, full=True)
    got = {v.user_id: v.values for v in compute_vectors(db, users, T)}
    assert len(users) > MAX_HOME_PEOPLE
    assert got["dorm-0"]["household_size_30d"].value == 2
    assert got["dorm-1"]["household_size_30d"].value == 2
    assert got["dorm-5"]["household_size_30d"].value == 1
    assert got["dorm-5"]["linkable_night_share_30d"].value == 1.0  # data, but no household
