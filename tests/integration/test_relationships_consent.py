"""Relationships need both ends (docs/invariants.md#9).

* A link disappears when either end withdraws ``relationships`` or the category the link comes
  from, or is erased: the other end's stored relationship features are withheld, no stored link
  end names them any more, and a recomputation leaves them out.
* A withdrawal racing a materialisation (computed before, written after) is caught at the write.
* Relationship features read only the graph's structure: changing another user's stored
  snapshots (their feature values) does not change them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from features.engine import compute_vectors
from features.rollups import refresh_rollups
from features.snapshots.materialize import materialize
from features.snapshots.store import read_snapshots
from hearth import admin
from hearth.ledger import link_end_ref
from hearth.signals import Category
from tests.support.builders import insert_categorical
from tests.support.households import T, people, together

Db = psycopg.Connection[tuple[object, ...]]
REL = (
    "household_size_30d",
    "household_churn_90d",
    "household_network_stability_30d",
    "linkable_night_share_30d",
)


@pytest.fixture(scope="module")
def db(database_url: str) -> Iterator[Db]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def _household(
    db: Db, users: list[str], categories: tuple[Category, ...] = tuple(Category)
) -> None:
    people(db, users, categories)
    insert_categorical(db, together(users, f"net-{users[0]}", f"cell{users[0][-3:]}"))
    refresh_rollups(db, full=True)  # back-dated ingest times: below any earlier watermark


def _size(db: Db, user: str) -> float | None:
    return compute_vectors(db, [user], T)[0].values["household_size_30d"].value


def _links(db: Db, user: str) -> dict[str, int]:
    """Stored link ends of the user's snapshots, and rows naming the user as a link end."""
    row = db.execute(
        """SELECT (SELECT count(*) FROM snapshot_links WHERE user_id = %s),
                  (SELECT count(*) FROM snapshot_links WHERE link_ref = %s)""",
        (user, link_end_ref(user)),
    ).fetchone()
    assert row is not None
    return {"own": int(str(row[0])), "named": int(str(row[1]))}


def _sightings(db: Db, user: str) -> dict[str, int]:
    """The user's network_sightings rows by signal."""
    rows = db.execute(
        "SELECT signal, count(*) FROM network_sightings WHERE user_id = %s GROUP BY 1", (user,)
    ).fetchall()
    return {str(s): int(str(n)) for s, n in rows}


def _stored(db: Db, user: str) -> dict[str, object]:
    vec = read_snapshots(db, [user], T)[user]
    return {n: (vec.values[n].value, vec.values[n].reason) for n in REL}


def test_withdrawing_relationships_at_one_end_removes_the_link(db: Db) -> None:
    _household(db, ["bw-m", "bw-n"])
    materialize(db, T, users=["bw-m", "bw-n"], progress=False)
    assert _stored(db, "bw-m")["household_size_30d"] == (2.0, None)
    assert _links(db, "bw-m") == {"own": 3, "named": 3}  # relationships, connectivity, location
    assert _links(db, "bw-n") == {"own": 3, "named": 3}

    report = admin.withdraw_consent(db, user_id="bw-n", category="relationships")
    assert report.status == "complete"
    assert report.counts["feature_snapshots.linked"] == 1  # m's snapshot
    for user in ("bw-m", "bw-n"):
        cells = _stored(db, user)
        assert all(v == (None, "consent_withdrawn") for v in cells.values()), cells
        assert _links(db, user) == {"own": 0, "named": 0}
    # Recomputed (as of the same T): n withdrew since, so m lives alone as far as anyone shows.
    assert _size(db, "bw-m") == 1
    again = compute_vectors(db, ["bw-n"], T)[0].values["household_size_30d"]
    assert again.value is None and again.reason == "consent_withdrawn"


