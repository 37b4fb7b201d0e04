"""Historical retrieval at scale (issue 7): 10,000 (user, as_of) rows in, exactly 10,000 out, in
order, each equal to the engine's point-in-time vector — through the real ``features serve``."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from math import isclose

import psycopg
import pytest

from features.client import HearthClient
from features.engine import compute_historical
from features.rollups import refresh_rollups
from hearth.signals import Category
from tests.support.builders import add_device, add_user, insert_numeric
from tests.support.service import serve_subprocess

pytestmark = pytest.mark.slow

TOKEN = "historical-token-0123456789"
USERS = [f"hist-{i:02d}" for i in range(40)]
AS_OFS = [datetime(2026, 3, day, 12, tzinfo=UTC) for day in (2, 9, 16, 23)]
ROWS = 10_000


def _seed(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Forty users whose phones charge and plugs draw power at user-specific rhythms."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i, user in enumerate(USERS):
        categories = list(Category) if i % 5 else [Category.ENERGY]  # some lack most consents
        add_user(conn, user, tz="Europe/Berlin", categories=categories, granted_at=start)
        add_device(conn, f"{user}-phone", user, "phone")
        add_device(conn, f"{user}-plug", user, "plug")
        rows = []
        for day in range(85):
            t = start + timedelta(days=day, hours=(20 + i % 5) % 24, minutes=7 * (day % 3))
            ingested = t + timedelta(minutes=5)
            rows.append((t, f"{user}-phone", user, "charging", 1.0, ingested))
            rows.append(
                (t, f"{user}-phone", user, "battery_pct", float(15 + (day * i) % 80), ingested)
            )
            for hour in (8, 19):
                p = start + timedelta(days=day, hours=hour)
                watts = 40.0 + i + 10 * ((day + hour) % 4)
                rows.append((p, f"{user}-plug", user, "power_w", watts, p + timedelta(minutes=1)))
        insert_numeric(conn, rows)


def test_ten_thousand_rows_in_order_equal_to_the_engine(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        _seed(conn)
        # Back-dated ingest stamps sit below any watermark an earlier test left: rebuild.
        refresh_rollups(conn, full=True)
        pairs = [(u, t) for u in USERS for t in AS_OFS]
        expected = dict(zip(pairs, compute_historical(conn, pairs), strict=True))
    rng = random.Random(7)
    rows = [rng.choice(pairs) for _ in range(ROWS - 1)] + [("nobody", AS_OFS[0])]
    rng.shuffle(rows)

    with serve_subprocess(database_url, {TOKEN: ["features:read"]}) as url:
        result = HearthClient(url, TOKEN).historical_rows(rows).rows

    assert len(result) == ROWS
    compared = 0
    for i, (out, (user, as_of)) in enumerate(zip(result, rows, strict=True)):
        assert (out.row, out.user_id, out.as_of) == (i, user, as_of)
        engine = expected.get((user, as_of))
        if engine is None:
            assert out.reason == "unknown_user" and out.features is None
            continue
        assert out.features is not None, out.reason
        assert out.feature_set_version == engine.feature_set_version
        assert set(out.features) == set(engine.values)
        # math.isclose, not pytest.approx: a million approx objects were half the test's time.
        for name, cell in engine.values.items():
            got = out.features[name]
            assert isclose(got.coverage, cell.coverage, rel_tol=0, abs_tol=1e-9), (name, got)
            if cell.value is None:
                assert got.value is None, name
            else:
                assert got.value is not None, name
                assert isclose(got.value, cell.value, rel_tol=1e-9, abs_tol=1e-12), (name, got)
        compared += 1
    assert compared == ROWS - 1
    # The data carry signal: some features are non-null for the fully consented users.
    some = expected[(USERS[1], AS_OFS[-1])]
    assert some is not None and sum(v.value is not None for v in some.values.values()) >= 10
