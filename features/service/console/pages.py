"""The console's handlers: login, the five pages, export and erasure.

Every page handler runs behind :func:`_page` (no valid session cookie: a 303 to the login form)
and every state-changing one behind :func:`_action` (session, same origin and the session's
CSRF token, or 403). A page's queries and its template run in a worker thread on the console's
own pool; the answer says where the time went (``Server-Timing: db, render``). Errors become
HTML pages with the status the API would give (hearth.errors by class; database trouble 503).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

from aiohttp import web

from features.catalogue import FEATURE_SET_VERSION
from features.engine import latest_as_of
from features.service.console import charts
from features.service.console.queries import common
from features.service.console.queries import consent as consent_q
from features.service.console.queries import features as features_q
from features.service.console.queries import fleet as fleet_q
from features.service.console.queries import ingest as ingest_q
from features.service.console.queries import person as person_q
from features.service.console.render import key_part, render
from features.service.console.session import (
    COOKIE,
    COOKIE_PATH,
    LOGIN_COOKIE,
    Session,
    clear_cookie,
    csrf_ok,
    safe_next,
    same_origin,
    set_cookie,
)
from features.service.console.state import CONSOLE, ConsoleState
from features.service.errors import database_error
from features.service.state import state_of
from hearth import admin
from hearth.db import Conn
from hearth.errors import HearthError
from hearth.ids import is_valid_id

log = logging.getLogger("features.service.console")

NAV = (
    ("fleet", "Fleet"),
    ("ingest", "Ingest"),
    ("consent", "Consent"),
    ("features", "Features"),
    ("person", "Person"),
)
MAX_FORM_BYTES = 16 * 1024
REFERENCE_GAP = timedelta(days=28)  # the default PSI reference: about a month before
HTML_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",  # no-referrer would make POSTs say Origin: null
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PageHandler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]
ActionHandler = Callable[[web.Request, Session, Mapping[str, str]], Awaitable[web.StreamResponse]]
Build = Callable[[Conn], dict[str, Any]]


# --- plumbing --------------------------------------------------------------------------------


def _state(request: web.Request) -> ConsoleState:
    return request.app[CONSOLE]


def _html(text: str, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={**HTML_HEADERS, **(headers or {})},
    )


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _session(request: web.Request) -> Session | None:
    return _state(request).auth.session(request.cookies.get(COOKIE))


def _to_login(request: web.Request) -> web.Response:
    target = request.path_qs if request.method == "GET" else COOKIE_PATH + "/"
    return _see_other(f"{COOKIE_PATH}/login?{urlencode({'next': target})}")


def _base(request: web.Request, session: Session | None, active: str) -> dict[str, Any]:
    return {
        "nav": NAV,
        "active": active,
        "csrf": session.csrf if session else "",
        "signed_in": session is not None,
        "generated_at": datetime.now(UTC),
    }


def _error_page(
    request: web.Request, session: Session | None, status: int, title: str, message: str
) -> web.Response:
    body = render(
        "error.html", **_base(request, session, ""), status=status, title=title, message=message
    )
    return _html(body, status=status)


def _failure(request: web.Request, session: Session | None, exc: Exception) -> web.Response:
    """An exception as an HTML page: typed domain errors by class, database trouble 503."""
    if isinstance(exc, HearthError):
        return _error_page(request, session, exc.http_status, exc.code, exc.message)
    mapped = database_error(exc)
    if mapped is not None:
        return _error_page(request, session, mapped.status, mapped.code, mapped.message)
    route = request.match_info.route.resource
    log.error(
        "unhandled %s on %s %s",
        type(exc).__name__,
        request.method,
        route.canonical if route is not None else "?",
    )
    return _error_page(request, session, 500, "internal_error", "internal server error")


def _page(handler: PageHandler) -> Handler:
    """A page: a valid session cookie, or a redirect to the login form."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        session = _session(request)
        if session is None:
            return _to_login(request)
        try:
            return await handler(request, session)
        except Exception as exc:
            return _failure(request, session, exc)

    return wrapped


