"""The operator's console in a real headless Chromium (issue 19's proof).

A private database is seeded (tests/support/console.py), a real collector on the test broker
stores a phone's messages carrying raw identifiers and dead-letters malformed ones, the rollups
and the console's summaries are refreshed, and the feature service runs in a thread. Chromium
(Debian's, driven by Playwright; no browser download) logs in, opens every page, reads every
number it shows (``data-k``/``data-v``) and compares each with the same number computed from
the base tables; searches a user, downloads an export and erases a user behind the typed
confirmation. A screenshot of each page, and a PDF of one printed, land in ``out/console/``.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from features.rollups import refresh_rollups
from features.service.console.summary import refresh_console_summaries
from hearth import admin
from hearth.db import Conn
from hearth.settings import load_settings
from tests.conftest import Broker
from tests.integration.fleet import CollectorFactory, publish_all, wait_until
from tests.integration.privacy_scan import PATTERNS
from tests.integration.private_db import private_database
from tests.support import console as expect
from tests.support.service import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "out" / "console"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN = "console-admin-" + secrets.token_hex(12)
READER = "console-reader-" + secrets.token_hex(12)
PAGES = ("fleet", "ingest", "consent", "features", "person")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup)")


@dataclass
class Planted:
    """Raw identifiers the phone sent; none may reach a page (docs/invariants.md#7)."""

    ssid: str
    bssid: str
    phone: str
    imei: str
    lat: str
    lon: str

    def strings(self) -> list[str]:
        return [self.ssid, self.bssid, self.phone, self.imei, self.lat, self.lon]


@dataclass
class World:
    url: str
    base: str
    seeded: expect.Seeded
    planted: Planted
    browser: Browser


def _publish_phone(broker: Broker, user: str, now: datetime, tag: str) -> tuple[Planted, int]:
    """Locations with Wi-Fi names and coordinates (stored only as hashes and geohashes), and
    malformed messages full of identifiers (dead letters, scrubbed). Returns what was planted
    and how many messages were sent."""
    planted = Planted(
        ssid=f"PlantedNet-{tag}",
        bssid=":".join(f"{b:02x}" for b in secrets.token_bytes(6)),
        phone=f"+49151{secrets.randbelow(10**7):07d}",
        imei=f"35{secrets.randbelow(10**13):013d}",
        lat=f"52.52{secrets.randbelow(10**4):04d}",
        lon=f"13.40{secrets.randbelow(10**4):04d}",
    )
    topic = f"owntracks/{user}/phone"
    messages = []
    for k in range(12):  # every 10 minutes up to 2 minutes ago
        tst = int((now - timedelta(minutes=2 + 10 * k)).timestamp())
        body = {
            "_type": "location",
            "lat": float(planted.lat),
            "lon": float(planted.lon),
            "tst": tst,
            "batt": 80 - k,
            "bs": 1,
            "conn": "w",
            "SSID": planted.ssid,
            "BSSID": planted.bssid,
        }
        messages.append((topic, json.dumps(body).encode()))
    bad = [  # a string latitude (schema), cut-off JSON, and an unknown phone
        {"_type": "location", "lat": planted.lat, "lon": float(planted.lon), "tst": 1,
         "tel": planted.phone, "imei": planted.imei, "BSSID": planted.bssid},
    ]  # fmt: skip
    messages += [(topic, json.dumps(b).encode()) for b in bad]
    messages.append(
        (
            topic,
            f'{{"_type":"location","lat":{planted.lat},"lon":{planted.lon},"SSID":"{planted.ssid}",'.encode(),
        )
    )
    messages.append((f"owntracks/nobody-{tag}/phone", b'{"_type":"location","lat":1.0}'))
    publish_all(broker.host, broker.port, messages)
    return planted, len(messages)


@pytest.fixture(scope="module")
def world(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tag = f"c{secrets.token_hex(3)}"
    with private_database() as (url, _), psycopg.connect(url, autocommit=True) as conn:
        seeded = expect.seed(conn)
        collectors = CollectorFactory(url, broker, tag, tmp_path_factory.mktemp("collector"))
        collector = collectors()
        collector.start()
        try:
            planted, sent = _publish_phone(broker, seeded.alice, seeded.now, tag)

            def settled() -> bool:
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM dead_letters) "
                    "+ (SELECT count(DISTINCT time) FROM numeric_readings WHERE device_id = %s)",
                    (seeded.devices["phone"],),
                ).fetchone()
                return row is not None and int(row[0]) >= sent  # type: ignore[arg-type]

            wait_until(settled, 60, "the phone's messages stored or dead-lettered")
        finally:
            collectors.stop_all()
        refresh_rollups(conn)
        # Every row is stored by now: the summaries may count the current minute too.
        refresh_console_summaries(conn, grace=timedelta(minutes=-1))
        settings = load_settings(
            database_url=url, api_tokens=json.dumps({ADMIN: ["admin"], READER: ["features:read"]})
        )
        SHOTS.mkdir(parents=True, exist_ok=True)
        with serve_in_thread(settings) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                yield World(url, base, seeded, planted, browser)
            finally:
                browser.close()