def test_withdrawing_the_links_category_removes_the_links_of_that_kind(db: Db) -> None:
    # Linked through the Wi-Fi access point only: neither consented to location.
    cats = tuple(c for c in Category if c is not Category.LOCATION)
    _household(db, ["bc-p", "bc-q"], cats)
    materialize(db, T, users=["bc-p", "bc-q"], progress=False)
    assert _stored(db, "bc-q")["household_size_30d"] == (2.0, None)
    assert _links(db, "bc-q") == {"own": 2, "named": 2}
    held = _sightings(db, "bc-p")
    assert held["wifi_bssid_hash"] > 0

    report = admin.withdraw_consent(db, user_id="bc-p", category="connectivity")
    assert report.status == "complete"
    # The rollup job's network sightings of the category go with the raw rows and rollups.
    assert report.counts["network_sightings"] == held["wifi_bssid_hash"]
    assert "wifi_bssid_hash" not in _sightings(db, "bc-p")
    assert _sightings(db, "bc-p").get("geohash") == held.get("geohash")  # another category
    assert _sightings(db, "bc-q")["wifi_bssid_hash"] > 0
    # p's own relationship features came from p's connectivity data: withheld with it.
    assert _stored(db, "bc-p")["household_size_30d"] == (None, "consent_withdrawn")
    assert _stored(db, "bc-q")["household_size_30d"] == (None, "consent_withdrawn")
    assert _links(db, "bc-p") == {"own": 0, "named": 0}
    assert _links(db, "bc-q") == {"own": 0, "named": 0}
    assert _size(db, "bc-q") == 1


def test_a_withdrawal_between_computing_and_writing_is_caught_at_the_write(db: Db) -> None:
    _household(db, ["br-a", "br-b"])
    materialize(db, T, users=["br-b"], progress=False)  # b's snapshot names a as a link end

    def withdraw(users: object) -> None:
        admin.withdraw_consent(db, user_id="br-b", category="relationships")

    # a's vector is computed with b linked, then b withdraws before a's chunk is written.
    materialize(db, T, users=["br-a"], progress=False, before_write=withdraw)
    assert _stored(db, "br-a")["household_size_30d"] == (None, "consent_withdrawn")
    assert _links(db, "br-a") == {"own": 0, "named": 0}
    assert _links(db, "br-b") == {"own": 0, "named": 0}


def test_erasing_one_end_removes_the_link(db: Db) -> None:
    _household(db, ["be-r", "be-s"])
    materialize(db, T, users=["be-r", "be-s"], progress=False)
    exported = json.dumps(admin.export_user(db, "be-r"))
    assert '"snapshot_links"' in exported and "be-s" not in exported  # a keyed hash, not an id
    assert _sightings(db, "be-s")
    report = admin.erase_user(db, "be-s")
    assert report.status == "complete"
    assert _sightings(db, "be-s") == {}
    assert _stored(db, "be-r")["household_size_30d"] == (None, "consent_withdrawn")
    assert _links(db, "be-r") == {"own": 0, "named": 0}
    assert db.execute("SELECT count(*) FROM snapshot_links WHERE link_ref = %s",
                      (link_end_ref("be-s"),)).fetchone() == (0,)  # fmt: skip
    assert _size(db, "be-r") == 1


def test_relationship_features_never_read_other_users_feature_values(db: Db) -> None:
    _household(db, ["bv-x", "bv-y", "bv-z"])
    materialize(db, T, users=["bv-y", "bv-z"], progress=False)
    before = compute_vectors(db, ["bv-x"], T)[0].values
    assert before["household_size_30d"].value == 3
    # The other members' stored feature values (what a label-propagating or neighbour-averaging
    # feature would read) changed beyond recognition, as if their risk had changed.
    db.execute(
        """UPDATE feature_snapshots
              SET vals = hearth_pack_float8(array_fill(999.0::float8, ARRAY[length(vals) / 8])),
                  covs = hearth_pack_float8(array_fill(1.0::float8, ARRAY[length(covs) / 8]))
            WHERE user_id IN ('bv-y', 'bv-z')"""
    )
    changed = read_snapshots(db, ["bv-y"], T)["bv-y"].values["household_size_30d"]
    assert changed.value == 999.0
    after = compute_vectors(db, ["bv-x"], T)[0].values
    for name, cell in before.items():
        if name.startswith(("household_", "linkable_", "daytime_")):
            assert after[name] == cell, name
