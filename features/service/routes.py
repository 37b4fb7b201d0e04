"""The route table: method, path, handler, scope, request model and documented responses.

One table drives both the aiohttp router (``app.py``) and the OpenAPI document (``openapi.py``),
so the document cannot list an endpoint, scope or status the service does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from features.service.errors import Handler
from features.service.handlers import admin, ops, scores
from features.service.handlers import features as feats
from features.service.models import (
    ConsentGrantRequest,
    ConsentWithdrawRequest,
    CreateUserRequest,
    DefinitionsResponse,
    FeatureVectorOut,
    Health,
    HistoricalRequest,
    HistoricalRowOut,
    OnlineRequest,
    OnlineResponse,
    Readiness,
    RegisterDeviceRequest,
    ScoresRequest,
    ScoresResponse,
    UserScoresResponse,
)
from features.service.tabular import ARROW_STREAM
from hearth.ids import ID_PATTERN

Scope = Literal["features:read", "scores:read", "admin"]


@dataclass(frozen=True)
class Body:
    """A documented response body: a pydantic model, or a raw JSON Schema for free shapes."""

    description: str
    model: type[BaseModel] | None = None
    schema: dict[str, object] | None = None
    media_type: str = "application/json"
    alternatives: tuple[tuple[str, dict[str, object]], ...] = ()  # (media type, schema)


@dataclass(frozen=True)
class Param:
    name: str
    location: Literal["path", "query"]
    schema: dict[str, object]
    description: str
    required: bool = True


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    tag: str
    scope: Scope | None
    ok: dict[int, Body]
    request: type[BaseModel] | None = None
    # Other request media types the endpoint reads besides JSON: (media type, schema).
    request_alternatives: tuple[tuple[str, dict[str, object]], ...] = ()
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = field(default=())


USER_ID_PARAM = Param(
    "user_id", "path", {"type": "string", "pattern": ID_PATTERN}, "pseudonymous id"
)
DEVICE_ID_PARAM = Param("device_id", "path", {"type": "string", "pattern": ID_PATTERN}, "device id")
AS_OF_PARAM = Param(
    "as_of",
    "query",
    {"type": "string", "format": "date-time"},
    "RFC 3339 timestamp with a UTC offset (e.g. 2026-01-01T00:00:00Z), from 2000-01-01 up "
    "to now plus HEARTH_MAX_CLOCK_SKEW_S; omitted = latest snapshot",
    required=False,
)
ANY_OBJECT: dict[str, object] = {"type": "object", "additionalProperties": True}
LIMIT_PARAM = Param(
    "limit",
    "query",
    {"type": "string", "pattern": "^[0-9]+$"},
    "at most this many scores, newest first (1-1000, default 100)",
    required=False,
)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        "/v1/users/{user_id}/features",
        feats.get_user_features,
        "getUserFeatures",
        "One user's feature vector: the snapshot at as_of (or the latest), else computed",
        "features",
        "features:read",
        {200: Body("the vector", FeatureVectorOut)},
        params=(USER_ID_PARAM, AS_OF_PARAM),
        errors=(400, 404, 503),
    ),
    Endpoint(
        "POST",
        "/v1/features/online",
        feats.post_online,
        "getOnlineFeatures",
        "Vectors of up to HEARTH_ONLINE_MAX_USERS (1,000) users; users without one are "
        "listed in missing with a reason",
        "features",
        "features:read",
        {200: Body("vectors and missing users", OnlineResponse)},
        request=OnlineRequest,
        errors=(400, 413, 503),
    ),
    Endpoint(
        "POST",
        "/v1/features/historical",
        feats.post_historical,
        "getHistoricalFeatures",
        "Point-in-time vectors: exactly one output row per input row, in order, streamed. "
        "mode exact: as of t (a snapshot stored for t, else computed); mode snapshot: the "
        "latest snapshot in [t - max_age_s, t] (else reason no_snapshot). features selects "
        "columns. Response by Accept: NDJSON (one HistoricalRow per line), CSV (text/csv) or "
        "an Apache Arrow IPC stream (application/vnd.apache.arrow.stream). The request may be "
        "an Arrow IPC stream too: columns user_id and as_of (timestamp with a zone), the other "
        "fields as JSON under the schema metadata key 'hearth'. An error after the stream "
        "started ends it with one error record instead (NDJSON: a HistoricalErrorLine; CSV: a "
        "row '#error,<code>,<message>'; Arrow: the stream is cut off before its end marker)",
        "features",
        "features:read",
        {
            200: Body(
                "one line per input row",
                HistoricalRowOut,
                media_type="application/x-ndjson",
                alternatives=(
                    ("text/csv", {"type": "string"}),
                    (ARROW_STREAM, {"type": "string", "format": "binary"}),
                ),
            )
        },
        request=HistoricalRequest,
        request_alternatives=((ARROW_STREAM, {"type": "string", "format": "binary"}),),
        errors=(400, 413, 503),
    ),
    Endpoint(
        "GET",
        "/v1/feature-definitions",
        feats.get_definitions,
        "getFeatureDefinitions",
        "The feature catalogue of the current feature-set version",
        "features",
        "features:read",
        {200: Body("definitions", DefinitionsResponse)},
        errors=(503,),
    ),
    Endpoint(
        "POST",
        "/v1/scores",
        scores.post_scores,
        "postScores",
        "Score (user, as_of) rows with the model of HEARTH_SCORE_MODEL: probability, points, "
        "at most 4 reason codes, model and feature-set versions; every score is appended to "
        "the score log. Rows without a score are listed in missing with a reason",
        "scores",
        "scores:read",
        {200: Body("scores and unscored rows", ScoresResponse)},
        request=ScoresRequest,
        errors=(400, 413, 503),
    ),
    Endpoint(
        "GET",
        "/v1/users/{user_id}/scores",
        scores.get_user_scores,
        "getUserScores",
        "The user's scores from the score log, newest first, with their reasons (no feature "
        "values): the trail for an explanation request or a dispute",
        "scores",
        "scores:read",
        {200: Body("the user's scores", UserScoresResponse)},
        params=(USER_ID_PARAM, LIMIT_PARAM),
        errors=(400, 404, 503),
    ),
    Endpoint(
        "POST",
        "/v1/admin/users",
        admin.create_user,
        "createUser",
        "Register a pseudonymous user with an IANA time zone (idempotent: 200 when it "
        "exists with this zone, 409 when with another)",
        "admin",
        "admin",
        {
            201: Body("the user, created", schema=ANY_OBJECT),
            200: Body("the user, existing", schema=ANY_OBJECT),
        },
        request=CreateUserRequest,
        errors=(400, 409, 413),
    ),
    Endpoint(
        "POST",
        "/v1/admin/devices",
        admin.register_device,
        "registerDevice",
        "Register and bind a device; returns its MQTT credentials once. The same user, format "
        "and external id again rotates the device's password (200, `rotated: true`)",
        "admin",
        "admin",
        {
            201: Body("device credentials", schema=ANY_OBJECT),
            200: Body("new credentials of a device registered again", schema=ANY_OBJECT),
        },
        request=RegisterDeviceRequest,
        errors=(400, 404, 409, 413, 503),
    ),
    Endpoint(
        "DELETE",
        "/v1/admin/devices/{device_id}",
        admin.retire_device,
        "retireDevice",
        "Retire a device (its data stays; its credential is destroyed)",
        "admin",
        "admin",
        {200: Body("the retired device", schema=ANY_OBJECT)},
        params=(DEVICE_ID_PARAM,),
        errors=(400, 404),
    ),
    Endpoint(
        "POST",
        "/v1/admin/consent/grant",
        admin.grant_consent,
        "grantConsent",
        "Append a consent grant for one data category",
        "admin",
        "admin",
        {201: Body("the ledger event", schema=ANY_OBJECT)},
        request=ConsentGrantRequest,
        errors=(400, 404, 413),
    ),
    Endpoint(
        "POST",
        "/v1/admin/consent/withdraw",
        admin.withdraw_consent,
        "withdrawConsent",
        "Withdraw consent for one category and purge that category's data",
        "admin",
        "admin",
        {200: Body("what was purged", schema=ANY_OBJECT)},
        request=ConsentWithdrawRequest,
        errors=(400, 404, 413),
    ),
    Endpoint(
        "GET",
        "/v1/admin/users/{user_id}/consent",
        admin.consent_history,
        "getConsentHistory",
        "The user's consent ledger, oldest first",
        "admin",
        "admin",
        {200: Body("ledger events", schema=ANY_OBJECT)},
        params=(USER_ID_PARAM,),
        errors=(400, 404),
    ),
    Endpoint(
        "GET",
        "/v1/admin/users/{user_id}/export",
        admin.export_user,
        "exportUser",
        "Data-subject access: everything stored about the user",
        "admin",
        "admin",
        {200: Body("the export", schema=ANY_OBJECT)},
        params=(USER_ID_PARAM,),
        errors=(400, 404),
    ),
    Endpoint(
        "DELETE",
        "/v1/admin/users/{user_id}",
        admin.erase_user,
        "eraseUser",
        "Erase the user and every row about them",
        "admin",
        "admin",
        {200: Body("what was erased", schema=ANY_OBJECT)},
        params=(USER_ID_PARAM,),
        errors=(400, 404),
    ),
    Endpoint(
        "GET",
        "/healthz",
        ops.healthz,
        "healthz",
        "Liveness",
        "ops",
        None,
        {200: Body("ok", Health)},
    ),
    Endpoint(
        "GET",
        "/readyz",
        ops.readyz,
        "readyz",
        "Readiness: the database answers",
        "ops",
        None,
        {200: Body("ready", Readiness), 503: Body("database unreachable", Readiness)},
    ),
    Endpoint(
        "GET",
        "/metrics",
        ops.metrics,
        "metrics",
        "Prometheus metrics",
        "ops",
        None,
        {200: Body("exposition format", schema={"type": "string"}, media_type="text/plain")},
    ),
    Endpoint(
        "GET",
        "/openapi.json",
        ops.openapi,
        "openapi",
        "This document",
        "ops",
        None,
        {200: Body("OpenAPI 3.1 document", schema=ANY_OBJECT)},
    ),
)
