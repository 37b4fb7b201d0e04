"""Score endpoints (scope ``scores:read``): score users now, and read a user's score trail.

``POST /v1/scores`` scores each (user, as_of) row with the model of ``HEARTH_SCORE_MODEL``
exactly as a batch run does (:mod:`features.book`): the vector at as_of is the latest snapshot
within ``HEARTH_SNAPSHOT_STALE_AFTER_S`` with only the categories consented at as_of
(:mod:`features.book.vectors`), the percentiles come from the latest export's population, and
every score is appended to the score log (on the primary), with the caller's token label, before
the answer is sent. On a replica (``HEARTH_DATABASE_READ_URL``) the reads wait until it has
replayed the primary's position of now, as every read endpoint's do. ``GET
/v1/users/{id}/scores`` reads that log back: the trail for an explanation request or a dispute
(docs/book.md).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from aiohttp import web

from features.book import vectors
from features.book.population import LATEST_SQL, PopulationCache
from features.book.score_log import ONLINE, LogRow, read_scores_async
from features.book.scoring import ScoringModel, log_reasons, reason_codes, score_matrix
from features.catalogue import FEATURE_SET_VERSION
from features.service.auth import CALLER
from features.service.errors import ApiError, read_model
from features.service.handlers.params import as_of_context, path_id
from features.service.models import ScoresRequest
from features.service.state import state_of
from hearth.db import AsyncConn

MAX_BODY_PER_ROW = 256
MIN_MAX_BODY = 64 * 1024
DEFAULT_LIMIT = 100
MAX_LIMIT = 1_000
_POSITIONS = {name: j for j, name in enumerate(vectors.NAMES)}
# The vectors at as_of and which export's population gives the percentiles, in one statement
# (a statement is a round trip and a wake-up of the database: the hot path's largest cost). Both
# bind as_of and version; the model's feature-set version is the service's (``_model``).
_SCORE_SQL = f"""
SELECT v.*, p.as_of, p.n_users, p.computed_at
  FROM ({vectors.USERS_SQL}) v
  LEFT JOIN LATERAL ({LATEST_SQL}) p ON true
 ORDER BY v.user_id
