"""Helpers to run the service for tests and benchmarks: as a subprocess (``python -m features
serve``, the real thing) or in a background thread (same process, so tests can patch it), and
to seed users, consent and snapshots straight into the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from aiohttp import web

from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION, sync_definitions
from features.service.app import create_app, make_runner
from hearth.db import Conn
from hearth.settings import Settings
from tests.conftest import free_port
from tests.support.builders import consent

ROOT = Path(__file__).resolve().parents[2]


def wait_ready(base_url: str, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(base_url + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"feature service at {base_url} not ready after {deadline_s}s")


def tokens_env(tokens: Mapping[str, Sequence[str]]) -> str:
    return json.dumps({t: list(s) for t, s in tokens.items()})


@contextmanager
def serve_subprocess(
    database_url: str,
    tokens: Mapping[str, Sequence[str]],
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """``python -m features serve`` on a free port; yields its base URL."""
    port = free_port()
    proc_env = {
        **os.environ,
        **(env or {}),
        "HEARTH_DATABASE_URL": database_url,
        "HEARTH_API_TOKENS": tokens_env(tokens),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "features", "serve", "--port", str(port), *extra_args],
        cwd=ROOT,
        env=proc_env,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def serve_in_thread(settings: Settings, **app_options: object) -> Iterator[str]:
    """The app on a free port in a thread with its own event loop; yields its base URL."""
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = make_runner(create_app(settings, **app_options), settings)  # type: ignore[arg-type]

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=20)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url)
        yield base_url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def seed_user(
    conn: Conn,
    user_id: str,
    *,
    consent_from: datetime | None,
    categories: Sequence[str] = ("energy", "presence"),
    tz: str = "UTC",
) -> None:
    """A user with grants under the current notice from ``consent_from`` (None: no consent)."""
    conn.execute(
        "INSERT INTO users (user_id, tz) VALUES (%s, %s) ON CONFLICT DO NOTHING", (user_id, tz)
    )
    if consent_from is None:
        return
    for category in categories:
        consent(conn, user_id, category, "grant", consent_from)


# A stored snapshot as {name: cell} (migration 0055), for SELECTs in tests.
VECTOR_SQL = "hearth_snapshot_vector(feature_set_version, vals, covs, withheld)"

# A {name: cell} vector into the packed columns (features.snapshots.codec): by the version's
# definitions, as migration 0055 converted stored vectors; features not given are null.
_PACK_SQL = """
    INSERT INTO feature_snapshots (user_id, as_of, feature_set_version, vals, covs, withheld)
    SELECT %(user)s, %(as_of)s, %(version)s,
           hearth_pack_float8(array_agg((v.doc -> d.name ->> 'value')::float8
                                        ORDER BY d.name COLLATE "C")),
           hearth_pack_float8(array_agg(coalesce((v.doc -> d.name ->> 'coverage')::float8, 0)
                                        ORDER BY d.name COLLATE "C")),
           coalesce(jsonb_object_agg(d.category, v.doc -> d.name ->> 'reason')
                        FILTER (WHERE v.doc -> d.name ? 'reason'), '{}'::jsonb)
      FROM (SELECT %(doc)s::jsonb AS doc) v
      JOIN feature_definitions d ON d.feature_set_version = %(version)s
    ON CONFLICT DO NOTHING
"""


def seed_snapshot(
    conn: Conn,
    user_id: str,
    as_of: datetime,
    version: str,
    vector: Mapping[str, Mapping[str, object]],
) -> None:
    """A stored snapshot holding ``vector``'s cells (features of ``version``; the others are
    null with coverage 0). The current version's definitions are synced first."""
    if version == FEATURE_SET_VERSION:
        sync_definitions(conn)
    known = {
        str(r[0])
        for r in conn.execute(
            "SELECT name FROM feature_definitions WHERE feature_set_version = %s", (version,)
        )
    }
    if not set(vector) <= known:
        raise ValueError(f"not features of {version}: {sorted(set(vector) - known)}")
    conn.execute(
        _PACK_SQL,
        {"user": user_id, "as_of": as_of, "version": version, "doc": json.dumps(vector)},
    )


def full_vector(cells: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, object]]:
    """What the service serves for a snapshot seeded with ``cells``: every feature of the
    current set, those not given null with coverage 0."""
    out: dict[str, dict[str, object]] = {
        d.name: {"value": None, "coverage": 0.0} for d in DEFINITIONS
    }
    out.update({k: dict(v) for k, v in cells.items()})
    return out
