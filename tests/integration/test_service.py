"""Contract tests of the feature service: every endpoint and every error status, in process
(aiohttp test server) against the session's real database. Snapshots are seeded by SQL with
chosen values, so the tests check what the service does with them, not the engine."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from features.service.app import create_app
from features.service.resolve import engine_gateway
from hearth.db import Conn
from hearth.settings import load_settings
from tests.support.service import full_vector, seed_snapshot, seed_user

READ = "read-token-0123456789"
ADMIN = "admin-token-0123456789"
BOTH = "both-token-0123456789"
TOKENS = {READ: ["features:read"], ADMIN: ["admin"], BOTH: ["features:read", "admin"]}
H_READ = {"Authorization": f"Bearer {READ}"}
H_ADMIN = {"Authorization": f"Bearer {ADMIN}"}

T0 = datetime(2025, 1, 1, tzinfo=UTC)
AS_OF_1 = datetime(2026, 1, 1, tzinfo=UTC)
AS_OF_2 = datetime(2026, 1, 2, tzinfo=UTC)
F_A, F_B = "active_day_ratio_30d", "longest_gap_days_30d"  # two features of the real set
V1 = {F_A: {"value": 1.5, "coverage": 0.5}, F_B: {"value": None, "coverage": 0.0}}
V2 = {F_A: {"value": 2.5, "coverage": 0.75}, F_B: {"value": 3.0, "coverage": 1.0}}
FULL_1, FULL_2 = full_vector(V1), full_vector(V2)  # what is served: every feature

# One app (and pool) for the whole module: the tests only read, except the admin lifecycle,
# which uses its own user.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def version() -> str:
    return engine_gateway.feature_set_version()


@pytest.fixture(scope="module")
def seeded(database_url: str, version: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        seed_user(conn, "svc-u1", consent_from=T0)
        seed_snapshot(conn, "svc-u1", AS_OF_1, version, V1)
        seed_snapshot(conn, "svc-u1", AS_OF_2, version, V2)
        seed_user(conn, "svc-none", consent_from=None)
        seed_user(conn, "svc-gone", consent_from=T0)
        conn.execute(
            "INSERT INTO consent_events (user_id, category, notice_version, action, at) "
            "SELECT user_id, category, notice_version, 'withdraw', %s FROM consent_events "
            "WHERE user_id = 'svc-gone'",
            (T0 + timedelta(days=1),),
        )
        seed_user(conn, "svc-recent", consent_from=T0)
        seed_snapshot(conn, "svc-recent", datetime.now(UTC) - timedelta(hours=1), version, V1)
    return database_url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(seeded: str) -> AsyncIterator[TestClient[object, object]]:
    settings = load_settings(database_url=seeded, api_tokens=json.dumps(TOKENS))
    async with TestClient(TestServer(create_app(settings))) as c:
        yield c


async def _error(resp: object, status: int, code: str | None = None) -> dict[str, object]:
    assert resp.status == status, await resp.text()  # type: ignore[attr-defined]
    assert resp.content_type == "application/json"  # type: ignore[attr-defined]
    body = await resp.json()  # type: ignore[attr-defined]
    assert set(body["error"]) == {"code", "message", "details"}
    if code is not None:
        assert body["error"]["code"] == code
    return body  # type: ignore[no-any-return]


# --- single user ----------------------------------------------------------------------------


async def test_latest_snapshot(client: TestClient[object, object], version: str) -> None:
    resp = await client.get("/v1/users/svc-u1/features", headers=H_READ)
    assert resp.status == 200
    body = await resp.json()
    assert body["user_id"] == "svc-u1"
    assert datetime.fromisoformat(body["as_of"]) == AS_OF_2
    assert body["feature_set_version"] == version
    assert body["source"] == "snapshot"
    assert body["stale"] is True  # as_of is months old
    assert body["features"] == FULL_2
    assert datetime.fromisoformat(body["computed_at"]).tzinfo is not None


async def test_recent_snapshot_is_not_stale(client: TestClient[object, object]) -> None:
    body = await (await client.get("/v1/users/svc-recent/features", headers=H_READ)).json()
    assert body["stale"] is False


async def test_exact_as_of_serves_that_snapshot(client: TestClient[object, object]) -> None:
    resp = await client.get(
        "/v1/users/svc-u1/features", params={"as_of": "2026-01-01T00:00:00Z"}, headers=H_READ
    )
    body = await resp.json()
    assert resp.status == 200
    assert body["features"] == FULL_1 and body["stale"] is False
    # An unencoded '+' arrives as a space; the service still understands the offset.
    resp = await client.get(
        "/v1/users/svc-u1/features?as_of=2026-01-01T01:00:00+01:00", headers=H_READ
    )
    assert (await resp.json())["features"] == FULL_1


async def test_user_errors(client: TestClient[object, object]) -> None:
    await _error(await client.get("/v1/users/nobody/features", headers=H_READ), 404, "unknown_user")
    await _error(
        await client.get("/v1/users/svc-gone/features", headers=H_READ), 404, "no_active_consent"
    )
    await _error(
        await client.get("/v1/users/svc-none/features", headers=H_READ), 404, "no_active_consent"
    )
    resp = await client.get(
        "/v1/users/svc-u1/features", params={"as_of": "2024-06-01T00:00:00Z"}, headers=H_READ
    )
    await _error(resp, 404, "no_consent_at_as_of")
    body = await _error(
        await client.get("/v1/users/svc-u1/features?as_of=yesterday", headers=H_READ), 400
    )
    assert body["error"]["details"][0]["field"] == "as_of"  # type: ignore[index]
    resp = await client.get(
        "/v1/users/svc-u1/features", params={"as_of": "2026-01-01T00:00:00"}, headers=H_READ
    )
    await _error(resp, 400, "invalid_request")  # no offset
    body = await _error(await client.get("/v1/users/bad%20id/features", headers=H_READ), 400)
    assert body["error"]["details"][0]["field"] == "user_id"  # type: ignore[index]


# --- security -------------------------------------------------------------------------------

ADMIN_CALLS = [
    ("POST", "/v1/admin/users", {"user_id": "x", "tz": "UTC"}),
    ("POST", "/v1/admin/devices", {}),
    ("DELETE", "/v1/admin/devices/d1", None),
    ("POST", "/v1/admin/consent/grant", {}),
    ("POST", "/v1/admin/consent/withdraw", {}),
    ("GET", "/v1/admin/users/svc-u1/consent", None),
    ("GET", "/v1/admin/users/svc-u1/export", None),
    ("DELETE", "/v1/admin/users/svc-u1", None),
]
READ_CALLS = [
    ("GET", "/v1/users/svc-u1/features", None),
    ("POST", "/v1/features/online", {"user_ids": ["svc-u1"]}),
    ("POST", "/v1/features/historical", {"rows": []}),
    ("GET", "/v1/feature-definitions", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS + READ_CALLS)
async def test_401_without_or_with_bad_token(
    client: TestClient[object, object], method: str, path: str, body: object
) -> None:
    resp = await client.request(method, path, json=body)
    await _error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    for header in ("Bearer wrong-token-0123456789", f"Basic {READ}", f"Bearer {READ}x"):
        resp = await client.request(method, path, json=body, headers={"Authorization": header})
        await _error(resp, 401, "unauthorized")


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
async def test_403_read_token_on_admin(
    client: TestClient[object, object], method: str, path: str, body: object
) -> None:
    resp = await client.request(method, path, json=body, headers=H_READ)
    await _error(resp, 403, "forbidden")
    assert "insufficient_scope" in resp.headers["WWW-Authenticate"]


@pytest.mark.parametrize(("method", "path", "body"), READ_CALLS)
async def test_403_admin_token_on_features(
    client: TestClient[object, object], method: str, path: str, body: object
) -> None:
    await _error(await client.request(method, path, json=body, headers=H_ADMIN), 403, "forbidden")


async def test_unknown_path_and_method_are_json(client: TestClient[object, object]) -> None:
    await _error(await client.get("/v1/nothing", headers=H_READ), 404, "not_found")
    resp = await client.put("/v1/features/online", headers=H_READ)
    await _error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]


async def test_body_too_large(client: TestClient[object, object]) -> None:
    big = {"user_ids": ["u" * 60] * 5000}  # > 256 KiB for an online request
    await _error(await client.post("/v1/features/online", json=big, headers=H_READ), 413)
    huge = b'{"rows": [' + b" " * (17 * 1024 * 1024) + b"]}"  # past client_max_size
    resp = await client.post(
        "/v1/features/historical",
        data=huge,
        headers={**H_READ, "Content-Type": "application/json"},
    )
    await _error(resp, 413)


# --- online ---------------------------------------------------------------------------------


async def test_online_vectors_and_reasons(client: TestClient[object, object], version: str) -> None:
    users = ["svc-u1", "nobody", "svc-gone", "svc-u1"]
    resp = await client.post("/v1/features/online", json={"user_ids": users}, headers=H_READ)
    assert resp.status == 200
    body = await resp.json()
    assert body["feature_set_version"] == version
    assert [v["user_id"] for v in body["vectors"]] == ["svc-u1"]  # duplicates served once
    assert body["vectors"][0]["features"] == FULL_2
    assert body["missing"] == [
        {"user_id": "nobody", "reason": "unknown_user"},
        {"user_id": "svc-gone", "reason": "no_active_consent"},
    ]
    resp = await client.post(
        "/v1/features/online",
        json={"user_ids": ["svc-u1"], "as_of": "2026-01-01T00:00:00+00:00"},
        headers=H_READ,
    )
    assert (await resp.json())["vectors"][0]["features"] == FULL_1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_ids": []}, "user_ids"),
        ({"user_ids": ["ok", "not ok"]}, "user_ids.1"),
        ({"user_ids": ["ok"], "as_of": "2026-01-01"}, "as_of"),
        ({"user_ids": ["ok"], "extra": 1}, "extra"),
        ({"user_ids": "ok"}, "user_ids"),
    ],
)
async def test_online_invalid(client: TestClient[object, object], body: object, field: str) -> None:
    resp = await client.post("/v1/features/online", json=body, headers=H_READ)
    err = await _error(resp, 400, "invalid_request")
    assert field in [d["field"] for d in err["error"]["details"]]  # type: ignore[index]


async def test_online_not_json(client: TestClient[object, object]) -> None:
    resp = await client.post("/v1/features/online", data=b"{nope", headers=H_READ)
    await _error(resp, 400, "invalid_request")


# --- historical -----------------------------------------------------------------------------

HIST_ROWS = [
    {"user_id": "svc-u1", "as_of": "2026-01-02T00:00:00Z"},
    {"user_id": "nobody", "as_of": "2026-01-02T00:00:00Z"},
    {"user_id": "svc-u1", "as_of": "2026-01-01T00:00:00Z"},
    {"user_id": "svc-gone", "as_of": "2025-01-01T12:00:00Z"},
    {"user_id": "svc-u1", "as_of": "2024-06-01T00:00:00Z"},
    {"user_id": "svc-u1", "as_of": "2026-01-02T00:00:00Z"},
]


async def test_historical_ndjson_one_row_per_row(client: TestClient[object, object]) -> None:
    resp = await client.post("/v1/features/historical", json={"rows": HIST_ROWS}, headers=H_READ)
    assert resp.status == 200
    assert resp.content_type == "application/x-ndjson"
    lines = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert [r["row"] for r in lines] == list(range(len(HIST_ROWS)))
    assert [r["user_id"] for r in lines] == [r["user_id"] for r in HIST_ROWS]
    assert [r["reason"] for r in lines] == [
        None,
        "unknown_user",
        None,
        "no_active_consent",
        "no_consent_at_as_of",
        None,
    ]
    assert lines[0]["features"] == FULL_2 and lines[2]["features"] == FULL_1
    assert lines[5] == lines[0] | {"row": 5}
    assert lines[1]["features"] is None


async def test_historical_csv(client: TestClient[object, object]) -> None:
    resp = await client.post(
        "/v1/features/historical",
        json={"rows": HIST_ROWS[:3]},
        headers={**H_READ, "Accept": "text/csv"},
    )
    assert resp.status == 200 and resp.content_type == "text/csv"
    lines = (await resp.text()).splitlines()
    header = lines[0].split(",")
    assert header[:5] == ["row", "user_id", "as_of", "feature_set_version", "reason"]
    assert len(lines) == 4
    first = dict(zip(header, lines[1].split(","), strict=True))
    assert float(first[F_A]) == 2.5 and float(first[f"{F_B}__coverage"]) == 1.0
    assert dict(zip(header, lines[2].split(","), strict=True))["reason"] == "unknown_user"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rows": []}, "rows"),
        ({"rows": [{"user_id": "svc-u1"}]}, "rows.0.as_of"),
        ({"rows": [{"user_id": "svc-u1", "as_of": "2026-01-01T00:00:00"}]}, "rows.0.as_of"),
        ({"rows": [{"user_id": "a b", "as_of": "2026-01-01T00:00:00Z"}]}, "rows.0.user_id"),
        ({"row": []}, "rows"),
    ],
)
async def test_historical_invalid(
    client: TestClient[object, object], body: object, field: str
) -> None:
    resp = await client.post("/v1/features/historical", json=body, headers=H_READ)
    err = await _error(resp, 400, "invalid_request")
    assert field in [d["field"] for d in err["error"]["details"]]  # type: ignore[index]


async def test_row_limits_are_413(client: TestClient[object, object]) -> None:
    """Issue 11 §5: more than 1,000 online users or 100,000 historical rows is 413."""
    users = {"user_ids": [f"u{i}" for i in range(1001)]}
    resp = await client.post("/v1/features/online", json=users, headers=H_READ)
    err = await _error(resp, 413, "too_many_rows")
    assert "HEARTH_ONLINE_MAX_USERS" in err["error"]["message"]  # type: ignore[index]
    rows = [{"user_id": "u", "as_of": "2026-01-01T00:00:00Z"}] * 100_001
    resp = await client.post("/v1/features/historical", json={"rows": rows}, headers=H_READ)
    err = await _error(resp, 413, "too_many_rows")
    assert "HEARTH_HISTORICAL_MAX_ROWS" in err["error"]["message"]  # type: ignore[index]


# --- definitions and operations -------------------------------------------------------------


async def test_definitions(client: TestClient[object, object], version: str) -> None:
    resp = await client.get("/v1/feature-definitions", headers=H_READ)
    body = await resp.json()
    assert resp.status == 200 and body["feature_set_version"] == version
    assert body["definitions"] and all("name" in d for d in body["definitions"])


async def test_health_ready_metrics(client: TestClient[object, object]) -> None:
    assert (await (await client.get("/healthz")).json()) == {"status": "ok"}
    resp = await client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["database"] is True
    await client.get("/v1/users/svc-u1/features", headers=H_READ)
    text = await (await client.get("/metrics")).text()
    assert 'hearth_http_requests_total{method="GET",route="/v1/users/{user_id}/features"' in text
    assert "svc-u1" not in text  # route patterns, never user ids
    assert "hearth_feature_cache_lookups_total" in text


async def test_openapi_document_validates_and_lists_every_route(
    client: TestClient[object, object],
) -> None:
    import schemathesis

    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    schemathesis.openapi.from_dict(doc).validate()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {
        (r.method, r.resource.canonical)
        for r in client.app.router.routes()  # type: ignore[union-attr]
        if r.method != "HEAD" and r.resource is not None
    }
    assert documented == served


# --- admin ----------------------------------------------------------------------------------


async def _wait_status(
    client: TestClient[object, object], path: str, status: int, deadline_s: float = 5.0
) -> None:
    import asyncio
    import time

    end = time.monotonic() + deadline_s
    while True:
        resp = await client.get(path, headers=H_READ)
        if resp.status == status or time.monotonic() > end:
            assert resp.status == status, await resp.text()
            return
        await asyncio.sleep(0.05)


async def test_admin_lifecycle(client: TestClient[object, object], version: str, db: Conn) -> None:
    user = "svc-admin-1"
    resp = await client.post(
        "/v1/admin/users", json={"user_id": user, "tz": "Asia/Shanghai"}, headers=H_ADMIN
    )
    assert resp.status == 201 and (await resp.json())["tz"] == "Asia/Shanghai"
    resp = await client.post(  # the same again: 200, it exists (not a second 201)
        "/v1/admin/users", json={"user_id": user, "tz": "Asia/Shanghai"}, headers=H_ADMIN
    )
    assert resp.status == 200 and (await resp.json())["user_id"] == user
    resp = await client.post(
        "/v1/admin/users", json={"user_id": user, "tz": "UTC"}, headers=H_ADMIN
    )
    await _error(resp, 409, "conflict")
    resp = await client.post(
        "/v1/admin/users", json={"user_id": "svc-x", "tz": "Mars/Base"}, headers=H_ADMIN
    )
    await _error(resp, 400, "invalid_request")

    device = {"user_id": user, "kind": "plug", "format": "hearth", "external_id": "svc-plug-1"}
    resp = await client.post("/v1/admin/devices", json=device, headers=H_ADMIN)
    creds = await resp.json()
    assert resp.status == 201 and creds["device_id"] == "svc-plug-1" and creds["mqtt_password"]
    # The same device again rotates its password (issue 12 §4); another user's is a conflict.
    resp = await client.post("/v1/admin/devices", json=device, headers=H_ADMIN)
    again = await resp.json()
    assert resp.status == 200 and again["rotated"] and again["device_id"] == "svc-plug-1"
    assert again["mqtt_password"] != creds["mqtt_password"]
    resp = await client.post(
        "/v1/admin/users", json={"user_id": "svc-admin-2", "tz": "UTC"}, headers=H_ADMIN
    )
    assert resp.status == 201
    resp = await client.post(
        "/v1/admin/devices", json=device | {"user_id": "svc-admin-2"}, headers=H_ADMIN
    )
    await _error(resp, 409)
    resp = await client.post(
        "/v1/admin/devices", json=device | {"user_id": "svc-nobody"}, headers=H_ADMIN
    )
    await _error(resp, 404, "unknown_user")
    resp = await client.delete("/v1/admin/devices/svc-plug-1", headers=H_ADMIN)
    assert resp.status == 200 and (await resp.json())["retired_at"] is not None
    resp = await client.delete("/v1/admin/devices/svc-nope", headers=H_ADMIN)
    await _error(resp, 404, "unknown_device")

    resp = await client.post(
        "/v1/admin/consent/grant",
        json={"user_id": user, "category": "energy", "at": "2025-01-01T00:00:00Z"},
        headers=H_ADMIN,
    )
    assert resp.status == 201 and (await resp.json())["action"] == "grant"
    resp = await client.post(
        "/v1/admin/consent/grant", json={"user_id": user, "category": "dreams"}, headers=H_ADMIN
    )
    err = await _error(resp, 400)
    assert err["error"]["details"][0]["field"] == "category"  # type: ignore[index]
    seed_snapshot(db, user, AS_OF_1, version, V1)

    path = f"/v1/users/{user}/features"
    await _wait_status(client, path, 200)  # also warms the cache
    resp = await client.post(
        "/v1/admin/consent/withdraw", json={"user_id": user, "category": "energy"}, headers=H_ADMIN
    )
    assert resp.status == 200 and (await resp.json())["action"] == "purge_category"
    await _wait_status(client, path, 404)  # cache emptied by the consent NOTIFY

    resp = await client.get(f"/v1/admin/users/{user}/consent", headers=H_ADMIN)
    assert [e["action"] for e in (await resp.json())["events"]] == ["grant", "withdraw"]
    resp = await client.get(f"/v1/admin/users/{user}/export", headers=H_ADMIN)
    assert resp.status == 200 and (await resp.json())["user"]["user_id"] == user
    for nobody in ("/v1/admin/users/svc-nobody/consent", "/v1/admin/users/svc-nobody/export"):
        await _error(await client.get(nobody, headers=H_ADMIN), 404, "unknown_user")

    resp = await client.delete(f"/v1/admin/users/{user}", headers=H_ADMIN)
    assert resp.status == 200 and (await resp.json())["action"] == "erase_user"
    await _error(
        await client.delete(f"/v1/admin/users/{user}", headers=H_ADMIN), 404, "unknown_user"
    )
    await _wait_status(client, path, 404)
    resp = await client.get(path, headers=H_READ)
    await _error(resp, 404, "unknown_user")
