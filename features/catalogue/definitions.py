"""The feature catalogue as data: what the API lists, what snapshots are versioned by.

Each library function (features/catalogue/library/*) carries its metadata in the ``@feature``
decorator and its formula in its docstring; every window it supports becomes one definition
named ``<name>_<window>d`` (:func:`feature_name`; tenure has no window).
``FEATURE_SET_VERSION`` is a content hash of all definitions, so any change of a formula,
window or category yields a new version and old snapshots stay distinguishable. A definition's
``reason`` (the text of its reason codes) is presentation, not computation: it is left out of
the hash, and so is the decorator's source (everything else it says is hashed as a field).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict, dataclass

from psycopg.types.json import Jsonb

from features.catalogue.library import SPECS, FeatureSpec
from hearth.db import Conn


@dataclass(frozen=True)
class FeatureDefinition:
    name: str
    family: str
    version: str  # content hash of this definition (and of its function's source)
    description: str
    unit: str
    window_days: int | None  # None: all history up to T
    category: str
    null_semantics: str
    formula: str
    citation: str
    reason: str  # what it measures, for an applicant: the text of its reason codes

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def feature_name(base_name: str, window_days: int) -> str:
    """A definition's name: ``<base>_<w>d``, or the bare base name for window 0 (all history
    up to T, e.g. tenure)."""
    return base_name if window_days == 0 else f"{base_name}_{window_days}d"


def _docstring_parts(spec: FeatureSpec) -> tuple[str, str]:
    doc = inspect.getdoc(spec.fn) or ""
    description = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    formula_lines: list[str] = []
    collecting = False
    for line in doc.splitlines():
        if line.startswith("Formula:"):
            collecting = True
            formula_lines.append(line.removeprefix("Formula:").strip())
        elif collecting and line.strip() and not line.startswith("Window:"):
            formula_lines.append(line.strip())
        elif collecting:
            break
    return description, " ".join(formula_lines)


def _function_source(spec: FeatureSpec) -> str:
    """The feature function's source from its ``def`` on: the decorator's arguments are
    hashed as the definition's fields, and its ``reason`` text not at all."""
    lines = inspect.getsource(spec.fn).splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("def "))
    return "".join(lines[start:])


def _definitions() -> tuple[FeatureDefinition, ...]:
    out = []
    for spec in SPECS:
        description, formula = _docstring_parts(spec)
        source_hash = hashlib.sha256(_function_source(spec).encode()).hexdigest()[:12]
        for window in spec.windows:
            body = {
                "name": feature_name(spec.base_name, window),
                "family": spec.family,
                "description": description,
                "unit": spec.unit,
                "window_days": window or None,
                "category": str(spec.category),
                "null_semantics": spec.null_semantics,
                "formula": formula,
                "citation": spec.citation,
                "source": source_hash,
            }
            version = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
            del body["source"]
            out.append(
                FeatureDefinition(version=version, reason=spec.reason, **body)  # type: ignore[arg-type]
            )
    names = [d.name for d in out]
    if len(names) != len(set(names)):
        raise RuntimeError(f"duplicate feature names: {sorted(names)}")
    return tuple(out)


DEFINITIONS: tuple[FeatureDefinition, ...] = _definitions()
FEATURE_SET_VERSION: str = (
    "fs-"
    + hashlib.sha256(json.dumps([[d.name, d.version] for d in DEFINITIONS]).encode()).hexdigest()[
        :12
    ]
)


def sync_definitions(conn: Conn) -> int:
    """Write the current feature set to ``feature_definitions`` (idempotent); rows written."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO feature_definitions
                   (name, feature_set_version, family, category, definition)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (feature_set_version, name) DO UPDATE
                  SET family = excluded.family, category = excluded.category,
                      definition = excluded.definition""",
            [
                (d.name, FEATURE_SET_VERSION, d.family, d.category, Jsonb(d.to_json()))
                for d in DEFINITIONS
            ],
        )
    return len(DEFINITIONS)
