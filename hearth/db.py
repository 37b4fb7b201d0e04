"""Database connections with errors a person can read.

Every process gets its connections here so that a wrong ``HEARTH_DATABASE_URL`` or a stopped
server becomes one :class:`DatabaseUnavailable` line naming the target (without the password).
"""

from __future__ import annotations

from urllib.parse import unquote

import psycopg
from psycopg.rows import TupleRow

from hearth.errors import Unavailable

# The connection types every module annotates with (rows as plain tuples).
Conn = psycopg.Connection[tuple[object, ...]]
AsyncConn = psycopg.AsyncConnection[tuple[object, ...]]


class DatabaseUnavailable(Unavailable):
    """The database cannot be reached or refused us; the message is one line."""


_SECRET_PARAMS = frozenset({"password", "sslpassword"})  # libpq URI parameters holding secrets


def _split_url(url: str) -> tuple[str, str, str, str]:
    """(scheme and ``//``, authority, path, ``?query#fragment``) without validation: error
    messages must handle the malformed URLs that caused them."""
    scheme, sep, rest = url.partition("//")
    if not sep:
        scheme, rest = "", url
    else:
        scheme += sep
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    path, qmark, query = tail.partition("?")
    return scheme, authority, path, qmark + query


def _url_secrets(url: str) -> set[str]:
    """Every password the URL carries, as written and percent-decoded."""
    found: set[str] = set()
    _, authority, _, query = _split_url(url)
    for userinfo in (authority.partition("@")[0], authority.rpartition("@")[0]):
        if ":" in userinfo:
            found.add(userinfo.partition(":")[2])
    for item in query[1:].split("#", 1)[0].split("&"):
        key, sep, value = item.partition("=")
        if sep and unquote(key).lower() in _SECRET_PARAMS:
            found.add(value)
    return {v for secret in found if secret for v in (secret, unquote(secret))}


def redact_url(url: str) -> str:
    """The URL with every password (user info, ``?password=``, ``?sslpassword=``) replaced
    by ``***``, for messages and logs. Malformed URLs too: they are what errors show."""
    scheme, authority, path, query = _split_url(url)
    userinfo, at, host = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.partition(':')[0]}:***@{host}"
    if query:
        query_text, hash_, fragment = query[1:].partition("#")
        items = [
            f"{item.partition('=')[0]}=***"
            if "=" in item and unquote(item.partition("=")[0]).lower() in _SECRET_PARAMS
            else item
            for item in query_text.split("&")
        ]
        query = "?" + "&".join(items) + hash_ + fragment
    return scheme + authority + path + query


def redact_secrets(text: str, url: str) -> str:
    """``text`` (an error message, a log line) with the passwords of ``url`` replaced.

    A password shorter than 4 characters is replaced only where quoted, so that a one-letter
    password does not turn every message into asterisks.
    """
    for secret in sorted(_url_secrets(url), key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
        else:
            text = text.replace(f'"{secret}"', '"***"').replace(f"'{secret}'", "'***'")
    return text


def describe_error(url: str, exc: BaseException, variable: str = "HEARTH_DATABASE_URL") -> str:
    # libpq quotes parts of a URL it cannot parse ("invalid percent-encoded token: ..."), so
    # the message is redacted as well as the URL.
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    detail = redact_secrets(first_line, url)
    return f"{variable}: cannot use {redact_url(url)}: {detail}"


def connect(
    url: str,
    *,
    autocommit: bool = False,
    timeout_s: float = 5.0,
    variable: str = "HEARTH_DATABASE_URL",
) -> psycopg.Connection[TupleRow]:
    """A connection, or :class:`DatabaseUnavailable` naming ``variable`` (the setting the URL
    came from, e.g. ``HEARTH_DATABASE_READ_URL``) and the redacted URL."""
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, int(timeout_s)))
    except psycopg.Error as exc:
        raise DatabaseUnavailable(describe_error(url, exc, variable)) from exc


async def connect_async(
    url: str,
    *,
    autocommit: bool = False,
    timeout_s: float = 5.0,
    variable: str = "HEARTH_DATABASE_URL",
) -> psycopg.AsyncConnection[TupleRow]:
    try:
        return await psycopg.AsyncConnection.connect(
            url, autocommit=autocommit, connect_timeout=max(1, int(timeout_s))
        )
    except psycopg.Error as exc:
        raise DatabaseUnavailable(describe_error(url, exc, variable)) from exc
