"""The OpenAPI 3.1 document, generated from a route table (passed in) and the pydantic models.

Request bodies use each model's *validation* schema (what the service accepts), responses the
*serialization* schema (what it writes). Error statuses come from the route's declaration plus
the middleware's own: 401/403 on scoped routes. 404/405 for unknown paths/methods are not
per-operation and so are only described in ``info.description``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from features.service.models import ErrorResponse, HistoricalErrorLine
from features.service.routes import Body, Endpoint

REF = "#/components/schemas/{model}"
Refs = Mapping[tuple[Any, JsonSchemaMode], Any]

_ERROR_DESCRIPTIONS = {
    400: "invalid input: error.details lists each field and reason",
    401: "missing or invalid bearer token",
    403: "the token lacks the required scope",
    404: "not found (error.code says what: unknown_user, no_active_consent, ...)",
    409: "conflicts with existing data",
    413: "request body too large, or more rows than HEARTH_ONLINE_MAX_USERS / "
    "HEARTH_HISTORICAL_MAX_ROWS (error.code too_many_rows)",
    503: "a dependency (database, feature engine) is unavailable, or the request's database "
    "work exceeded HEARTH_SERVICE_STATEMENT_TIMEOUT_MS (error.code statement_timeout)",
}

DESCRIPTION = """\
Hearth feature service: point-in-time stability features of consented telemetry.

Authentication: `Authorization: Bearer <token>`; each token has scopes (`features:read`,
`scores:read`, `admin`). Every error is JSON: `{"error": {"code", "message", "details": [{"field",
"reason"}]}}`, including 404 for unknown paths and 405 for unsupported methods.

Rows of users without a vector are never dropped: they carry a `reason` (`unknown_user`,
`no_active_consent`, `no_consent_at_as_of`, `not_computed`, `no_snapshot`).
"""


def _models(endpoints: Sequence[Endpoint]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (ErrorResponse, "serialization"),
        (HistoricalErrorLine, "serialization"),  # the last line of a failed stream
    ]
    for ep in endpoints:
        if ep.request is not None:
            pairs.append((ep.request, "validation"))
        for body in ep.ok.values():
            if body.model is not None:
                pairs.append((body.model, "serialization"))
    return list(dict.fromkeys(pairs))


def _content(body: Body, refs: Refs) -> Any:
    schema = refs[(body.model, "serialization")] if body.model is not None else body.schema
    content = {body.media_type: {"schema": schema}}
    for media_type, alt_schema in body.alternatives:
        content[media_type] = {"schema": alt_schema}
    return content


def _operation(ep: Endpoint, refs: Refs) -> Any:
    error_ref = {"application/json": {"schema": refs[(ErrorResponse, "serialization")]}}
    responses: dict[str, Any] = {
        str(status): {"description": body.description, "content": _content(body, refs)}
        for status, body in ep.ok.items()
    }
    statuses = set(ep.errors) | ({401, 403} if ep.scope else set())
    for status in sorted(statuses):
        responses[str(status)] = {"description": _ERROR_DESCRIPTIONS[status], "content": error_ref}
    op: dict[str, Any] = {
        "operationId": ep.operation_id,
        "summary": ep.summary,
        "tags": [ep.tag],
        "responses": responses,
        "security": [{"bearerAuth": []}] if ep.scope else [],
    }
    if ep.scope:
        op["description"] = f"Requires scope `{ep.scope}`."
        op["x-required-scope"] = ep.scope
    if ep.params:
        op["parameters"] = [
            {
                "name": p.name,
                "in": p.location,
                "required": p.required,
                "description": p.description,
                "schema": p.schema,
            }
            for p in ep.params
        ]
    if ep.request is not None:
        content = {"application/json": {"schema": refs[(ep.request, "validation")]}}
        for media_type, schema in ep.request_alternatives:
            content[media_type] = {"schema": schema}
        op["requestBody"] = {"required": True, "content": content}
    return op


def build_openapi(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """The document of a service that serves ``endpoints`` (the route table)."""
    refs, definitions = models_json_schema(_models(endpoints), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Hearth feature service", "version": "1", "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
