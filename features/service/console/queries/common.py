"""What several pages read: rows as dicts, and how current the summary tables are."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from features.service.console.summary import WATERMARK_NAME
from hearth.db import Conn

Row = dict[str, Any]


def rows(conn: Conn, query: str, params: Mapping[str, object] | Sequence[object] = ()) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def one(conn: Conn, query: str, params: Mapping[str, object] | Sequence[object] = ()) -> Row:
    found = rows(conn, query, params)
    assert len(found) == 1, f"expected one row, got {len(found)}"
    return found[0]


SUMMARY_AS_OF_SQL = f"""
SELECT watermark, refreshed_at, now() AS now
  FROM (SELECT 1) one
  LEFT JOIN console_summary_watermarks ON name = '{WATERMARK_NAME}'
"""


def summary_as_of(conn: Conn) -> Row:
    """``watermark`` (rows ingested before it are in the summaries; None before the first
    refresh), ``refreshed_at`` and the database's ``now``."""
    return one(conn, SUMMARY_AS_OF_SQL)


def as_datetime(value: object) -> datetime:
    assert isinstance(value, datetime)
    return value
