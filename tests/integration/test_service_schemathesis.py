"""Property-based run of the live service against its own /openapi.json: generated requests
must never produce a 5xx, an undocumented status, a wrong content type or a response that
violates the documented schema. Bounded (few examples per operation) to stay fast."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from features.service.resolve import engine_gateway
from hearth.settings import load_settings
from tests.support.service import seed_snapshot, seed_user, serve_in_thread

TOKEN = "schemathesis-token-0123456789"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(database_url: str) -> Iterator[schemathesis.BaseSchema]:
    version = engine_gateway.feature_set_version()
    with psycopg.connect(database_url, autocommit=True) as conn:
        seed_user(conn, "st-u1", consent_from=datetime(2025, 1, 1, tzinfo=UTC))
        seed_snapshot(
            conn,
            "st-u1",
            datetime(2026, 1, 1, tzinfo=UTC),
            version,
            {"active_day_ratio_30d": {"value": 1.0, "coverage": 1.0}},
        )
    settings_ = load_settings(
        database_url=database_url, api_tokens=json.dumps({TOKEN: ["features:read", "admin"]})
    )
    with serve_in_thread(settings_) as base_url:
        yield schemathesis.openapi.from_url(base_url + "/openapi.json")


def test_api_conforms_to_openapi(api_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15  # every route (schemathesis may leave out /openapi.json)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=10,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        run()