@pytest.fixture
def conn(world: World) -> Iterator[Conn]:
    with psycopg.connect(world.url, autocommit=True) as c:
        yield c


def _context(world: World) -> BrowserContext:
    return world.browser.new_context(
        base_url=world.base, viewport={"width": 1280, "height": 900}, accept_downloads=True
    )


def _login(world: World, context: BrowserContext, token: str = ADMIN) -> Page:
    page = context.new_page()
    page.goto("/console/fleet")
    assert page.url.startswith(f"{world.base}/console/login?next=")  # no cookie: the login form
    page.fill("#token", token)
    page.click("button[type=submit]")
    return page


def _numbers(page: Page) -> dict[str, str]:
    pairs = page.eval_on_selector_all(
        "[data-k]", "els => els.map(e => [e.dataset.k, e.dataset.v || ''])"
    )
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), "a number key appears twice"
    return dict(pairs)


def test_login_sets_a_strict_http_only_cookie_bound_to_the_token(world: World) -> None:
    context = _context(world)
    try:
        page = context.new_page()
        for name in PAGES:  # every page sends a visitor without the cookie to the login form
            page.goto(f"/console/{name}")
            assert "/console/login" in page.url and page.locator("#token").is_visible()
        page = _login(world, context, READER)  # a token without the admin scope
        assert page.locator(".error").inner_text() == "That is not an admin token."
        assert not [c for c in context.cookies() if c["name"] == "hearth_console"]
        page = _login(world, context)
        page.wait_for_url("**/console/fleet")
        (cookie,) = [c for c in context.cookies() if c["name"] == "hearth_console"]
        assert (
            cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
        )
        assert ADMIN not in cookie["value"]
        assert page.evaluate("document.cookie") == ""  # not readable by scripts
        page.click("header form.logout button")
        page.wait_for_url("**/console/login")
        page.goto("/console/consent")
        assert "/console/login" in page.url
    finally:
        context.close()


def _expected(conn: Conn, world: World, name: str) -> tuple[expect.Numbers, tuple[str, ...]]:
    if name == "fleet":
        return expect.fleet(conn), ("fleet.ages.",)
    if name == "ingest":
        return expect.ingest(conn, 300.0), ("ingest.minute.", "ingest.hour.", "ingest.dead_hour.")
    if name == "consent":
        return expect.consent(conn), ("consent.day.",)
    if name == "features":
        assert world.seeded.reference_as_of is not None
        return expect.features(conn, world.seeded.reference_as_of), ()
    return expect.person(conn, world.seeded.alice), ()


@pytest.mark.parametrize("name", PAGES)
def test_every_number_on_each_page_is_the_databases(world: World, conn: Conn, name: str) -> None:
    context = _context(world)
    try:
        page = _login(world, context)
        path = f"/console/{name}" + (f"?user_id={world.seeded.alice}" if name == "person" else "")
        response = page.goto(path)
        assert response is not None and response.status == 200
        timing = response.headers.get("server-timing", "")
        assert re.fullmatch(r"db;dur=[\d.]+, render;dur=[\d.]+", timing), timing
        shown = _numbers(page)
        expected, zero_prefixes = _expected(conn, world, name)
        assert len(shown) >= 10
        expect.compare(shown, expected, zero_prefixes=zero_prefixes)
        # Each number as people read it, too: the integer counts of the tables.
        for el in page.locator("td > span.n").all()[:200]:
            value, text = el.get_attribute("data-v") or "", el.inner_text()
            if re.fullmatch(r"-?\d+", value):
                assert text.replace(",", "") == value, (el.get_attribute("data-k"), text)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    finally:
        context.close()


def test_the_features_page_without_its_summary_shows_the_same_numbers(
    world: World, conn: Conn
) -> None:
    """A date whose feature stats a write discarded is read from the snapshots themselves."""
    assert world.seeded.reference_as_of is not None
    expected = expect.features(conn, world.seeded.reference_as_of)
    conn.execute("DELETE FROM console_feature_stats")
    context = _context(world)
    try:
        page = _login(world, context)
        page.goto("/console/features")
        assert "no feature summary yet" in page.locator("main").inner_text()
        expect.compare(_numbers(page), expected)
    finally:
        context.close()
        assert refresh_console_summaries(conn, grace=timedelta(minutes=-1)).feature_dates == 2
    page_with_stats = _context(world)
    try:
        page = _login(world, page_with_stats)
        page.goto("/console/features")
        assert "From the feature summary of this date" in page.locator("main").inner_text()
        expect.compare(_numbers(page), expected)
    finally:
        page_with_stats.close()


