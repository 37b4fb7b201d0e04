"""Helpers shared by the adapters: strict JSON parsing into pydantic models and timestamps.

Error mapping (one place, so every format dead-letters alike):
- not UTF-8, not JSON, trailing garbage, or a JSON value that is not an object → ``BAD_JSON``;
- valid JSON of the wrong shape (missing field, wrong type, NaN/Infinity) → ``SCHEMA``;
- a timestamp that cannot be read → ``BAD_TIMESTAMP``.
Details are the first error only, on one line, so dead letters stay small and greppable.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from collector.adapters.base import Reason, Rejected

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

_BAD_JSON_TYPES = frozenset({"json_invalid", "json_type", "model_type", "model_attributes_type"})


def rejection_from(exc: ValidationError) -> Rejected:
    """The :class:`Rejected` for a pydantic error: first error only, one line."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    if not errors:
        return Rejected(Reason.SCHEMA, "invalid")
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])
    message = " ".join(str(first["msg"]).split())
    if first["type"] in _BAD_JSON_TYPES and not first["loc"]:
        return Rejected(Reason.BAD_JSON, message)
    return Rejected(Reason.SCHEMA, f"{loc}: {message}" if loc else message)


def parse_model(model: type[M], payload: bytes) -> M:
    """``model.model_validate_json(payload)`` with errors mapped to :class:`Rejected`.

    Models should set ``allow_inf_nan=False`` so NaN/Infinity literals are SCHEMA errors.
    """
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        raise rejection_from(exc) from None


def parse_with(validator: TypeAdapter[T], payload: bytes) -> T:
    """Like :func:`parse_model` for a TypeAdapter (e.g. a discriminated union of messages).

    A union has no "is an object" check of its own, so a non-object root is caught here first.
    """
    if not payload.lstrip()[:1] == b"{":
        raise Rejected(Reason.BAD_JSON, "payload is not a JSON object")
    try:
        return validator.validate_json(payload)
    except ValidationError as exc:
        raise rejection_from(exc) from None


def parse_rfc3339(text: str, *, require_offset: bool) -> datetime:
    """An ISO 8601 / RFC 3339 date-time; naive allowed only when ``require_offset`` is False."""
    try:
        value = datetime.fromisoformat(text)
    except (ValueError, TypeError):
        raise Rejected(Reason.BAD_TIMESTAMP, f"unreadable time {text[:40]!r}") from None
    if require_offset and value.tzinfo is None:
        raise Rejected(Reason.BAD_TIMESTAMP, f"time without UTC offset {text[:40]!r}")
    return value


def from_epoch_seconds(seconds: float) -> datetime:
    """Aware UTC datetime from epoch seconds; BAD_TIMESTAMP when not representable."""
    try:
        if not math.isfinite(seconds):
            raise ValueError
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise Rejected(Reason.BAD_TIMESTAMP, f"epoch seconds {seconds!r} out of range") from None


def from_epoch_millis(millis: float) -> datetime:
    return from_epoch_seconds(millis / 1000.0)


def decode_text(payload: bytes) -> str:
    """A plain-text payload (e.g. an LWT) as str; BAD_JSON-class rejection when not UTF-8."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(Reason.BAD_JSON, "payload is not UTF-8 text") from None
