"""Path and query parameters: the id rule (:mod:`hearth.ids`) and the as_of rule
(:mod:`features.engine.as_of`), turned into 400s that name the parameter."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from features.engine import latest_as_of
from features.service.errors import ApiError, validation_details
from features.service.models import LATEST_AS_OF, AsOf
from hearth.ids import ID_PATTERN, is_valid_id
from hearth.settings import Settings
from hearth.times import FORMAT_HINT

_AS_OF = TypeAdapter(AsOf)


def path_id(request: web.Request, name: str) -> str:
    """The path parameter ``name``, an id (user, device); 400 when it breaks the id rule."""
    value = request.match_info[name]
    if not is_valid_id(value):
        raise ApiError(
            400, "invalid_request", "invalid path parameter", [(name, f"must match {ID_PATTERN}")]
        )
    return value


def as_of_context(settings: Settings) -> dict[str, object]:
    """Validation context of the as_of rule (features.engine.as_of) for a request arriving now."""
    return {LATEST_AS_OF: latest_as_of(settings.max_clock_skew_s)}


def parse_as_of(raw: str | None, settings: Settings) -> datetime | None:
    """RFC 3339 with an offset. A '+' sent unencoded arrives as a space: accept that too."""
    if raw is None:
        return None
    context = as_of_context(settings)
    error: tuple[str, str] = ("as_of", f"must be {FORMAT_HINT}")
    for candidate in (raw, raw.replace(" ", "+")):
        try:
            return _AS_OF.validate_python(candidate, context=context)
        except ValidationError as exc:
            error = validation_details(exc)[0]
    raise ApiError(400, "invalid_request", "invalid query parameter", [("as_of", error[1])])
