"""Python client of the feature service: :class:`HearthClient` (blocking, standard library) and
:class:`AsyncHearthClient` (aiohttp), with typed results and ``to_frame()`` for pandas; the
scikit-learn transformer is :mod:`features.client.transformer`.

Errors the caller must fix raise :class:`HearthError` with the service's code, message and
details.
"""

from features.client.aio import AsyncHearthClient
from features.client.base import RetryPolicy
from features.client.results import (
    HearthError,
    HistoricalResult,
    HistoricalRow,
    OnlineResult,
    ServedCell,
    ServedVector,
    output_columns,
    parse_historical_line,
)
from features.client.sync import HearthClient

__all__ = [
    "AsyncHearthClient",
    "HearthClient",
    "HearthError",
    "HistoricalResult",
    "HistoricalRow",
    "OnlineResult",
    "RetryPolicy",
    "ServedCell",
    "ServedVector",
    "output_columns",
    "parse_historical_line",
]
