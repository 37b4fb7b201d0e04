"""Issue 11 §5: the feature service bounds the work a request can cause, and issue 12 §5's
API consistency points. In process (aiohttp test server) or in a thread, against the session's
real database (test_service_connections.py has the tests that need a real socket)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import psycopg
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel, model_validator

from features.client import HearthError, parse_historical_line
from features.service.app import create_app
from features.service.errors import INLINE_PARSE_BYTES, read_model
from features.service.resolve import engine_gateway
from features.service.resolve.bulk import BulkResolver, ResolvedRows
from features.service.state import STATE
from hearth.settings import Settings, load_settings
from tests.support.service import full_vector, seed_snapshot, seed_user

READ = "bounds-read-token-0123456789"
ADMIN = "bounds-admin-token-0123456789"
H_READ = {"Authorization": f"Bearer {READ}"}
H_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
TOKENS = json.dumps({READ: ["features:read"], ADMIN: ["admin"]})
T0 = datetime(2025, 1, 1, tzinfo=UTC)
AS_OF = datetime(2026, 1, 1, tzinfo=UTC)
V = {"active_day_ratio_30d": {"value": 1.0, "coverage": 1.0}}

Client = TestClient[Any, Any]
pytestmark = pytest.mark.asyncio(loop_scope="module")


def _settings(database_url: str, **overrides: Any) -> Settings:
    return load_settings(database_url=database_url, api_tokens=TOKENS, **overrides)


@pytest.fixture(scope="module")
def seeded(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        seed_user(conn, "bd-u1", consent_from=T0)
        seed_snapshot(conn, "bd-u1", AS_OF, engine_gateway.feature_set_version(), V)
    return database_url


@contextlib.asynccontextmanager
async def _client(settings: Settings) -> AsyncIterator[Client]:
    async with TestClient(TestServer(create_app(settings))) as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(seeded: str) -> AsyncIterator[Client]:
    """Small limits, to test them without megabyte bodies, and a short statement timeout."""
    settings = _settings(
        seeded, online_max_users=3, historical_max_rows=4, service_statement_timeout_ms=300
    )
    async with _client(settings) as c:
        yield c


async def _error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body: dict[str, Any] = (await resp.json())["error"]
    assert body["code"] == code, body
    return body


# --- row limits (413) -------------------------------------------------------------------------


async def test_configured_row_limits_answer_413(client: Client) -> None:
    ok = await client.post(
        "/v1/features/online", json={"user_ids": ["a", "b", "c"]}, headers=H_READ
    )
    assert ok.status == 200
    resp = await client.post(
        "/v1/features/online", json={"user_ids": ["a", "b", "c", "d"]}, headers=H_READ
    )
    err = await _error(resp, 413, "too_many_rows")
    assert "at most 3" in err["message"]

    row = {"user_id": "nobody", "as_of": "2026-01-01T00:00:00Z"}
    ok = await client.post("/v1/features/historical", json={"rows": [row] * 4}, headers=H_READ)
    assert ok.status == 200 and len((await ok.text()).splitlines()) == 4
    resp = await client.post("/v1/features/historical", json={"rows": [row] * 5}, headers=H_READ)
    err = await _error(resp, 413, "too_many_rows")
    assert "HEARTH_HISTORICAL_MAX_ROWS" in err["message"]


# --- as_of bounds (400) -----------------------------------------------------------------------


def _future(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


REFUSED_AS_OF = ["9999-12-31T00:00:00Z", "1999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"]


@pytest.mark.parametrize("as_of", [*REFUSED_AS_OF, "future"])
async def test_as_of_out_of_range_is_400_everywhere(client: Client, as_of: str) -> None:
    if as_of == "future":
        as_of = _future(3600)  # beyond the default 600 s of HEARTH_MAX_CLOCK_SKEW_S
    resp = await client.get("/v1/users/bd-u1/features", params={"as_of": as_of}, headers=H_READ)
    err = await _error(resp, 400, "invalid_request")
    assert err["details"][0]["field"] == "as_of"
    assert "future" in err["details"][0]["reason"] or "2000-01-01" in err["details"][0]["reason"]
    body = {"user_ids": ["bd-u1"], "as_of": as_of}
    resp = await client.post("/v1/features/online", json=body, headers=H_READ)
    err = await _error(resp, 400, "invalid_request")
    assert err["details"][0]["field"] == "as_of"
    rows = {"rows": [{"user_id": "bd-u1", "as_of": "2026-01-01T00:00:00Z"}] * 2}
    rows["rows"][1] = {"user_id": "bd-u1", "as_of": as_of}
    resp = await client.post("/v1/features/historical", json=rows, headers=H_READ)
    err = await _error(resp, 400, "invalid_request")
    assert err["details"][0]["field"] == "rows.1.as_of"


async def test_as_of_within_the_skew_allowance_is_accepted(client: Client) -> None:
    resp = await client.get(
        "/v1/users/bd-u1/features", params={"as_of": _future(60)}, headers=H_READ
    )
    assert resp.status in (200, 404), await resp.text()  # a vector or a reason, not a 400
    if resp.status == 404:
        assert (await resp.json())["error"]["code"] != "invalid_request"


async def test_as_of_error_states_the_offset_rule(client: Client) -> None:
    """Issue 12 §5: the message says what is required (an offset), not pydantic's words."""
    for query in ("2026-01-01T00:00:00", "yesterday"):
        resp = await client.get("/v1/users/bd-u1/features", params={"as_of": query}, headers=H_READ)
        err = await _error(resp, 400, "invalid_request")
        assert "UTC offset" in err["details"][0]["reason"], err
    body = {"user_ids": ["bd-u1"], "as_of": "2026-01-01T00:00:00"}
    err = await _error(
        await client.post("/v1/features/online", json=body, headers=H_READ), 400, "invalid_request"
    )
    assert "UTC offset" in err["details"][0]["reason"]


