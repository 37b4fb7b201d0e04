"""The console's login: a cookie bound to an ``admin`` token, and CSRF tokens.

Tokens never travel in URLs. ``POST /console/login`` takes the token in the form field
``token``; if ``HEARTH_API_TOKENS`` gives it the ``admin`` scope, the answer sets the session
cookie (HttpOnly, SameSite=Strict, path ``/console``, Secure over HTTPS, also behind a proxy
that sets ``X-Forwarded-Proto``)::

    <expires>.<nonce>.<HMAC-SHA256(token, "session" NUL expires NUL nonce)>

The cookie holds no token, only proof of one: it is valid while it has not expired *and* one
of the admin tokens configured now produces its MAC, so taking a token out of
``HEARTH_API_TOKENS`` (and restarting) ends every session it opened, and every replica of the
service accepts the cookies of every other. Checking compares with every admin token, without
an early exit, through ``hmac.compare_digest``.

CSRF: every state-changing form carries ``csrf`` = HMAC(token, "csrf" NUL nonce), bound to the
session; the login form (no session yet) uses a double-submit cookie. A POST whose ``Origin``
names another host is refused as well. SameSite=Strict already keeps the cookie off requests
other sites start; the CSRF token is the second lock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

COOKIE = "hearth_console"
LOGIN_COOKIE = "hearth_console_login"  # double-submit CSRF value of the login form
COOKIE_PATH = "/console"
SESSION_TTL_S = 8 * 3600
ADMIN_SCOPE = "admin"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _mac(key: bytes, *parts: str) -> str:
    return _b64(hmac.digest(key, "\0".join(parts).encode(), "sha256"))


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int
    csrf: str  # what this session's forms must send back


class ConsoleAuth:
    """Admin tokens → sessions and CSRF tokens; nothing stored server-side."""

    def __init__(self, tokens: Mapping[str, frozenset[str]], ttl_s: int = SESSION_TTL_S) -> None:
        self._keys = [t.encode() for t, scopes in tokens.items() if ADMIN_SCOPE in scopes]
        # Fixed-length digests for the token check: compare_digest of unequal lengths
        # returns early.
        self._digests = [hashlib.sha256(k).digest() for k in self._keys]
        self._ttl_s = ttl_s

    def admin_key(self, presented: str) -> bytes | None:
        """The admin token ``presented`` is, or None."""
        try:
            digest = hashlib.sha256(presented.encode()).digest()
        except UnicodeEncodeError:
            return None
        found: bytes | None = None
        for key, known in zip(self._keys, self._digests, strict=True):
            if hmac.compare_digest(digest, known):
                found = key
        return found

    def open(self, key: bytes, now: float | None = None) -> tuple[str, Session]:
        """A new session for admin token ``key``: (cookie value, session)."""
        expires = int(now if now is not None else time.time()) + self._ttl_s
        nonce = secrets.token_urlsafe(18)
        cookie = f"{expires}.{nonce}.{_mac(key, 'session', str(expires), nonce)}"
        return cookie, Session(nonce, expires, _mac(key, "csrf", nonce))

    def session(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie proves, or None (absent, malformed, expired, or no admin
        token configured now made it)."""
        if not cookie:
            return None
        parts = cookie.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return None
        expires_text, nonce, mac = parts
        expires = int(expires_text)
        if expires <= (now if now is not None else time.time()):
            return None
        matched: bytes | None = None
        for key in self._keys:
            if hmac.compare_digest(_mac(key, "session", expires_text, nonce), mac):
                matched = key
        if matched is None:
            return None
        return Session(nonce, expires, _mac(matched, "csrf", nonce))

    @property
    def ttl_s(self) -> int:
        return self._ttl_s


def csrf_ok(expected: str, presented: object) -> bool:
    return isinstance(presented, str) and hmac.compare_digest(
        expected.encode(), presented.encode(errors="replace")
    )


def same_origin(request: web.Request) -> bool:
    """False when the request says it came from a page of another host (``Origin``; absent
    on some same-origin requests, so absence passes: the CSRF token decides then)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.host


def over_https(request: web.Request) -> bool:
    """The browser reached us over HTTPS: directly, or through a TLS-terminating proxy that says
    so (``X-Forwarded-Proto``). Trusting that header is safe here: it can only add ``Secure``,
    and a cookie marked Secure is merely never sent over plain HTTP."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def set_cookie(
    response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=over_https(request),
    )


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path=COOKIE_PATH)


def safe_next(target: object) -> str:
    """Where to go after the login: a console path of this site, never another site."""
    if (
        isinstance(target, str)
        and target.startswith(COOKIE_PATH + "/")
        and "//" not in target
        and "\\" not in target
        and all(c.isprintable() for c in target)
    ):
        return target
    return COOKIE_PATH + "/"
