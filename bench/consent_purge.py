"""Time of a consent withdrawal purge and of an erasure for one large user.

Makes a scratch database from ``hearth_template`` (dropped at the end), loads ``--rows`` raw
readings for one user (a year of hourly location, battery and plug power over several devices)
plus the same number for other users, then times ``withdraw_consent(location)`` and
``erase_user`` (each end to end: ledger change under the consent gate, delete, verification).

    .venv/bin/python bench/consent_purge.py [--rows 300000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import psycopg

from hearth import admin
from hearth.migrate import migrate

BASE_URL = os.environ.get("HEARTH_DATABASE_URL", "postgresql://hearth:hearth@127.0.0.1:5432/hearth")
os.environ.setdefault("HEARTH_PSEUDONYM_KEY", "bench-pseudonym-key-0123456789")


def load(conn: psycopg.Connection, user: str, rows: int) -> None:
    admin.add_user(conn, user)
    devices = [
        admin.register_device(
            conn, user_id=user, kind="phone", format="hearth", external_id=f"{user}-d{i}"
        ).device_id
        for i in range(4)
    ]
    admin.grant_consent(conn, user_id=user, category="location")
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    per_device = rows // (len(devices) * 3)
    with conn.cursor() as cur:
        with cur.copy(
            "COPY numeric_readings (time, device_id, user_id, signal, value) FROM STDIN"
        ) as cp:
            for d in devices:
                for i in range(per_device):
                    t = t0 + timedelta(minutes=5 * i)
                    cp.write_row((t, d, user, "battery_pct", 50.0))
                    cp.write_row((t, d, user, "power_w", 10.0))
        with cur.copy(
            "COPY categorical_readings (time, device_id, user_id, signal, value) FROM STDIN"
        ) as cp:
            for d in devices:
                for i in range(per_device):
                    cp.write_row((t0 + timedelta(minutes=5 * i), d, user, "geohash", "wtw3sjq"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    args = parser.parse_args()
    name = f"bench_purge_{secrets.token_hex(3)}"
    with psycopg.connect(BASE_URL, autocommit=True) as root:
        root.execute(f'CREATE DATABASE "{name}" TEMPLATE hearth_template')
    url = urlunsplit(urlsplit(BASE_URL)._replace(path=f"/{name}"))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn)
            load(conn, "big-user", args.rows)
            load(conn, "other-user", args.rows)
            conn.execute("ANALYZE")
            t = time.monotonic()
            withdraw = admin.withdraw_consent(conn, user_id="big-user", category="location")
            withdraw_s = time.monotonic() - t
            t = time.monotonic()
            erase = admin.erase_user(conn, "big-user")
            erase_s = time.monotonic() - t
    finally:
        with psycopg.connect(BASE_URL, autocommit=True) as root:
            root.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"{'operation':<22}{'rows deleted':>14}{'seconds':>10}")
    print(f"{'withdraw location':<22}{withdraw.total:>14}{withdraw_s:>10.2f}")
    print(f"{'erase user':<22}{erase.total:>14}{erase_s:>10.2f}")
    print(
        f"rows_per_user={args.rows} withdraw_rows={withdraw.total} withdraw_s={withdraw_s:.2f} "
        f"erase_rows={erase.total} erase_s={erase_s:.2f}"
    )


if __name__ == "__main__":
    main()