async def test_a_future_snapshot_is_never_served_as_the_latest(client: Client, seeded: str) -> None:
    """Issue 12 §3: a snapshot "as of" the future (materialise used to accept one) is not the
    latest vector; the one before it is."""
    version = engine_gateway.feature_set_version()
    with psycopg.connect(seeded, autocommit=True) as conn:
        seed_user(conn, "bd-future", consent_from=T0)
        seed_snapshot(conn, "bd-future", AS_OF, version, V)
        future = datetime.now(UTC) + timedelta(days=30)
        seed_snapshot(
            conn,
            "bd-future",
            future,
            version,
            {"active_day_ratio_30d": {"value": 9.0, "coverage": 1.0}},
        )
    resp = await client.get("/v1/users/bd-future/features", headers=H_READ)
    body = await resp.json()
    assert resp.status == 200 and datetime.fromisoformat(body["as_of"]) == AS_OF
    assert body["features"] == full_vector(V)


# --- statement timeout --------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(database_url: str, table: str) -> Iterator[None]:
    """Hold an exclusive lock on ``table`` (every read of it waits) until the block ends."""
    with psycopg.connect(database_url) as conn:
        conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


async def test_statement_timeout_bounds_each_request(client: Client, seeded: str) -> None:
    with _locked(seeded, "feature_snapshots"):
        started = time.monotonic()
        resp = await client.get("/v1/users/bd-u1/features", headers=H_READ)
        err = await _error(resp, 503, "statement_timeout")
        assert "HEARTH_SERVICE_STATEMENT_TIMEOUT_MS" in err["message"]
        resp = await client.post(
            "/v1/features/online", json={"user_ids": ["bd-u1"]}, headers=H_READ
        )
        await _error(resp, 503, "statement_timeout")
        assert time.monotonic() - started < 10  # 300 ms each, not until the lock is released
    resp = await client.get("/v1/users/bd-u1/features", headers=H_READ)
    assert resp.status == 200  # the pool's connections are fine afterwards


# --- body parsed off the event loop ---------------------------------------------------------


class _Recorded(BaseModel):
    items: list[int]

    @model_validator(mode="after")
    def _record(self) -> _Recorded:
        _PARSED_ON.append(threading.get_ident())
        return self


_PARSED_ON: list[int] = []


