"""Request and response shapes of the feature service, as pydantic v2 models.

They are the single source of truth for three things: input validation (strict, unknown fields
rejected, 400 with the field and the reason), the OpenAPI document (``openapi.py`` renders their
JSON Schemas) and the documentation of what the handlers write.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from features.engine import as_of_problem
from hearth.ids import ID_PATTERN
from hearth.signals import Category
from hearth.vectors import CellReason

UserId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


def _to_utc(value: datetime) -> datetime:
    """Normalise to UTC: PostgreSQL rejects some offsets Python accepts (e.g. +23:59)."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("instant out of range") from None


# RFC 3339 with an offset, normalised to UTC.
Instant = Annotated[AwareDatetime, AfterValidator(_to_utc)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200)]

LATEST_AS_OF = "latest_as_of"  # validation context key: the latest as_of accepted now


def _check_as_of(value: datetime, info: ValidationInfo) -> datetime:
    """features.engine.as_of's rule; the handler passes now + skew in the validation context."""
    value = _to_utc(value)
    latest = (info.context or {}).get(LATEST_AS_OF)
    problem = as_of_problem(value, latest or datetime.max.replace(tzinfo=UTC))
    if problem is not None:
        raise PydanticCustomError("as_of_range", problem)
    return value


# An as_of: an Instant from 2000-01-01 up to now plus the clock-skew allowance.
AsOf = Annotated[AwareDatetime, AfterValidator(_check_as_of)]

# Defaults of HEARTH_ONLINE_MAX_USERS / HEARTH_HISTORICAL_MAX_ROWS (413 past them).
MAX_ONLINE_USERS = 1_000
MAX_HISTORICAL_ROWS = 100_000

# Why a requested vector is not returned. Rows are never dropped: they carry one of these.
Reason = Literal[
    "unknown_user",  # no such user (never registered, or erased)
    "no_active_consent",  # the user has no active credit-scoring consent now (e.g. withdrawn)
    "no_consent_at_as_of",  # the user had no active consent at the requested as_of
    "not_computed",  # no snapshot and the engine produced no vector
    "no_snapshot",  # mode snapshot: no snapshot with as_of in [t - max_age, t]
]
Mode = Literal["exact", "snapshot"]
DEFAULT_MAX_AGE_S = 86_400  # mode snapshot: a snapshot at most a day older than t
MAX_MAX_AGE_S = 366 * 86_400
MAX_SELECTED_FEATURES = 1_000


class _Input(BaseModel):
    """Strict input: no coercion of types, unknown fields are an error."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _Output(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- features -------------------------------------------------------------------------------


class FeatureCell(_Output):
    value: float | None = Field(description="null when the feature is undefined (see coverage)")
    coverage: float = Field(ge=0, le=1, description="share of the window with data behind value")
    reason: CellReason | None = Field(
        default=None,
        description="present when value is null because of consent: the category was not "
        "consented at as_of, or was withdrawn since (its data is purged)",
    )


class FeatureVectorOut(_Output):
    user_id: str
    as_of: datetime
    feature_set_version: str
    computed_at: datetime
    stale: bool = Field(
        description="latest snapshot served and its as_of is older than the configured age"
    )
    source: Literal["snapshot", "computed"]
    features: dict[str, FeatureCell]


_AS_OF_DESCRIPTION = (
    "RFC 3339 timestamp with a UTC offset (e.g. 2026-01-01T00:00:00Z), from 2000-01-01 up to "
    "now plus HEARTH_MAX_CLOCK_SKEW_S"
)


FeatureName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
_FEATURES_DESCRIPTION = (
    "feature names to return, in this order (GET /v1/feature-definitions lists them); "
    "omitted = every feature of the set. An unknown name is a 400"
)


class OnlineRequest(_Input):
    user_ids: list[UserId] = Field(
        min_length=1,
        description=f"at most HEARTH_ONLINE_MAX_USERS (default {MAX_ONLINE_USERS:,}); more: 413",
    )
    as_of: AsOf | None = Field(
        default=None, description=_AS_OF_DESCRIPTION + "; omitted = latest snapshot"
    )
    features: list[FeatureName] | None = Field(
        default=None, min_length=1, max_length=MAX_SELECTED_FEATURES,
        description=_FEATURES_DESCRIPTION,
    )  # fmt: skip


class MissingUser(_Output):
    user_id: str
    reason: Reason


class OnlineResponse(_Output):
    feature_set_version: str
    vectors: list[FeatureVectorOut]
    missing: list[MissingUser]


class HistoricalRowIn(_Input):
    user_id: UserId
    as_of: AsOf = Field(description=_AS_OF_DESCRIPTION)


class HistoricalOptions(_Input):
    """How the rows of a historical request are answered: the JSON body's fields beside
    ``rows``, and the ``hearth`` metadata (JSON) of an Arrow request body's schema."""

    mode: Mode = Field(
        default="exact",
        description="exact: the vector as of t (a snapshot stored for exactly t, else computed "
        "from the rollups); snapshot: the latest stored snapshot with as_of in "
        "[t - max_age_s, t], never later than t and never computed (none: reason no_snapshot)",
    )
    max_age_s: int = Field(
        default=DEFAULT_MAX_AGE_S,
        ge=1,
        le=MAX_MAX_AGE_S,
        description="mode snapshot: how much older than t a snapshot may be (seconds)",
    )
    features: list[FeatureName] | None = Field(
        default=None, min_length=1, max_length=MAX_SELECTED_FEATURES,
        description=_FEATURES_DESCRIPTION,
    )  # fmt: skip
    include_coverage: bool = Field(
        default=True,
        description="CSV and Arrow: a <name>__coverage column after each feature's column "
        "(NDJSON cells always carry their coverage)",
    )


