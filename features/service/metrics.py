"""Prometheus metrics of the feature service, in a registry of its own (one per app instance,
so tests can run several apps in one process).

Labels carry the route *pattern* (``/v1/users/{user_id}/features``), never a user id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from features.service.errors import Handler

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _CacheCollector(Collector):
    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        hits, misses = self._read()
        family = CounterMetricFamily(
            "hearth_feature_cache_lookups", "Vector cache lookups by result", labels=["result"]
        )
        family.add_metric(["hit"], hits)
        family.add_metric(["miss"], misses)
        yield family


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hearth_http_requests",
            "HTTP requests by route pattern, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hearth_http_request_seconds",
            "HTTP request latency by route pattern",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.historical_rows = Counter(
            "hearth_historical_rows",
            "Historical rows served, by outcome (snapshot, computed or the reason)",
            ["outcome"],
            registry=self.registry,
        )
        self.vectors = Counter(
            "hearth_vectors",
            "Online and single-user vectors served, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self._vector_children: dict[str, Counter] = {}

    def watch_cache(self, read: Callable[[], tuple[int, int]]) -> None:
        self.registry.register(_CacheCollector(read))

    def count_vector(self, outcome: str) -> None:
        child = self._vector_children.get(outcome)
        if child is None:
            child = self._vector_children[outcome] = self.vectors.labels(outcome)
        child.inc()

    def middleware(self) -> Middleware:
        # Label children are looked up once per label set: ``labels()`` takes a lock and
        # validates its arguments on every call, a measurable share of a cached GET.
        latency_children: dict[str, Histogram] = {}
        request_children: dict[tuple[str, str, int], Counter] = {}

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            start = time.perf_counter()
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                elapsed = time.perf_counter() - start
                histogram = latency_children.get(route)
                if histogram is None:
                    histogram = latency_children[route] = self.latency.labels(route)
                histogram.observe(elapsed)
                key = (route, request.method, status)
                counter = request_children.get(key)
                if counter is None:
                    counter = request_children[key] = self.requests.labels(
                        route, request.method, str(status)
                    )
                counter.inc()

        return middleware
