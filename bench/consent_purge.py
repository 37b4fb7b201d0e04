"""Time of a consent withdrawal purge and of an erasure for one large user.

Makes a scratch database from ``hearth_template`` (dropped at the end), loads ``--rows`` raw
readings for one user (a year of hourly location, battery and plug power over several devices)
plus the same number for other users, then times ``withdraw_consent(location)`` and
``erase_user`` (each end to end: ledger change under the consent gate, delete, verification).

    .venv/bin/python bench/consent_purge.py [--rows 300000]

Target (issue 5): a withdrawal purges within 60 s. Last line (bench/_common.py):
``rows_per_user=… withdraw_rows=… withdraw_s=… erase_rows=… erase_s=… load_start=… load_end=…``.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime, timedelta

import psycopg

from bench._common import BASE_URL, Bench, scratch_database
from hearth import admin
from hearth.migrate import migrate

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
    bench = Bench()
    with (
        scratch_database(BASE_URL, prefix="bench_purge") as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
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
    bench.table(
        ["operation", "rows deleted", "seconds"],
        [
            ["withdraw location", withdraw.total, f"{withdraw_s:.2f}"],
            ["erase user", erase.total, f"{erase_s:.2f}"],
        ],
    )
    bench.target("withdrawal purge", withdraw_s, "<=", 60, "s")
    bench.finish(
        rows_per_user=args.rows,
        withdraw_rows=withdraw.total,
        withdraw_s=f"{withdraw_s:.2f}",
        erase_rows=erase.total,
        erase_s=f"{erase_s:.2f}",
    )


if __name__ == "__main__":
    main()