async def test_large_bodies_are_parsed_off_the_event_loop() -> None:
    async def handler(request: web.Request) -> web.Response:
        body = await read_model(request, _Recorded, 16 * 1024 * 1024)
        return web.json_response({"n": len(body.items)})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/", handler)
    async with TestClient(TestServer(app)) as c:
        loop_thread = threading.get_ident()
        _PARSED_ON.clear()
        small = {"items": [1, 2, 3]}
        assert (await (await c.post("/", json=small)).json()) == {"n": 3}
        big = {"items": list(range(INLINE_PARSE_BYTES // 4))}
        assert len(json.dumps(big)) > INLINE_PARSE_BYTES
        assert (await (await c.post("/", json=big)).json()) == {"n": len(big["items"])}
    assert _PARSED_ON[0] == loop_thread  # small: inline, no thread hop
    assert _PARSED_ON[1] != loop_thread  # large: in a worker thread


# --- an error after the stream started --------------------------------------------------------


class _FailingResolver(BulkResolver):
    """The real historical resolver, failing on its ``fail_on``-th chunk (fault injection)."""

    def __init__(self, inner: BulkResolver, fail_on: int, error: Exception) -> None:
        self.__dict__.update(inner.__dict__)
        self.calls = 0
        self.fail_on = fail_on
        self.error = error

    async def resolve(self, *args: Any, **kwargs: Any) -> ResolvedRows:
        self.calls += 1
        if self.calls == self.fail_on:
            raise self.error
        return await super().resolve(*args, **kwargs)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RuntimeError("boom"), "internal_error"),
        (psycopg.errors.QueryCanceled("canceling statement"), "statement_timeout"),
    ],
)
@pytest.mark.parametrize("accept", ["application/x-ndjson", "text/csv"])
async def test_error_mid_stream_ends_it_with_one_error_record(
    seeded: str, error: Exception, code: str, accept: str
) -> None:
    rows = [{"user_id": f"nobody-{i}", "as_of": "2026-01-01T00:00:00Z"} for i in range(6_000)]
    async with _client(_settings(seeded)) as c:
        state = c.server.app[STATE]  # type: ignore[union-attr]
        state.bulk = _FailingResolver(state.bulk, fail_on=2, error=error)
        resp = await c.post(
            "/v1/features/historical", json={"rows": rows}, headers={**H_READ, "Accept": accept}
        )
        assert resp.status == 200  # the status line went out with the first chunk
        lines = (await resp.text()).splitlines()
        # The same connection still serves: no second response was written into the stream.
        assert (await c.get("/healthz")).status == 200
    if accept == "text/csv":
        header, *records, last = lines
        assert header.startswith("row,user_id,as_of")
        assert len(records) == 5_000  # the first chunk, complete
        assert last.split(",")[:2] == ["#error", code]
        return
    *records, last = lines
    assert [json.loads(line)["row"] for line in records] == list(range(5_000))
    final = json.loads(last)
    assert set(final) == {"error"} and final["error"]["code"] == code and final["error"]["message"]
    with pytest.raises(HearthError) as raised:  # the Python client refuses the short result
        parse_historical_line(last)
    assert raised.value.code == code


async def test_error_mid_arrow_stream_cuts_it_short(seeded: str) -> None:
    """No error record fits an Arrow stream: it is cut off before its end marker, and a reader
    (the client) refuses it."""
    rows = [{"user_id": f"nobody-{i}", "as_of": "2026-01-01T00:00:00Z"} for i in range(6_000)]
    async with _client(_settings(seeded)) as c:
        state = c.server.app[STATE]  # type: ignore[union-attr]
        state.bulk = _FailingResolver(state.bulk, fail_on=2, error=RuntimeError("boom"))
        resp = await c.post(
            "/v1/features/historical",
            json={"rows": rows},
            headers={**H_READ, "Accept": "application/vnd.apache.arrow.stream"},
        )
        assert resp.status == 200  # the status line went out with the first chunk
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        assert (await c.get("/healthz")).status == 200  # a new connection serves


# --- one code for an unknown user --------------------------------------------------------------


async def test_unknown_user_has_one_code_everywhere(client: Client) -> None:
    """Issue 12 §5: every endpoint names an unknown user ``unknown_user``."""
    ghost = "bd-ghost"
    await _error(
        await client.get(f"/v1/users/{ghost}/features", headers=H_READ), 404, "unknown_user"
    )
    online = await (
        await client.post("/v1/features/online", json={"user_ids": [ghost]}, headers=H_READ)
    ).json()
    assert online["missing"] == [{"user_id": ghost, "reason": "unknown_user"}]
    row = {"user_id": ghost, "as_of": "2026-01-01T00:00:00Z"}
    hist = await client.post("/v1/features/historical", json={"rows": [row]}, headers=H_READ)
    assert json.loads(await hist.text())["reason"] == "unknown_user"
    admin_calls: list[tuple[str, str, object]] = [
        ("GET", f"/v1/admin/users/{ghost}/consent", None),
        ("GET", f"/v1/admin/users/{ghost}/export", None),
        ("DELETE", f"/v1/admin/users/{ghost}", None),
        ("POST", "/v1/admin/consent/grant", {"user_id": ghost, "category": "energy"}),
        ("POST", "/v1/admin/consent/withdraw", {"user_id": ghost, "category": "energy"}),
        (
            "POST",
            "/v1/admin/devices",
            {"user_id": ghost, "kind": "plug", "format": "hearth", "external_id": "bd-g-1"},
        ),
    ]
    for method, path, body in admin_calls:
        resp = await client.request(method, path, json=body, headers=H_ADMIN)
        await _error(resp, 404, "unknown_user")


async def test_repeating_create_user_is_200_not_201(client: Client) -> None:
    body = {"user_id": "bd-created", "tz": "Europe/Berlin"}
    first = await client.post("/v1/admin/users", json=body, headers=H_ADMIN)
    again = await client.post("/v1/admin/users", json=body, headers=H_ADMIN)
    assert (first.status, again.status) == (201, 200)
    assert await again.json() == body
    other_zone = await client.post("/v1/admin/users", json=body | {"tz": "UTC"}, headers=H_ADMIN)
    await _error(other_zone, 409, "conflict")
