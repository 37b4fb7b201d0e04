"""Python client of the feature service (sync and async) and its scikit-learn transformer."""

from features.client.base import (
    AsyncHearthClient,
    FeatureCell,
    FeatureVector,
    HearthClient,
    HearthError,
    HistoricalResult,
    HistoricalRow,
    OnlineResult,
    RetryPolicy,
    output_columns,
    parse_historical_line,
)

__all__ = [
    "AsyncHearthClient",
    "FeatureCell",
    "FeatureVector",
    "HearthClient",
    "HearthError",
    "HistoricalResult",
    "HistoricalRow",
    "OnlineResult",
    "RetryPolicy",
    "output_columns",
    "parse_historical_line",
]
