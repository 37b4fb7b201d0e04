"""Scan every table and column of a database for data that must never be stored
(docs/invariants.md#7).

Reusable after any pipeline run::

    findings = scan_for_raw_identifiers(conn, known_ssids=["MyHomeWiFi"])
    assert not findings, findings

Looks, in every text-like column (text, varchar, json/jsonb, bytea decoded as escaped text) of
every base table (hypertable chunks are reached through their hypertable), for:

* raw coordinates — a decimal latitude/longitude pair, or a ``lat``/``lon`` JSON key with a
  decimal value; plus any numeric column *named* like a coordinate;
* MAC-address-like BSSIDs (``aa:bb:cc:dd:ee:ff`` or with dashes);
* known raw SSIDs (the simulator's network names), case-insensitive substring;
* phone numbers — E.164 (``+8613812345678``) or an 11-digit Chinese mobile number standing
  alone, or ``(555) 123-4567``-style North American numbers.

Hashes (hex without separators), geohashes and timestamps match none of these. Also
:func:`find_references` lists every row/column whose text contains given strings (erasure test).
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from hearth.db import Conn

TEXT_TYPES = ("text", "character varying", "character", "json", "jsonb", "bytea", "ARRAY")
COORDINATE_COLUMN_NAMES = ("lat", "lon", "lng", "latitude", "longitude")

PATTERNS: dict[str, str] = {
    "coordinates": (
        r"-?\d{1,2}\.\d{4,}\s*[,; ]\s*-?\d{1,3}\.\d{4,}"
        # a coordinate key with a decimal value, also inside escaped JSON (\"lat\": 31.2)
        r'|(^|[^A-Za-z_])(lat|latitude|lon|lng|longitude)\\?"?\s*[:=]\s*-?\d{1,3}\.\d{3,}'
    ),
    "mac_address": r"(^|[^0-9A-Fa-f])([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}($|[^0-9A-Fa-f])",
    "phone_number": (
        r"(^|[^0-9A-Za-z+])\+[1-9]\d{7,14}($|[^0-9])"
        r"|(^|[^0-9A-Za-z])1[3-9]\d{9}($|[^0-9A-Za-z])"
        r"|\(\d{3}\)\s?\d{3}-\d{4}"
    ),
}


@dataclass(frozen=True)
class Finding:
    table: str
    column: str
    kind: str
    sample: str  # first 80 characters of one offending value

    def __str__(self) -> str:
        return f"{self.table}.{self.column}: {self.kind} in {self.sample!r}"


def _columns(conn: Conn) -> list[tuple[str, str, str]]:
    """(table, column, data type) of every base table outside system/TimescaleDB schemas."""
    rows = conn.execute(
        """
        SELECT c.table_schema || '.' || c.table_name, c.column_name, c.data_type
          FROM information_schema.columns c
          JOIN information_schema.tables t USING (table_schema, table_name)
         WHERE t.table_type = 'BASE TABLE'
           AND c.table_schema NOT IN ('pg_catalog', 'information_schema')
           AND c.table_schema NOT LIKE '\\_timescaledb%%'
           AND c.table_schema NOT LIKE 'timescaledb%%'
         ORDER BY 1, 2
        """
    ).fetchall()
    return [(str(t), str(c), str(d)) for t, c, d in rows]


def _as_text(column: str, data_type: str) -> sql.Composable:
    if data_type == "bytea":
        return sql.SQL("encode({}, 'escape')").format(sql.Identifier(column))
    return sql.SQL("{}::text").format(sql.Identifier(column))


def _table_ident(table: str) -> sql.Identifier:
    schema, name = table.split(".", 1)
    return sql.Identifier(schema, name)


def scan_for_raw_identifiers(
    conn: Conn, known_ssids: list[str] | tuple[str, ...] = ()
) -> list[Finding]:
    findings: list[Finding] = []
    for table, column, data_type in _columns(conn):
        if data_type not in TEXT_TYPES:
            if column.lower() in COORDINATE_COLUMN_NAMES:
                findings.append(Finding(table, column, "coordinate_column", data_type))
            continue
        expr = _as_text(column, data_type)
        for kind, pattern in PATTERNS.items():
            row = conn.execute(
                sql.SQL("SELECT left({e}, 80) FROM {t} WHERE {e} ~ %s LIMIT 1").format(
                    e=expr, t=_table_ident(table)
                ),
                (pattern,),
            ).fetchone()
            if row is not None:
                findings.append(Finding(table, column, kind, str(row[0])))
        for ssid in known_ssids:
            row = conn.execute(
                sql.SQL(
                    "SELECT left({e}, 80) FROM {t} WHERE strpos(lower({e}), %s) > 0 LIMIT 1"
                ).format(e=expr, t=_table_ident(table)),
                (ssid.lower(),),
            ).fetchone()
            if row is not None:
                findings.append(Finding(table, column, "raw_ssid", str(row[0])))
    return findings


def find_references(conn: Conn, needles: list[str]) -> list[Finding]:
    """Every (table, column) whose text contains any of ``needles`` (e.g. an erased user id)."""
    findings: list[Finding] = []
    for table, column, data_type in _columns(conn):
        if data_type not in TEXT_TYPES:
            continue
        expr = _as_text(column, data_type)
        for needle in needles:
            row = conn.execute(
                sql.SQL("SELECT left({e}, 80) FROM {t} WHERE strpos({e}, %s) > 0 LIMIT 1").format(
                    e=expr, t=_table_ident(table)
                ),
                (needle,),
            ).fetchone()
            if row is not None:
                findings.append(Finding(table, column, f"reference:{needle}", str(row[0])))
    return findings