async def _form(request: web.Request) -> dict[str, str] | None:
    """The URL-encoded form of a POST (None: larger than ``MAX_FORM_BYTES``)."""
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        return None
    body = await request.content.read(MAX_FORM_BYTES + 1)
    if len(body) > MAX_FORM_BYTES:
        return None
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items() if v}


def _action(handler: ActionHandler) -> Handler:
    """A state-changing form: a session, the same origin and the session's CSRF token."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        session = _session(request)
        if session is None:
            return _to_login(request)
        form = await _form(request)
        if form is None:
            return _error_page(request, session, 413, "body_too_large", "the form is too large")
        if not same_origin(request) or not csrf_ok(session.csrf, form.get("csrf")):
            return _error_page(
                request,
                session,
                403,
                "forbidden",
                "the form did not come from this console (CSRF check failed); reload the page "
                "and try again",
            )
        try:
            return await handler(request, session, form)
        except Exception as exc:
            return _failure(request, session, exc)

    return wrapped


async def _render(
    request: web.Request, session: Session, template: str, active: str, build: Build
) -> web.Response:
    """Run ``build`` (the page's queries, in one read-only snapshot) and the template in a
    worker thread. A context's ``status`` (default 200) is the answer's."""
    state = _state(request)
    base = _base(request, session, active)

    def work() -> tuple[str, int, float, float]:
        t0 = time.perf_counter()
        with state.pool.connection() as conn, conn.transaction():
            # One snapshot for the whole page: its numbers agree with each other, and now()
            # is one instant for all of them.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            context = build(conn)
        t1 = time.perf_counter()
        status = int(context.pop("status", 200))
        html = render(template, **base, **context, db_ms=(t1 - t0) * 1000)
        return html, status, t1 - t0, time.perf_counter() - t1

    html, status, db_s, render_s = await asyncio.to_thread(work)
    timing = f"db;dur={db_s * 1000:.1f}, render;dur={render_s * 1000:.1f}"
    return _html(html, status=status, headers={"Server-Timing": timing})


# --- login -----------------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    return _see_other(f"{COOKIE_PATH}/fleet")


def _login_page(
    request: web.Request, form_token: str, target: str, status: int = 200, error: str = ""
) -> web.Response:
    body = render(
        "login.html",
        **_base(request, None, "login"),
        form_token=form_token,
        next=target,
        error=error,
    )
    response = _html(body, status=status)
    set_cookie(response, request, LOGIN_COOKIE, form_token, max_age=3600)
    return response


async def login_form(request: web.Request) -> web.StreamResponse:
    target = safe_next(request.query.get("next"))
    if _session(request) is not None:
        return _see_other(target)
    form_token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(18)
    return _login_page(request, form_token, target)


async def login(request: web.Request) -> web.StreamResponse:
    auth = _state(request).auth
    form = await _form(request)
    if form is None:
        return _error_page(request, None, 413, "body_too_large", "the form is too large")
    target = safe_next(form.get("next"))
    expected = request.cookies.get(LOGIN_COOKIE)
    if not expected or not same_origin(request) or not csrf_ok(expected, form.get("csrf")):
        return _login_page(
            request,
            secrets.token_urlsafe(18),
            target,
            403,
            "The login form expired. Enter the token again.",
        )
    key = auth.admin_key(form.get("token", "").strip())
    if key is None:
        return _login_page(request, expected, target, 401, "That is not an admin token.")
    cookie, _ = auth.open(key)
    response = _see_other(target)
    set_cookie(response, request, COOKIE, cookie, max_age=auth.ttl_s)
    clear_cookie(response, LOGIN_COOKIE)
    return response


async def _logout(
    request: web.Request, session: Session, form: Mapping[str, str]
) -> web.StreamResponse:
    response = _see_other(f"{COOKIE_PATH}/login")
    clear_cookie(response, COOKIE)
    return response


logout = _action(_logout)


# --- fleet -----------------------------------------------------------------------------------


def _fleet(conn: Conn) -> dict[str, Any]:
    groups, ages = fleet_q.groups_and_ages(conn)
    silent, retired = fleet_q.lists(conn)
    chart = charts.bars(
        [label for _, label, _ in fleet_q.AGE_BUCKETS],
        [key for key, _, _ in fleet_q.AGE_BUCKETS],
        [charts.Series("devices", "devices", [ages.get(k, 0) for k, _, _ in fleet_q.AGE_BUCKETS])],
        key_prefix="fleet.ages",
        title="Live devices by time since their last reading",
        unit="devices",
        height=150,
        ticks=len(fleet_q.AGE_BUCKETS),
    )
    return {
        "summary": common.summary_as_of(conn),
        "groups": groups,
        "age_chart": chart,
        "silent": silent,
        "retired": retired,
        "silent_factor": fleet_q.SILENT_FACTOR,
        "list_limit": fleet_q.LIST_LIMIT,
    }


async def _fleet_page(request: web.Request, session: Session) -> web.StreamResponse:
    return await _render(request, session, "fleet.html", "fleet", _fleet)


fleet = _page(_fleet_page)


# --- ingest ----------------------------------------------------------------------------------


def _slots(start: datetime, step: timedelta, count: int) -> list[datetime]:
    return [start + i * step for i in range(count)]


def _slot_key(slot: datetime) -> str:
    return slot.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


def _series_chart(
    found: list[common.Row],
    slots: list[datetime],
    series: list[tuple[str, str, str]],
    *,
    label_format: str,
    key_prefix: str,
    title: str,
    unit: str,
    stacked: bool = True,
) -> object:
    by_slot = {r["slot"]: r for r in found}
    return charts.bars(
        [s.astimezone(UTC).strftime(label_format) for s in slots],
        [_slot_key(s) for s in slots],
        [
            charts.Series(name, column, [by_slot.get(s, {}).get(column) or 0 for s in slots], css)
            for name, column, css in series
        ],
        key_prefix=key_prefix,
        title=title,
        unit=unit,
        stacked=stacked,
    )


_ROWS_MESSAGES = [("rows", "rows", "s0"), ("messages", "messages", "s1")]


def _ingest_charts(
    rates: common.Row, minutes: list[common.Row], hours: list[common.Row]
) -> list[object]:
    as_of = rates["as_of"]
    if as_of is None:
        return []
    minute_slots = _slots(as_of - timedelta(hours=1), timedelta(minutes=1), 60)
    first_hour = (as_of - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    hour_slots = [h for h in _slots(first_hour, timedelta(hours=1), 25) if h < as_of]
    return [
        _series_chart(
            minutes,
            minute_slots,
            _ROWS_MESSAGES,
            label_format="%H:%M",
            key_prefix="ingest.minute",
            title="Rows and messages stored per minute, last hour (UTC)",
            unit="per minute",
            stacked=False,
        ),
        _series_chart(
            hours,
            hour_slots,
            _ROWS_MESSAGES,
            label_format="%H:00",
            key_prefix="ingest.hour",
            title="Rows and messages stored per hour, last day (UTC)",
            unit="per hour",
            stacked=False,
        ),
    ]


def _dead_chart(found: list[common.Row], now: datetime) -> object:
    reasons = sorted({str(r["reason"]) for r in found})
    this_hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    slots = _slots(this_hour - timedelta(hours=23), timedelta(hours=1), 24)
    counts = {(r["slot"], str(r["reason"])): int(r["n"]) for r in found}
    return charts.bars(
        [s.strftime("%H:00") for s in slots],
        [_slot_key(s) for s in slots],
        [
            charts.Series(
                reason,
                key_part(reason),
                [counts.get((s, reason), 0) for s in slots],
                f"s{i % charts.PALETTE_SIZE}",
            )
            for i, reason in enumerate(reasons)
        ],
        key_prefix="ingest.dead_hour",
        title="Dead letters per hour by reason, last 24 hours (UTC)",
        unit="dead letters",
    )


def _ingest(settings_stale_s: float) -> Build:
    def build(conn: Conn) -> dict[str, Any]:
        rates = ingest_q.rates(conn)
        summary = common.summary_as_of(conn)
        minutes, hours = ingest_q.per_minute(conn), ingest_q.per_hour(conn)
        return {
            "summary": summary,
            "rates": rates,
            "charts": _ingest_charts(rates, minutes, hours),
            "lag": ingest_q.lag(conn),
            "replicas": ingest_q.replicas(conn, settings_stale_s),
            "stale_after_s": settings_stale_s,
            "dead": ingest_q.dead_by_reason(conn),
            "dead_chart": _dead_chart(ingest_q.dead_per_hour(conn), summary["now"]),
            "samples": ingest_q.dead_samples(conn),
            "refused": ingest_q.refused(conn),
        }

    return build


async def _ingest_page(request: web.Request, session: Session) -> web.StreamResponse:
    stale = float(_state(request).settings.collector_stale_after_s)
    return await _render(request, session, "ingest.html", "ingest", _ingest(stale))


ingest = _page(_ingest_page)


# --- consent ---------------------------------------------------------------------------------


def _consent(conn: Conn) -> dict[str, Any]:
    now = common.summary_as_of(conn)["now"]
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    slots = _slots(today - timedelta(days=consent_q.ACTIVITY_DAYS - 1), timedelta(days=1), 30)
    chart = _series_chart(
        consent_q.per_day(conn),
        slots,
        [("grants", "grants", "good"), ("withdrawals", "withdrawals", "bad")],
        label_format="%m-%d",
        key_prefix="consent.day",
        title=f"Grants and withdrawals per day, last {consent_q.ACTIVITY_DAYS} days (UTC)",
        unit="events",
        stacked=False,
    )
    return {
        "states": consent_q.states(conn),
        "breadth": consent_q.breadth(conn),
        "activity": consent_q.activity(conn),
        "chart": chart,
        "purge_totals": consent_q.purge_totals(conn),
        "purges": consent_q.recent_purges(conn),
        "recent_limit": consent_q.RECENT_AUDIT,
        "activity_days": consent_q.ACTIVITY_DAYS,
    }


async def _consent_page(request: web.Request, session: Session) -> web.StreamResponse:
    return await _render(request, session, "consent.html", "consent", _consent)


consent = _page(_consent_page)


# --- features --------------------------------------------------------------------------------


def _reference(dates: list[datetime], asked: str | None) -> datetime | None:
    """The reference date: the one asked for when it is a snapshot date, else the newest at
    least ``REFERENCE_GAP`` before the latest, else the oldest."""
    if len(dates) < 2:
        return None
    latest, others = dates[0], dates[1:]
    for d in others:
        if asked is not None and d.astimezone(UTC).isoformat() == asked:
            return d
    for d in others:
        if d <= latest - REFERENCE_GAP:
            return d
    return others[-1]


def _features(asked: str | None) -> Build:
    def build(conn: Conn) -> dict[str, Any]:
        version = FEATURE_SET_VERSION
        dates = features_q.dates(conn, version)
        context: dict[str, Any] = {
            "version": version,
            "dates": dates,
            "other_versions": features_q.other_versions(conn, version),
            "latest": None,
            "reference": None,
            "coverage": [],
            "family_chart": None,
            "psi": [],
            "psi_bounds": features_q.PSI_BOUNDS,
            "stats": {},
        }
        if not dates:
            return context
        latest = dates[0]["as_of"]
        reference = _reference([d["as_of"] for d in dates], asked)
        stats = features_q.with_stats(
            conn, version, [latest] if reference is None else [latest, reference]
        )
        coverage = features_q.coverage(conn, version, latest, latest in stats)
        families = [r for r in coverage if r["level"] == 1]
        context.update(
            latest=latest,
            reference=reference,
            stats=stats,
            coverage=coverage,
            family_chart=charts.share_bars(
                [
                    charts.ShareBar(
                        str(r["family"]), key_part(r["family"]), r["non_null_share"], "s0"
                    )
                    for r in families
                ],
                key_prefix="features.family_chart",
                title="Non-null share per family at the latest date",
            ),
            psi=[]
            if reference is None
            else features_q.psi(conn, version, latest, reference, stats),
        )
        return context

    return build


async def _features_page(request: web.Request, session: Session) -> web.StreamResponse:
    build = _features(request.query.get("reference"))
    return await _render(request, session, "features.html", "features", build)


features = _page(_features_page)


# --- person ----------------------------------------------------------------------------------


def _category_matrix(found: list[common.Row]) -> dict[str, Any]:
    """Rows per (category, table) laid out for the page: categories down, tables across, the
    totals last (None)."""
    tables = sorted({str(r["table"]) for r in found if r["table"] is not None})
    categories = sorted({str(r["category"]) for r in found if r["category"] is not None})
    return {
        "category_tables": [*tables, None],
        "category_names": [*categories, None],
        "category_rows": {(r["category"], r["table"]): r["rows"] for r in found},
    }


def _person(text: str, max_clock_skew_s: float, notice: Mapping[str, str]) -> Build:
    def build(conn: Conn) -> dict[str, Any]:
        context: dict[str, Any] = {
            "query": text,
            "user": None,
            "matches": [],
            "erased": None,
            "notice": notice,
        }
        if not text:
            return context
        found = person_q.user(conn, text) if is_valid_id(text) else None
        if found is None:
            if is_valid_id(text):
                try:
                    erased = admin.erasure_record(conn, text)
                except HearthError:  # no pseudonym key: erasures cannot be looked up
                    erased = None
                if erased is not None:
                    erased["erased_at"] = datetime.fromisoformat(str(erased["erased_at"]))
                context["erased"] = erased
            context["matches"] = person_q.search(conn, text)
            if context["erased"] is None and not context["matches"]:
                context["status"] = 404
            return context
        user_id = str(found["user_id"])
        context.update(
            user=found,
            devices=person_q.devices(conn, user_id),
            consent_now=person_q.consent_now(conn, user_id),
            history=person_q.consent_history(conn, user_id),
            **_category_matrix(person_q.rows_by_category(conn, user_id)),
            by_table=person_q.rows_by_table(conn, user_id),
            vector=person_q.latest_vector(
                conn, user_id, FEATURE_SET_VERSION, latest_as_of(max_clock_skew_s)
            ),
            scores=person_q.scores(conn, user_id),
            audit=person_q.audit(conn, user_id),
        )
        return context

    return build


async def _person_page(request: web.Request, session: Session) -> web.StreamResponse:
    text = request.query.get("user_id", "").strip()[:200]
    settings = _state(request).settings
    # After an erasure (POST, then a redirect here): its audit record and status.
    notice = {k: request.query[k][:40] for k in ("erased", "status") if k in request.query}
    build = _person(text, settings.max_clock_skew_s, notice)
    return await _render(request, session, "person.html", "person", build)


person = _page(_person_page)


async def _admin_call(request: web.Request, call: Callable[[Conn], Any]) -> Any:
    """``call`` on an admin connection in an admin thread (features.service.handlers.admin)."""
    service = state_of(request)

    def work() -> Any:
        with service.admin_pool.connection() as conn:
            return call(conn)

    return await asyncio.get_running_loop().run_in_executor(service.admin_executor, work)


async def _export(request: web.Request, session: Session) -> web.StreamResponse:
    user_id = request.query.get("user_id", "")
    if not is_valid_id(user_id):
        return _error_page(request, session, 400, "invalid_request", "not a valid user id")
    text = await _admin_call(request, lambda conn: admin.export_text(conn, user_id))
    return web.Response(
        text=text + "\n",
        content_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="hearth-export-{user_id}.json"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


export = _page(_export)


async def _erase(
    request: web.Request, session: Session, form: Mapping[str, str]
) -> web.StreamResponse:
    user_id = form.get("user_id", "")
    if not is_valid_id(user_id):
        return _error_page(request, session, 400, "invalid_request", "not a valid user id")
    if form.get("confirm", "").strip() != user_id:
        return _error_page(
            request,
            session,
            400,
            "not_confirmed",
            "Nothing was erased: type the user id exactly to confirm the erasure.",
        )
    try:
        report = await _admin_call(request, lambda conn: admin.erase_user(conn, user_id))
    except admin.PurgeIncomplete as exc:
        report = exc.report
    query = urlencode(
        {"user_id": user_id, "erased": report.audit_id or "", "status": report.status}
    )
    return _see_other(f"{COOKIE_PATH}/person?{query}")


erase = _action(_erase)