def test_the_pages_tell_what_they_show(world: World) -> None:
    context = _context(world)
    try:
        page = _login(world, context)
        page.goto("/console/fleet")
        silent = page.locator("h2:has-text('Silent devices') + p + table tbody tr")
        assert silent.count() == 1  # alice's plug, an hour of readings ending 5 hours ago
        assert world.seeded.devices["plug"] in silent.first.inner_text()
        page.goto("/console/ingest")
        reasons = page.locator("article.sample .badge").all_inner_texts()
        assert {"schema", "bad_json"} <= set(reasons), reasons
        assert page.locator("text=stopped").count() >= 1  # the collector stopped cleanly
        page.goto("/console/consent")
        body = page.locator("main").inner_text()
        assert "purge_category" in body and "erase_user" in body and "complete" in body
        page.goto("/console/features")
        assert page.locator("tr.band-shifted").count() > 0  # every third feature moved
        assert page.locator("tr.band-stable").count() > 0
        # Another reference date is a GET with the date; the page keeps it.
        assert world.seeded.reference_as_of is not None
        page.emulate_media(media="print")
        page.goto("/console/fleet")
        assert not page.locator("header nav").is_visible()  # printed: no navigation, no forms
        page.pdf(path=str(SHOTS / "fleet-print.pdf"))
        assert (SHOTS / "fleet-print.pdf").stat().st_size > 5000
    finally:
        context.close()


def test_search_export_and_erase_behind_the_typed_confirmation(
    world: World, conn: Conn, tmp_path: Path
) -> None:
    s = world.seeded
    context = _context(world)
    try:
        page = _login(world, context)
        page.goto("/console/person")
        page.fill("#user_id", "con-")  # the beginning of an id lists the users it fits
        page.click("form.search button")
        matches = page.locator("ul.matches a").all_inner_texts()
        assert matches == sorted([s.alice, s.bob, s.carol])
        page.click(f"ul.matches a:has-text('{s.carol}')")
        assert page.locator("section.person h2").inner_text() == s.carol

        with page.expect_download() as download:
            page.click("a:has-text('Download the export')")
        saved = tmp_path / "export.json"
        download.value.save_as(saved)
        assert download.value.suggested_filename == f"hearth-export-{s.carol}.json"
        exported = json.loads(saved.read_text())
        direct = admin.export_document(conn, s.carol)
        exported.pop("exported_at"), direct.pop("exported_at")
        assert exported == json.loads(json.dumps(direct, default=str))
        assert exported["tables"]["numeric_readings"]  # her door and router readings

        # The erase button stays disabled until the id is typed exactly.
        button = page.locator("form.erase button")
        page.fill("#confirm", s.carol[:-1])
        assert button.is_disabled()
        page.fill("#confirm", s.carol)
        assert button.is_enabled()
        button.click()
        page.wait_for_url(re.compile(r".*/console/person\?user_id=.*&erased=\d+&status=complete"))
        assert "Erasure complete" in page.locator("main").inner_text()
        assert s.carol in page.locator("section.erased h2").inner_text()
        assert conn.execute("SELECT 1 FROM users WHERE user_id = %s", (s.carol,)).fetchone() is None
        record = admin.erasure_record(conn, s.carol)
        assert record is not None and f"audit record {record['audit_id']}" in page.content()
        page.screenshot(path=str(SHOTS / "person-erased.png"), full_page=True)
    finally:
        context.close()


def test_no_page_shows_a_planted_identifier(world: World) -> None:
    context = _context(world)
    try:
        page = _login(world, context)
        s = world.seeded
        paths = [f"/console/{p}" for p in PAGES] + [
            f"/console/person?user_id={s.alice}",
            "/console/features?reference=" + (s.reference_as_of or s.now).isoformat(),
        ]
        texts = []
        for path in paths:
            page.goto(path)
            texts.append((path, page.content()))
        with page.expect_download() as download:
            page.goto(f"/console/person?user_id={s.alice}")
            page.click("a:has-text('Download the export')")
        texts.append(("export", Path(download.value.path()).read_text()))
        assert any("wtw" in t or "u33" in t for _, t in texts[-1:])  # geohashes are there
        for where, text in texts:
            for planted in world.planted.strings():
                assert planted.lower() not in text.lower(), f"{planted!r} on {where}"
            for kind, pattern in PATTERNS.items():
                found = re.search(pattern, text)
                assert found is None, f"{kind} {found.group(0)!r} on {where}"
    finally:
        context.close()


def test_a_form_from_elsewhere_changes_nothing(world: World, conn: Conn) -> None:
    """No CSRF token, or another session's: 403 and the user is still there."""
    context = _context(world)
    try:
        page = _login(world, context)
        page.goto(f"/console/person?user_id={world.seeded.bob}")
        response = page.request.post(
            "/console/person/erase",
            form={"user_id": world.seeded.bob, "confirm": world.seeded.bob, "csrf": "forged"},
        )
        assert response.status == 403
        response = page.request.post(
            "/console/person/erase", form={"user_id": world.seeded.bob, "confirm": world.seeded.bob}
        )
        assert response.status == 403
        row = conn.execute("SELECT 1 FROM users WHERE user_id = %s", (world.seeded.bob,)).fetchone()
        assert row is not None
    finally:
        context.close()
