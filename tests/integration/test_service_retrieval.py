"""Point-in-time retrieval (issue 15 §3): ``mode`` snapshot and exact, feature selection, and the
three response formats of ``POST /v1/features/historical`` (NDJSON, CSV, Arrow IPC), in process
against the session's database.

* snapshot mode serves the latest snapshot with as_of in [t - max_age, t] — never a later one,
  never an older one — and says ``no_snapshot`` otherwise (checked against a brute-force
  oracle over random rows);
* NDJSON, CSV and Arrow carry identical values, nulls and coverage;
* a withdrawn category is null in every mode and format;
* ``features`` selects and orders columns; an unknown name is a 400; Arrow requests are
  validated as arrays.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pyarrow as pa
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION
from features.rollups import refresh_rollups
from features.service.app import create_app
from features.snapshots.materialize import materialize
from hearth import admin
from hearth.settings import load_settings
from hearth.signals import Category
from tests.support.builders import add_device, add_user, insert_numeric
from tests.support.service import seed_snapshot, seed_user

READ = "retrieval-token-0123456789"
H = {"Authorization": f"Bearer {READ}"}
ARROW = "application/vnd.apache.arrow.stream"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
F_A, F_B = "active_day_ratio_30d", "longest_gap_days_30d"
NAMES = [d.name for d in DEFINITIONS]
DEVICE_HEALTH = [d.name for d in DEFINITIONS if d.category == Category.DEVICE_HEALTH]
# Snapshots of rt-snap at irregular times (hours after T0), values = the hour.
SNAP_HOURS = [0, 5, 30, 31, 80, 200, 201, 400]
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
T_W = NOW - timedelta(days=10)  # rt-wd's snapshot, before its withdrawal

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _seed_withdrawn(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """rt-wd: phone and plug data, a snapshot at T_W, then device_health withdrawn."""
    user = "rt-wd"
    start = NOW - timedelta(days=40)
    add_user(conn, user, granted_at=start - timedelta(days=1))
    add_device(conn, f"{user}-phone", user, "phone")
    add_device(conn, f"{user}-plug", user, "plug")
    rows = []
    for h in range(0, 40 * 24, 3):
        t = start + timedelta(hours=h)
        rows.append((t, f"{user}-phone", user, "battery_pct", float(40 + h % 50), t))
        rows.append((t, f"{user}-plug", user, "power_w", float(30 + h % 7), t))
    insert_numeric(conn, rows)
    refresh_rollups(conn, full=True)
    materialize(conn, T_W, users=[user], progress=False)
    admin.withdraw_consent(conn, user_id=user, category="device_health", settle_s=0)


@pytest.fixture(scope="module")
def seeded(database_url: str) -> Iterator[str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        seed_user(conn, "rt-snap", consent_from=T0 - timedelta(days=30))
        for h in SNAP_HOURS:
            cells = {F_A: {"value": float(h), "coverage": 1.0}, F_B: {"value": None,
                     "coverage": 0.5}}  # fmt: skip
            seed_snapshot(conn, "rt-snap", T0 + timedelta(hours=h), FEATURE_SET_VERSION, cells)
        _seed_withdrawn(conn)
    yield database_url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(seeded: str) -> AsyncIterator[TestClient[Any, Any]]:
    settings = load_settings(database_url=seeded, api_tokens=json.dumps({READ: ["features:read"]}))
    async with TestClient(TestServer(create_app(settings, cache_entries=0))) as c:
        yield c


async def _ndjson(client: TestClient[Any, Any], body: dict[str, Any]) -> list[dict[str, Any]]:
    resp = await client.post("/v1/features/historical", json=body, headers=H)
    assert resp.status == 200, await resp.text()
    return [json.loads(line) for line in (await resp.text()).splitlines()]


async def _csv(client: TestClient[Any, Any], body: dict[str, Any]) -> list[dict[str, str]]:
    resp = await client.post(
        "/v1/features/historical", json=body, headers={**H, "Accept": "text/csv"}
    )
    assert resp.status == 200 and resp.content_type == "text/csv"
    return list(csv.DictReader(io.StringIO(await resp.text())))


async def _arrow(client: TestClient[Any, Any], body: dict[str, Any] | bytes) -> pa.Table:
    headers = {**H, "Accept": ARROW}
    if isinstance(body, bytes):
        resp = await client.post(
            "/v1/features/historical", data=body, headers={**headers, "Content-Type": ARROW}
        )
    else:
        resp = await client.post("/v1/features/historical", json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == ARROW
    return pa.ipc.open_stream(await resp.read()).read_all()


def _arrow_body(rows: list[tuple[str, datetime]], options: dict[str, Any]) -> bytes:
    table = pa.table(
        {
            "user_id": pa.array([u for u, _ in rows]),
            "as_of": pa.array([t for _, t in rows], type=pa.timestamp("ns", tz="Europe/Berlin")),
        }
    ).replace_schema_metadata({b"hearth": json.dumps(options).encode()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _rows(rows: list[tuple[str, datetime]]) -> list[dict[str, str]]:
    return [{"user_id": u, "as_of": t.isoformat()} for u, t in rows]


# --- snapshot mode ----------------------------------------------------------------------------


async def test_snapshot_mode_is_never_later_than_t_nor_older_than_max_age(
    client: TestClient[Any, Any],
) -> None:
    rng = random.Random(15)
    snaps = [T0 + timedelta(hours=h) for h in SNAP_HOURS]
    rows = []
    for _ in range(300):
        t = T0 + timedelta(seconds=rng.randrange(-3600, 420 * 3600))
        rows.append(("rt-snap", t))
    # Exact hits, one microsecond before and after a snapshot, and several max_age values.
    rows += [("rt-snap", s + d) for s in snaps for d in (timedelta(0), timedelta(microseconds=-1),
             timedelta(microseconds=1))]  # fmt: skip
    for max_age_s in (1, 3600, 86_400, 30 * 86_400):
        lines = await _ndjson(
            client, {"rows": _rows(rows), "mode": "snapshot", "max_age_s": max_age_s}
        )
        assert len(lines) == len(rows)
        for line, (_, t) in zip(lines, rows, strict=True):
            eligible = [s for s in snaps if t - timedelta(seconds=max_age_s) <= s <= t]
            if not eligible:
                assert line["reason"] == "no_snapshot" and line["features"] is None, (t, line)
                continue
            served = datetime.fromisoformat(line["snapshot_as_of"])
            assert served == max(eligible), (t, max_age_s)
            assert served <= t and served >= t - timedelta(seconds=max_age_s)
            assert line["source"] == "snapshot" and datetime.fromisoformat(line["as_of"]) == t
            assert line["features"][F_A]["value"] == (served - T0) / timedelta(hours=1)


async def test_exact_mode_serves_only_a_snapshot_of_exactly_t(
    client: TestClient[Any, Any],
) -> None:
    t = T0 + timedelta(hours=30)
    rows = [("rt-snap", t), ("rt-snap", t + timedelta(minutes=1))]
    lines = await _ndjson(client, {"rows": _rows(rows)})  # exact is the default
    assert lines[0]["source"] == "snapshot" and lines[0]["features"][F_A]["value"] == 30.0
    # One minute later there is no snapshot of exactly t: computed from the rollups instead.
    assert lines[1]["source"] == "computed" and lines[1]["snapshot_as_of"] is None


# --- one set of values in every format ----------------------------------------------------------


async def test_ndjson_csv_and_arrow_carry_identical_values(client: TestClient[Any, Any]) -> None:
    rows = [("rt-snap", T0 + timedelta(hours=h, minutes=17)) for h in (0, 31, 90, 500)]
    rows += [("rt-nobody", T0), ("rt-wd", T_W), ("rt-wd", T_W + timedelta(hours=1))]
    body = {"rows": _rows(rows), "mode": "snapshot", "max_age_s": 3 * 86_400}
    lines = await _ndjson(client, body)
    records = await _csv(client, body)
    table = await _arrow(client, body)
    from_arrow = await _arrow(client, _arrow_body(rows, {k: v for k, v in body.items()
                                                         if k != "rows"}))  # fmt: skip
    assert table.equals(from_arrow)  # an Arrow request gives the same answer as JSON
    assert len(lines) == len(records) == table.num_rows == len(rows)
    assert table.schema.metadata[b"feature_set_version"].decode() == lines[0]["feature_set_version"]
    arrow = table.to_pylist()
    for line, record, row in zip(lines, records, arrow, strict=True):
        assert row["row"] == line["row"] == int(record["row"])
        assert row["user_id"] == line["user_id"] == record["user_id"]
        assert row["reason"] == line["reason"] == (record["reason"] or None)
        assert row["source"] == line["source"] == (record["source"] or None)
        assert (
            row["as_of"]
            == datetime.fromisoformat(line["as_of"])
            == datetime.fromisoformat(record["as_of"])
        )
        for name in NAMES:
            cell = (line["features"] or {}).get(name)
            value = None if cell is None else cell["value"]
            coverage = None if cell is None else cell["coverage"]
            assert row[name] == value == (float(record[name]) if record[name] else None), name
            csv_cov = record[f"{name}__coverage"]
            assert row[f"{name}__coverage"] == coverage == (float(csv_cov) if csv_cov else None)
    assert [r["source"] for r in arrow] == ["snapshot"] * 3 + [None, None] + ["snapshot"] * 2


async def test_withdrawn_category_is_null_in_every_mode_and_format(
    client: TestClient[Any, Any],
) -> None:
    rows = [("rt-wd", T_W), ("rt-wd", T_W + timedelta(hours=2)), ("rt-wd", NOW)]
    for mode in ("exact", "snapshot"):
        body = {"rows": _rows(rows), "mode": mode, "max_age_s": 86_400}
        lines = await _ndjson(client, body)
        records = await _csv(client, body)
        table = (await _arrow(client, body)).to_pylist()
        served = [i for i, line in enumerate(lines) if line["features"] is not None]
        assert served, mode
        assert lines[0]["source"] == "snapshot"  # the snapshot the purge rewrote
        for i in served:
            for name in DEVICE_HEALTH:
                cell = lines[i]["features"][name]
                assert cell["value"] is None and cell["coverage"] == 0.0, (mode, i, name)
                assert cell["reason"] in ("consent_withdrawn", "not_consented")
                assert records[i][name] == "" and table[i][name] is None
            # Other categories still carry values.
            assert any(lines[i]["features"][n]["value"] is not None for n in NAMES
                       if n not in DEVICE_HEALTH)  # fmt: skip
    online = await client.post(
        "/v1/features/online", json={"user_ids": ["rt-wd"], "as_of": T_W.isoformat()}, headers=H
    )
    cells = (await online.json())["vectors"][0]["features"]
    assert all(cells[n]["value"] is None for n in DEVICE_HEALTH)


# --- feature selection ---------------------------------------------------------------------------


async def test_features_select_and_order_columns(client: TestClient[Any, Any]) -> None:
    rows = [("rt-snap", T0 + timedelta(hours=5))]
    picked = [F_B, F_A]
    lines = await _ndjson(client, {"rows": _rows(rows), "features": picked})
    assert list(lines[0]["features"]) == picked
    records = await _csv(client, {"rows": _rows(rows), "features": picked,
                                  "include_coverage": False})  # fmt: skip
    assert list(records[0])[-2:] == picked
    table = await _arrow(client, {"rows": _rows(rows), "features": picked})
    assert table.column_names[-4:] == [F_B, f"{F_B}__coverage", F_A, f"{F_A}__coverage"]
    online = await client.post(
        "/v1/features/online",
        json={"user_ids": ["rt-snap"], "as_of": (T0 + timedelta(hours=5)).isoformat(),
              "features": [F_A]},
        headers=H,
    )  # fmt: skip
    assert (await online.json())["vectors"][0]["features"] == {F_A: {"value": 5.0, "coverage": 1.0}}
    bad = await client.post(
        "/v1/features/historical",
        json={"rows": _rows(rows), "features": [F_A, "no_such_feature"]},
        headers=H,
    )
    assert bad.status == 400
    assert (await bad.json())["error"]["details"] == [
        {"field": "features.1", "reason": "unknown feature"}
    ]


# --- Arrow requests -----------------------------------------------------------------------------


async def test_arrow_requests_are_validated(client: TestClient[Any, Any]) -> None:
    async def post(body: bytes) -> dict[str, Any]:
        resp = await client.post(
            "/v1/features/historical", data=body, headers={**H, "Content-Type": ARROW}
        )
        assert resp.status == 400, await resp.text()
        return dict((await resp.json())["error"])

    assert (await post(b"not arrow"))["details"][0]["field"] == "body"
    bad_id = await post(_arrow_body([("ok", T0), ("not ok!", T0)], {}))
    assert bad_id["details"][0]["field"] == "rows.1.user_id"
    future = await post(_arrow_body([("ok", NOW + timedelta(days=30))], {}))
    assert future["details"][0]["field"] == "rows.0.as_of"
    options = await post(_arrow_body([("ok", T0)], {"mode": "sometimes"}))
    assert options["details"][0]["field"] == "mode"
    naive = pa.table({"user_id": ["ok"], "as_of": pa.array([T0.replace(tzinfo=None)])})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, naive.schema) as writer:
        writer.write_table(naive)
    assert (await post(sink.getvalue().to_pybytes()))["details"][0]["field"] == "as_of"