class HistoricalRequest(HistoricalOptions):
    rows: list[HistoricalRowIn] = Field(
        min_length=1,
        description=f"at most HEARTH_HISTORICAL_MAX_ROWS (default {MAX_HISTORICAL_ROWS:,}); "
        "more: 413",
    )


class HistoricalRowOut(_Output):
    """One NDJSON line; exactly one per input row, in input order (``row`` is its index)."""

    row: int = Field(ge=0)
    user_id: str
    as_of: datetime = Field(description="the row's t, as requested")
    feature_set_version: str
    reason: Reason | None = None
    source: Literal["snapshot", "computed"] | None = None
    computed_at: datetime | None = None
    snapshot_as_of: datetime | None = Field(
        default=None, description="the as_of of the snapshot served (source snapshot)"
    )
    features: dict[str, FeatureCell] | None = None


class FeatureDefinitionOut(_Output):
    model_config = ConfigDict(frozen=True, extra="allow")

    name: str
    family: str
    version: str | int
    description: str
    unit: str
    window_days: int | None
    category: str
    null_semantics: str
    formula: str
    citation: str | None = None


class DefinitionsResponse(_Output):
    feature_set_version: str
    definitions: list[FeatureDefinitionOut]


# --- scores ---------------------------------------------------------------------------------

# Why a requested row gets no score (features.book.vectors).
ScoreMissingReason = Literal[
    "unknown_user",  # no such user (never registered, or erased)
    "no_consent",  # no active credit-scoring consent at as_of
    "no_snapshot",  # no snapshot within HEARTH_SNAPSHOT_STALE_AFTER_S before as_of
]


class ScoreRowIn(_Input):
    user_id: UserId
    as_of: AsOf | None = Field(default=None, description=_AS_OF_DESCRIPTION + "; omitted = now")


class ScoresRequest(_Input):
    rows: list[ScoreRowIn] = Field(
        min_length=1,
        description=f"at most HEARTH_ONLINE_MAX_USERS (default {MAX_ONLINE_USERS:,}); more: 413",
    )


class ReasonCodeOut(_Output):
    feature: str
    value: float | None = Field(description="the applicant's value; null when not reported")
    percentile: int | None = Field(
        ge=0,
        le=100,
        description="the value's percentile in the population of the latest export at or "
        "before as_of; null without one, or when the value is null",
    )
    points: float = Field(
        le=0, description="points this feature took off, against the average applicant"
    )
    text: str


class ScoreOut(_Output):
    row: int = Field(ge=0, description="index of the request row")
    user_id: str
    as_of: datetime
    snapshot_as_of: datetime = Field(description="as_of of the snapshot scored")
    probability: float = Field(ge=0, le=1, description="probability of default")
    points: int
    reasons: list[ReasonCodeOut] = Field(
        max_length=4, description="at most 4: the features that lowered the points most"
    )
    model_version: str
    feature_set_version: str


class UnscoredRow(_Output):
    row: int = Field(ge=0)
    user_id: str
    as_of: datetime
    reason: ScoreMissingReason


class ScoresResponse(_Output):
    model_version: str
    feature_set_version: str
    scores: list[ScoreOut]
    missing: list[UnscoredRow]


class LoggedReason(_Output):
    feature: str
    text: str
    points: float


class LoggedScore(_Output):
    scored_at: datetime
    as_of: datetime
    model_version: str
    feature_set_version: str
    points: int
    probability: float
    reasons: list[LoggedReason]
    requested_by: str
    channel: Literal["batch", "online"]
    batch_id: str | None


class UserScoresResponse(_Output):
    user_id: str
    scores: list[LoggedScore] = Field(description="newest first")


# --- admin ----------------------------------------------------------------------------------


class CreateUserRequest(_Input):
    user_id: UserId
    tz: ShortText = Field(default="UTC", description="IANA time zone, e.g. Europe/Berlin")


class RegisterDeviceRequest(_Input):
    user_id: UserId
    kind: ShortText
    format: ShortText
    external_id: ShortText
    tz: ShortText | None = None
    user_tz: ShortText | None = Field(
        default=None, description="create the user with this zone if it does not exist yet"
    )


class ConsentGrantRequest(_Input):
    user_id: UserId
    category: Category
    purpose: Literal["credit_scoring"] = "credit_scoring"
    notice_version: ShortText | None = Field(default=None, description="default: current notice")
    at: Instant | None = None
    evidence: Annotated[str, StringConstraints(max_length=10_000)] | None = None


class ConsentWithdrawRequest(_Input):
    user_id: UserId
    category: Category
    purpose: Literal["credit_scoring"] = "credit_scoring"
    at: Instant | None = None


# --- operations and errors ------------------------------------------------------------------


class Health(_Output):
    status: Literal["ok"]


class Readiness(_Output):
    status: Literal["ready", "unavailable"]
    database: bool


class ErrorDetail(_Output):
    field: str
    reason: str


class ErrorBody(_Output):
    code: str
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(_Output):
    error: ErrorBody


class HistoricalErrorLine(_Output):
    """The last line of a stream that failed after it started (rows before it stand; the rows
    after it are missing, so the line count no longer matches the input)."""

    error: ErrorBody
