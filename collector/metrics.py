"""Prometheus metrics of one collector replica and the tiny HTTP server exposing them.

Counters are bumped once per committed batch (not per message) so observability costs nothing
on the hot path. ``/healthz`` answers 200 while the broker link is up, the last database write
succeeded and the consent cache is fresh, else 503 with the reason, so an orchestrator can tell
"alive" from "useful".
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from hearth.errors import Unavailable


class CollectorMetrics:
    """All metric families, in a registry of their own (tests may build several)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "hearth_collector_"
        self.received = Counter(p + "messages_received", "MQTT messages received", registry=r)
        self.acked = Counter(p + "messages_acked", "MQTT messages acknowledged", registry=r)
        self.stored = Counter(p + "rows_stored", "Rows inserted", ["table"], registry=r)
        self.duplicates = Counter(
            p + "duplicates_skipped",
            "Rows not inserted because their natural key was already stored (redeliveries)",
            ["table"],
            registry=r,
        )
        self.dead_lettered = Counter(
            p + "dead_lettered", "Messages quarantined in dead_letters", ["reason"], registry=r
        )
        self.dropped_no_consent = Counter(
            p + "readings_dropped_no_consent",
            "Readings dropped because the user has no active consent for the category",
            ["category"],
            registry=r,
        )
        self.refused_at_commit = Counter(
            p + "rows_refused_at_commit",
            "Rows the commit refused: their consent was withdrawn after the pipeline checked it",
            ["table"],
            registry=r,
        )
        self.batch_size = Histogram(
            p + "batch_messages",
            "Messages per committed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.commit_seconds = Histogram(
            p + "commit_seconds",
            "Time to write and commit one batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.in_flight = Gauge(
            p + "in_flight_messages", "Messages received and not yet acknowledged", registry=r
        )
        self.lag = Gauge(
            p + "lag_seconds", "Now minus the event time of the newest stored reading", registry=r
        )
        self.db_errors = Counter(
            p + "db_errors",
            "Failed batch writes (retried, or split to find the messages the database refuses)",
            registry=r,
        )
        self.mqtt_connects = Counter(
            p + "mqtt_connects", "MQTT connections made (the first and every reconnect)", registry=r
        )
        self.consent_cache_age = Gauge(
            p + "consent_cache_age_seconds",
            "Seconds since the registry/consent caches were last confirmed against the database",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


HealthProbe = Callable[[], dict[str, object]]


async def start_http(
    metrics: CollectorMetrics, health: HealthProbe, port: int, host: str = "127.0.0.1"
) -> web.AppRunner:
    """Serve /metrics and /healthz; the caller cleans the runner up at shutdown."""

    async def get_metrics(_: web.Request) -> web.Response:
        resp = web.Response(body=metrics.render())
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    async def get_health(_: web.Request) -> web.Response:
        state = health()
        status = 200 if state.get("ok") else 503
        return web.Response(text=json.dumps(state), status=status, content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", get_health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        # Usually another replica on this machine: each needs its own port (or 0 to disable).
        raise Unavailable(
            f"HEARTH_COLLECTOR_HTTP_PORT: cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    return runner
