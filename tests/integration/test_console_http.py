"""The console's doors over plain HTTP (in process, the session's database): the login, what
happens without a cookie or a CSRF token, the typed confirmation, errors as pages, headers."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import pytest_asyncio
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from features.service.app import create_app
from features.service.console.app import ROUTES
from hearth import admin
from hearth.db import Conn
from hearth.settings import load_settings
from tests.support.builders import insert_numeric

ADMIN = "http-admin-" + secrets.token_hex(12)
READER = "http-reader-" + secrets.token_hex(12)

pytestmark = pytest.mark.asyncio(loop_scope="module")

Client = TestClient[object, object]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(database_url: str) -> AsyncIterator[Client]:
    settings = load_settings(
        database_url=database_url,
        api_tokens=json.dumps({ADMIN: ["admin"], READER: ["features:read"]}),
    )
    async with TestClient(TestServer(create_app(settings))) as c:
        yield c


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


async def _login(
    client: Client, token: str = ADMIN, next_path: str = "/console/fleet"
) -> ClientResponse:
    form = await client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', await form.text())
    assert csrf is not None
    return await client.post(
        "/console/login",
        data={"token": token, "csrf": csrf.group(1), "next": next_path},
        allow_redirects=False,
    )


async def _csrf(client: Client, path: str = "/console/fleet") -> str:
    page = await client.get(path)
    found = re.search(r'name="csrf" value="([^"]+)"', await page.text())
    assert found is not None
    return found.group(1)


async def test_without_the_cookie_every_page_sends_to_the_login(client: Client) -> None:
    client.session.cookie_jar.clear()
    for method, path, _, name in ROUTES:
        if name in ("login_form", "login"):
            continue
        resp = await client.request(method, path, allow_redirects=False)
        assert resp.status == 303, (method, path)
        assert resp.headers["Location"].startswith("/console/")
        if method == "GET" and name.startswith("index"):
            continue
        if method == "GET":
            assert resp.headers["Location"] == "/console/login?next=" + path.replace("/", "%2F")
    # The API's bearer token is no key to the console.
    resp = await client.get(
        "/console/fleet", headers={"Authorization": f"Bearer {ADMIN}"}, allow_redirects=False
    )
    assert resp.status == 303


async def test_login_form_and_its_answers(client: Client) -> None:
    client.session.cookie_jar.clear()
    form = await client.get("/console/login")
    assert form.status == 200 and 'name="token"' in await form.text()
    login_cookie = form.headers["Set-Cookie"]
    assert "HttpOnly" in login_cookie and "SameSite=Strict" in login_cookie
    assert "Path=/console" in login_cookie
    # A form posted without the login form's own token (login CSRF): refused.
    resp = await client.post(
        "/console/login", data={"token": ADMIN, "csrf": "nope"}, allow_redirects=False
    )
    assert resp.status == 403 and "hearth_console=" not in resp.headers.get("Set-Cookie", "")
    resp = await _login(client, READER)
    assert resp.status == 401 and "not an admin token" in await resp.text()
    resp = await _login(client, ADMIN, next_path="https://elsewhere.example/")
    assert resp.status == 303 and resp.headers["Location"] == "/console/"
    session_cookie = resp.cookies["hearth_console"]
    assert session_cookie["httponly"] and session_cookie["samesite"] == "Strict"
    assert session_cookie["path"] == "/console" and ADMIN not in session_cookie.value
    assert not session_cookie["secure"]  # plain HTTP
    behind_tls = await client.post(
        "/console/login",
        data={"token": ADMIN, "csrf": "x", "next": "/console/"},
        headers={"X-Forwarded-Proto": "https"},
        allow_redirects=False,
    )
    assert "Secure" in behind_tls.headers.get("Set-Cookie", "")  # the fresh login form's cookie
    page = await client.get("/console/fleet")
    assert page.status == 200
    for header, value in {
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
    }.items():
        assert page.headers[header] == value
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


async def test_erasure_needs_the_token_the_origin_and_the_typed_id(
    client: Client, conn: Conn
) -> None:
    user = f"http-{secrets.token_hex(4)}"
    admin.add_user(conn, user, "UTC")
    admin.grant_consent(conn, user_id=user, category="energy", at=datetime.now(UTC) - timedelta(1))
    plug = admin.register_device(
        conn, user_id=user, kind="plug", format="hearth", external_id=f"{user}-plug"
    ).device_id
    now = datetime.now(UTC)
    insert_numeric(conn, [(now - timedelta(minutes=5), plug, user, "power_w", 3.0, now)])
    client.session.cookie_jar.clear()
    assert (await _login(client)).status == 303
    csrf = await _csrf(client, f"/console/person?user_id={user}")

    def exists() -> bool:
        return (
            conn.execute("SELECT 1 FROM users WHERE user_id = %s", (user,)).fetchone() is not None
        )

    async def erase(**form: str) -> ClientResponse:
        headers = {"Origin": form.pop("origin")} if "origin" in form else {}
        return await client.post(
            "/console/person/erase", data=form, headers=headers, allow_redirects=False
        )

    assert (await erase(user_id=user, confirm=user)).status == 403  # no CSRF token
    assert (await erase(user_id=user, confirm=user, csrf=csrf + "x")).status == 403
    other_site = await erase(user_id=user, confirm=user, csrf=csrf, origin="https://evil.example")
    assert other_site.status == 403
    mistyped = await erase(user_id=user, confirm=user.upper(), csrf=csrf)
    assert mistyped.status == 400 and "Nothing was erased" in await mistyped.text()
    assert exists()
    done = await erase(user_id=user, confirm=f" {user} ", csrf=csrf)
    assert done.status == 303 and "status=complete" in done.headers["Location"]
    assert not exists()
    record = admin.erasure_record(conn, user)
    assert record is not None and record["deleted"]["numeric_readings"] == 1  # type: ignore[index]
    assert f"erased={record['audit_id']}" in done.headers["Location"]
    after = await client.get(done.headers["Location"])
    assert after.status == 200 and "was erased" in await after.text()
    exported = await client.get(f"/console/person/export?user_id={user}")
    assert exported.status == 200 and (await exported.json())["held"] == "nothing"


async def test_errors_are_pages(client: Client) -> None:
    client.session.cookie_jar.clear()
    await _login(client)
    unknown = await client.get("/console/person?user_id=nobody-" + secrets.token_hex(4))
    assert unknown.status == 404 and "No user" in await unknown.text()
    assert unknown.content_type == "text/html"
    bad = await client.get("/console/person/export?user_id=no%20such")
    assert bad.status == 400 and "not a valid user id" in await bad.text()
    missing = await client.get("/console/person/export?user_id=nobody-" + secrets.token_hex(4))
    assert missing.status == 404 and missing.content_type == "text/html"
    big = await client.post("/console/person/erase", data={"csrf": "x" * 20_000})
    assert big.status == 413
    css = await client.get("/console/static/console.css")
    assert css.status == 200 and "@media print" in await css.text()
    assert (await client.get("/console/static/")).status in (403, 404)


async def test_a_logout_ends_the_session_for_this_browser(client: Client) -> None:
    client.session.cookie_jar.clear()
    await _login(client)
    csrf = await _csrf(client)
    refused = await client.post("/console/logout", data={}, allow_redirects=False)
    assert refused.status == 403  # a logout is a state change too
    out = await client.post("/console/logout", data={"csrf": csrf}, allow_redirects=False)
    assert out.status == 303 and out.headers["Location"] == "/console/login"
    again = await client.get("/console/fleet", allow_redirects=False)
    assert again.status == 303
