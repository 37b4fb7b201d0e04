"""Bearer tokens with scopes (``features:read``, ``scores:read``, ``admin``) from
``HEARTH_API_TOKENS``.

The presented token is compared with *every* configured token through ``hmac.compare_digest``
and without an early exit, so neither the match position nor a prefix leaks through timing.
Each route declares the scope it needs (``routes.py``); routes with no scope are public
(health, readiness, metrics, the OpenAPI document). An authorised request carries its caller,
``token:<first 12 hex digits of the token's sha256>`` (:data:`CALLER`), which names the token
in the score log without revealing it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Middleware

from features.service.errors import ApiError, Handler

_CHALLENGE = 'Bearer realm="hearth"'
CALLER = web.RequestKey("caller", str)  # who asked (see the module docstring)


def caller_label(digest: bytes) -> str:
    return "token:" + digest.hex()[:12]


class TokenAuthenticator:
    def __init__(self, tokens: Mapping[str, frozenset[str]]) -> None:
        # Compare fixed-length digests: compare_digest on different lengths returns early.
        self._entries = [(hashlib.sha256(t.encode()).digest(), s) for t, s in tokens.items()]

    def scopes_for(self, presented: str) -> frozenset[str] | None:
        try:
            encoded = presented.encode()
        except UnicodeEncodeError:  # header bytes that were not UTF-8 (surrogate-escaped)
            return None
        digest = hashlib.sha256(encoded).digest()
        found: frozenset[str] | None = None
        for known, scopes in self._entries:
            if hmac.compare_digest(digest, known):
                found = scopes
        return found

    def authorize(self, header: str | None, scope: str) -> str:
        """The caller's label; 401 without a valid token, 403 when the token lacks
        ``scope``."""
        if not header:
            raise ApiError(
                401,
                "unauthorized",
                "missing bearer token",
                headers={"WWW-Authenticate": _CHALLENGE},
            )
        kind, _, token = header.partition(" ")
        scopes = self.scopes_for(token.strip()) if kind.lower() == "bearer" else None
        if scopes is None:
            raise ApiError(
                401,
                "unauthorized",
                "invalid bearer token",
                headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
            )
        if scope not in scopes:
            raise ApiError(
                403,
                "forbidden",
                f"token lacks scope {scope!r}",
                headers={"WWW-Authenticate": f'{_CHALLENGE}, error="insufficient_scope"'},
            )
        return caller_label(hashlib.sha256(token.strip().encode()).digest())


def auth_middleware(authenticator: TokenAuthenticator, scopes: Mapping[str, str]) -> Middleware:
    """``scopes``: route name → required scope; routes not listed are public."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        name = request.match_info.route.name
        scope = scopes.get(name) if name is not None else None
        if scope is not None:
            request[CALLER] = authenticator.authorize(request.headers.get("Authorization"), scope)
        return await handler(request)

    return middleware
