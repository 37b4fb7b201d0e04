"""The Python client (sync and async) and the scikit-learn transformer, end to end against a
running service (``python -m features serve`` as a subprocess)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import aiohttp
import numpy as np
import pandas as pd
import psycopg
import pytest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from features.catalogue import DEFINITIONS
from features.client import AsyncHearthClient, HearthClient, HearthError, RetryPolicy
from features.client.transformer import HearthFeatures
from features.service.resolve import engine_gateway
from tests.support.service import seed_snapshot, seed_user, serve_subprocess

TOKEN = "client-token-0123456789"
AS_OF = datetime(2026, 2, 1, tzinfo=UTC)
F_A, F_B = "active_day_ratio_30d", "longest_gap_days_30d"  # two features of the real set
FRAME_COLUMNS = ["user_id", "as_of", "reason", "source", "computed_at", "snapshot_as_of"]
NAMES = [F_A, F_B]


def _vector(i: int) -> dict[str, dict[str, float | None]]:
    return {
        F_A: {"value": float(i), "coverage": 1.0},
        F_B: {"value": None if i % 2 else i / 10, "coverage": 0.5},
    }


@pytest.fixture(scope="module")
def service(database_url: str) -> Iterator[tuple[str, str]]:
    """(base URL, feature-set version) of a running service with 20 seeded users."""
    tokens = {TOKEN: ["features:read"]}
    version = engine_gateway.feature_set_version()
    with psycopg.connect(database_url, autocommit=True) as conn:
        for i in range(20):
            seed_user(conn, f"cl-{i}", consent_from=datetime(2025, 1, 1, tzinfo=UTC))
            seed_snapshot(conn, f"cl-{i}", AS_OF, version, _vector(i))
    with serve_subprocess(database_url, tokens) as url:
        yield url, version


def test_sync_client(service: tuple[str, str]) -> None:
    url, version = service
    client = HearthClient(url, TOKEN)
    vector = client.get_features("cl-3", AS_OF)
    assert vector.feature_set_version == version and vector.as_of == AS_OF
    assert vector.features[F_A].value == 3.0 and vector.features[F_B].value is None
    online = client.online(["cl-1", "cl-2", "ghost"], AS_OF)
    assert [v.user_id for v in online.vectors] == ["cl-1", "cl-2"]
    assert online.missing == {"ghost": "unknown_user"}
    frame = online.to_frame(include_coverage=True)
    assert frame.loc["cl-2", F_B] == pytest.approx(0.2)
    assert frame.loc["cl-2", f"{F_B}__coverage"] == 0.5
    with pytest.raises(HearthError) as err:
        client.get_features("ghost")
    assert err.value.status == 404 and err.value.code == "unknown_user"
    with pytest.raises(HearthError) as err:
        HearthClient(url, "wrong-token-0123456789").get_features("cl-1")
    assert err.value.status == 401


def test_sync_historical_to_frame(service: tuple[str, str]) -> None:
    url, version = service
    rows = [(f"cl-{i % 20}", AS_OF) for i in range(50)] + [("ghost", AS_OF)]
    client = HearthClient(url, TOKEN)
    frame = client.historical(rows, features=NAMES)
    assert len(frame) == 51 and list(frame["user_id"]) == [u for u, _ in rows]
    assert list(frame.columns) == [*FRAME_COLUMNS, *NAMES]
    assert frame.attrs["feature_set_version"] == version
    assert frame[F_A].iloc[:50].tolist() == [float(i % 20) for i in range(50)]
    assert frame["reason"].iloc[50] == "unknown_user" and math.isnan(frame[F_A].iloc[50])
    assert frame["source"].iloc[0] == "snapshot" and frame["as_of"].iloc[0] == AS_OF
    # A DataFrame in, snapshot mode: a snapshot a day old serves as_of + 1 day, not + 2 days.
    later = pd.DataFrame(
        {
            "user_id": ["cl-3", "cl-3"],
            "as_of": [AS_OF + timedelta(days=1), AS_OF + timedelta(days=2)],
        }
    )
    snap = client.historical(later, mode="snapshot", include_coverage=True)
    assert snap[F_A].iloc[0] == 3.0 and snap[f"{F_A}__coverage"].iloc[0] == 1.0
    assert snap["snapshot_as_of"].iloc[0] == AS_OF
    assert snap["reason"].iloc[1] == "no_snapshot" and math.isnan(snap[F_A].iloc[1])
    assert len(snap.columns) == len(FRAME_COLUMNS) + 2 * len(DEFINITIONS)
    typed = client.historical_rows(rows[:2], features=[F_B])
    assert [set(r.features or {}) for r in typed.rows] == [{F_B}, {F_B}]
    with pytest.raises(ValueError, match="time zone"):
        client.historical([("cl-1", datetime(2026, 2, 1))])


def test_retries_then_fails_on_connection_error() -> None:
    client = HearthClient(
        "http://127.0.0.1:9", TOKEN, retry=RetryPolicy(attempts=3, backoff_s=0.01)
    )
    with pytest.raises(ConnectionError):
        client.get_features("cl-1")


async def test_async_client(service: tuple[str, str]) -> None:
    url, _ = service
    async with AsyncHearthClient(url, TOKEN) as client:
        vector = await client.get_features("cl-4", AS_OF)
        assert vector.features[F_A].value == 4.0
        online = await client.online(["cl-5", "ghost"])
        assert [v.user_id for v in online.vectors] == ["cl-5"] and "ghost" in online.missing
        frame = await client.historical([("cl-6", AS_OF), ("cl-7", AS_OF)], features=[F_A])
        assert frame[F_A].tolist() == [6.0, 7.0]
        result = await client.historical_rows([("cl-6", AS_OF), ("cl-7", AS_OF)])
        assert [r.features[F_A].value for r in result.rows if r.features] == [6.0, 7.0]
        online = await client.online(["cl-5"], features=[F_B])
        assert set(online.vectors[0].features) == {F_B}
        assert [d["name"] for d in await client.feature_definitions()]


async def test_async_client_on_the_callers_session_sends_its_token(
    service: tuple[str, str],
) -> None:
    url, _ = service
    async with aiohttp.ClientSession() as session:
        client = AsyncHearthClient(url, TOKEN, session=session)
        vector = await client.get_features("cl-4", AS_OF)
        assert vector.features["f_a"].value == 4.0
        await client.close()
        assert not session.closed  # the caller's session stays the caller's


def test_transformer_in_pipeline(service: tuple[str, str]) -> None:
    url, _ = service
    X = pd.DataFrame({"user_id": [f"cl-{i}" for i in range(20)], "as_of": [AS_OF] * 20})
    y = np.array([i % 2 for i in range(20)])
    hearth = HearthFeatures(url, TOKEN, features=NAMES, include_coverage=True)
    matrix = hearth.fit(X).transform(X)
    assert matrix.shape == (20, 4) and np.isnan(matrix[1, 2]) and matrix[3, 0] == 3.0
    assert list(hearth.get_feature_names_out()) == [
        F_A,
        f"{F_A}__coverage",
        F_B,
        f"{F_B}__coverage",
    ]
    pipe = Pipeline(
        [
            ("hearth", HearthFeatures(url, TOKEN, features=NAMES)),
            ("impute", SimpleImputer(keep_empty_features=True)),
            ("model", LogisticRegression()),
        ]
    )
    pipe.fit(X, y)
    assert pipe.predict_proba(X).shape == (20, 2)
    assert list(pipe[:-1].get_feature_names_out()) == NAMES
