"""Templates and number formats of the console.

Jinja2 renders the pages (``templates/``) with autoescaping on: every stored string a page
shows — user and device ids, dead-letter samples — is escaped. Every number goes through
:func:`number`, which prints it for people and tags it for machines: ``data-k`` names the
number (``fleet.groups.hearth.phone.live``), ``data-v`` holds its exact value, so the browser
tests read each number a page shows and compare it with the database.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Literal

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape

Kind = Literal["int", "float", "rate", "share", "time", "seconds"]


def exact(value: object) -> str:
    """The machine form of a number (``data-v``): integers and floats as Python prints them,
    times in UTC ISO 8601, nothing for None."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def human(value: object, kind: Kind = "int") -> str:
    """The form people read."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if kind == "time":
        assert isinstance(value, datetime)
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if kind == "seconds":
        return duration(float(value))  # type: ignore[arg-type]
    number = float(value)  # type: ignore[arg-type]
    if kind == "int":
        return f"{int(number):,}"
    if kind == "share":
        return f"{number * 100:.1f} %"
    if kind == "rate":
        return f"{number:,.2f}"
    return f"{number:,.3f}"


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``, ``2.1 d``."""
    s = abs(seconds)
    sign = "-" if seconds < 0 else ""
    if s < 90:
        return f"{sign}{s:.0f} s"
    if s < 90 * 60:
        return f"{sign}{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{sign}{s / 3600:.1f} h"
    return f"{sign}{s / 86400:.1f} d"


def number(value: object, key: str, kind: Kind = "int") -> Markup:
    """One number on a page: ``<span class="n" data-k=… data-v=…>1,234</span>``."""
    return Markup('<span class="n {}" data-k="{}" data-v="{}">{}</span>').format(
        kind, key, exact(value), human(value, kind)
    )


def key_part(text: object) -> str:
    """A stored name made safe as one dot-separated part of a ``data-k`` key."""
    return "".join(c if c.isalnum() or c in "_-:" else "_" for c in str(text)) or "_"


_ENV = Environment(
    loader=PackageLoader("features.service.console", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.globals.update(n=number, human=human, exact=exact, key=key_part, duration=duration)
_ENV.filters.update(human=human, exact=exact, key=key_part)


def render(template: str, **context: object) -> str:
    return _ENV.get_template(template).render(**context)


def escape_text(text: str) -> Markup:
    return escape(text)
