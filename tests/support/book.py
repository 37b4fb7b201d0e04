"""A small world for the book's tests and benchmarks: a reference model fitted on synthetic
applicants whose features carry real catalogue names, and snapshots of users written straight
into ``feature_snapshots`` (no engine run), with consent."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from features.book.scale import PointsScale
from features.catalogue import DEFINITIONS, FEATURE_SET_VERSION
from features.report.model import ReferenceModel
from features.snapshots.codec import LAYOUT, STORED
from hearth.db import Conn
from hearth.ledger import CURRENT_NOTICE_VERSION
from hearth.signals import PURPOSE_CREDIT_SCORING, Category

# (feature, category, effect on the log-odds of default per unit of the uniform draw)
MODEL_FEATURES: tuple[str, ...] = (
    "overnight_charge_share_30d",  # device_health: protective
    "home_night_share_30d",  # location: protective; missing is risky
    "always_on_uptime_ratio_30d",  # connectivity: protective
    "daily_kwh_cv_30d",  # energy: risky
    "low_battery_day_share_30d",  # device_health: risky
    "radius_of_gyration_km_30d",  # location: risky
)
_EFFECT = np.array([-2.0, -2.5, -1.0, 1.5, 2.0, 0.8])
CATEGORY = {d.name: d.category for d in DEFINITIONS}
ALL_NAMES = [d.name for d in DEFINITIONS]


def draw_features(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, MODEL_FEATURES] values; home_night_share missing for a fifth of the users."""
    x = rng.random((n, len(MODEL_FEATURES)))
    x[:, 5] *= 30.0  # km
    x[rng.random(n) < 0.2, 1] = np.nan
    return x


def fit_model(directory: Path, *, seed: int = 0, n: int = 3000) -> Path:
    """Fit and save the reference model (with a card: categories, reasons, points scale)."""
    rng = np.random.default_rng(seed)
    x = draw_features(rng, n)
    z = x.copy()
    z[:, 5] /= 30.0
    logit = -2.0 + np.nansum(z * _EFFECT, axis=1) + np.where(np.isnan(x[:, 1]), 1.5, 0.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    model = ReferenceModel(list(MODEL_FEATURES), feature_set_version=FEATURE_SET_VERSION)
    model.fit(x, y)
    catalogue = {d.name: d for d in DEFINITIONS}
    card = {
        "points_scale": PointsScale().to_json(),
        "features": [
            {"name": f, "category": catalogue[f].category, "reason": catalogue[f].reason}
            for f in MODEL_FEATURES
        ],
    }
    model.save(directory, card)
    return directory


def packed(values: dict[str, float | None]) -> tuple[bytes, bytes]:
    """A vector of the given values (every other feature null with coverage 0) as
    ``feature_snapshots`` stores it: (vals, covs) in the layout's column order
    (features.snapshots.codec)."""
    vals = np.full(LAYOUT.width, np.nan)
    covs = np.zeros(LAYOUT.width)
    for name, value in values.items():
        if value is not None:
            vals[LAYOUT.index[name]] = value
            covs[LAYOUT.index[name]] = 1.0
    return vals.astype(STORED).tobytes(), covs.astype(STORED).tobytes()


def seed_book(
    conn: Conn,
    users: Sequence[str],
    as_of: datetime,
    granted_at: datetime,
    *,
    seed: int = 1,
    categories: Sequence[str] = tuple(c.value for c in Category),
) -> dict[str, dict[str, float | None]]:
    """Users with consent to ``categories`` from ``granted_at`` and a snapshot at ``as_of``
    (COPY, so thousands are quick); their model feature values by user."""
    rng = np.random.default_rng(seed)
    x = draw_features(rng, len(users))
    values: dict[str, dict[str, float | None]] = {}
    with conn.cursor() as cur:
        with cur.copy("COPY users (user_id) FROM STDIN") as copy:
            for user in users:
                copy.write_row((user,))
        with cur.copy(
            "COPY consent_events (user_id, purpose, category, notice_version, action, at) "
            "FROM STDIN"
        ) as copy:
            for user in users:
                for category in categories:
                    copy.write_row(
                        (
                            user,
                            PURPOSE_CREDIT_SCORING,
                            category,
                            CURRENT_NOTICE_VERSION,
                            "grant",
                            granted_at,
                        )
                    )
        with cur.copy(
            "COPY feature_snapshots (user_id, as_of, feature_set_version, vals, covs) FROM STDIN"
        ) as copy:
            for i, user in enumerate(users):
                row = {
                    f: None if np.isnan(x[i, j]) else float(x[i, j])
                    for j, f in enumerate(MODEL_FEATURES)
                }
                values[user] = row
                copy.write_row((user, as_of, FEATURE_SET_VERSION, *packed(row)))
    return values