"""


def _json(body: object) -> web.Response:
    return web.Response(text=json.dumps(body), content_type="application/json")


def _model(request: web.Request) -> ScoringModel:
    state = state_of(request)
    model = state.book_model
    if model is None:
        raise ApiError(
            503, "no_model", "no scoring model is configured (HEARTH_SCORE_MODEL is not set)"
        )
    if model.feature_set_version != FEATURE_SET_VERSION:
        raise ApiError(
            503,
            "model_feature_set_mismatch",
            f"the model was trained on feature set {model.feature_set_version}; this service "
            f"computes {FEATURE_SET_VERSION}: train the model again",
        )
    return model


async def _score_group(
    conn: AsyncConn,
    populations: PopulationCache,
    model: ScoringModel,
    as_of: datetime,
    users: list[str],
    max_age: timedelta,
) -> dict[str, dict[str, Any] | str]:
    """user → score fields, or the reason it has none."""
    cur = await conn.execute(_SCORE_SQL, vectors.params(as_of, max_age, users=users))
    rows = await cur.fetchall()
    book = vectors.decode(rows)
    out: dict[str, dict[str, Any] | str] = dict.fromkeys(users, vectors.UNKNOWN_USER)
    scored_rows = [i for i, r in enumerate(book.left_out) if r is None]
    for user, reason in zip(book.user_ids, book.left_out, strict=True):
        if reason is not None:
            out[user] = reason
    if not scored_rows:
        return out
    population = await populations.get(conn, rows[0][-3:], model.feature_set_version)
    columns = [_POSITIONS[f] for f in model.features]
    x = book.values[np.ix_(scored_rows, columns)]
    consented = {c: book.consent_of(c)[scored_rows] for c in vectors.CATEGORIES}
    scored = score_matrix(model, x, model.eligible(consented, len(scored_rows)))
    points = scored.rounded_points()
    for k, i in enumerate(scored_rows):
        snapshot_as_of = book.snapshot_as_of[i]
        assert snapshot_as_of is not None
        out[book.user_ids[i]] = {
            "snapshot_as_of": snapshot_as_of.isoformat(),
            "probability": float(scored.probability[k]),
            "points": int(points[k]),
            "reasons": reason_codes(model, scored, k, population),
        }
    return out


async def post_scores(request: web.Request) -> web.Response:
    state = state_of(request)
    settings = state.settings
    model = _model(request)
    limit = max(MIN_MAX_BODY, settings.online_max_users * MAX_BODY_PER_ROW)
    body = await read_model(request, ScoresRequest, limit, as_of_context(settings))
    if len(body.rows) > settings.online_max_users:
        raise ApiError(
            413,
            "too_many_rows",
            f"{len(body.rows)} rows in one request; at most {settings.online_max_users} "
            "(HEARTH_ONLINE_MAX_USERS)",
        )
    now = datetime.now(UTC)
    rows = [(r.user_id, r.as_of or now) for r in body.rows]
    groups: dict[datetime, list[str]] = defaultdict(list)
    for user, as_of in dict.fromkeys(rows):
        groups[as_of].append(user)
    max_age = timedelta(seconds=settings.snapshot_stale_after_s)
    caller = request.get(CALLER, "unknown")
    results: dict[tuple[str, datetime], dict[str, Any] | str] = {}
    log: list[LogRow] = []
    with state.score_log.coming():  # the log's writer waits (≤ 1 ms) for these scores
        async with state.async_pool.connection() as conn:
            if state.replica_gate is not None:  # a withdrawal made before the request counts
                await state.replica_gate.wait(conn)
            for as_of, users in groups.items():
                for user, result in (
                    await _score_group(conn, state.populations, model, as_of, users, max_age)
                ).items():
                    results[(user, as_of)] = result
                    if isinstance(result, dict):
                        log.append(_log_row(model, user, as_of, result, caller))
        logged = state.score_log.submit(log)
    await logged  # before the answer: no score goes unlogged
    scores, missing = [], []
    for index, (user, as_of) in enumerate(rows):
        result = results[(user, as_of)]
        head = {"row": index, "user_id": user, "as_of": as_of.isoformat()}
        if isinstance(result, str):
            missing.append({**head, "reason": result})
        else:
            scores.append(
                {
                    **head,
                    **result,
                    "model_version": model.model_version,
                    "feature_set_version": model.feature_set_version,
                }
            )
    return _json(
        {
            "model_version": model.model_version,
            "feature_set_version": model.feature_set_version,
            "scores": scores,
            "missing": missing,
        }
    )


def _log_row(
    model: ScoringModel, user: str, as_of: datetime, result: dict[str, Any], caller: str
) -> LogRow:
    return LogRow(
        user_id=user,
        as_of=as_of,
        model_version=model.model_version,
        feature_set_version=model.feature_set_version,
        points=int(result["points"]),
        probability=float(result["probability"]),
        reasons=log_reasons(result["reasons"]),
        requested_by=caller,
        channel=ONLINE,
    )


async def get_user_scores(request: web.Request) -> web.Response:
    state = state_of(request)
    user_id = path_id(request, "user_id")
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(
            400, "invalid_request", "invalid query parameter", [("limit", f"1-{MAX_LIMIT}")]
        )
    async with state.async_pool.connection() as conn:
        cur = await conn.execute("SELECT 1 FROM users WHERE user_id = %s", (user_id,))
        if await cur.fetchone() is None:
            raise ApiError(404, "unknown_user", "no such user")
        scores = await read_scores_async(conn, user_id, int(raw))
    return _json({"user_id": user_id, "scores": scores})
