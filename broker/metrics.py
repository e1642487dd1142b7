"""Prometheus metrics (prometheus-client), served at `GET /metrics`.

Two kinds:
- **From the database, at scrape time** (`StoreCollector`): right across any number of
  worker processes, because workers write the store and the API scrapes it. Polls by
  provider and outcome, offers by provider and state (and stale ones), market events by
  type, deliveries by state, provider health, and the work queued: event batches not yet
  processed and deliveries pending (plus the Celery queue's length in Redis in production
  mode).
- **In-process**, observed by the code doing the work: poll duration, event → Slack latency,
  delivery outcomes, API requests, and this process's clock skew from the database
  (`broker_clock_skew_seconds`: measured by each scrape of the API, `/readyz` and each
  sweep of a worker). In embedded mode that is the API's own process; a
  `broker worker` or `broker scheduler` serves its own with `--metrics-port`
  (`BROKER_METRICS_PORT`).
Label values come from fixed sets (providers, event types, states, route templates), never
from user input.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, Executable, Table, and_, case, func, select
from sqlalchemy.exc import SQLAlchemyError

from broker import db
from broker.config import Settings
from broker.domain import Clock, utcnow
from broker.models import AlertDelivery, MarketEvent, PollRun, ProviderState, StoredOffer

log = logging.getLogger(__name__)

POLL_DURATION = Histogram(
    "broker_poll_duration_seconds",
    "One poll of one provider: fetch, normalise and ingest.",
    ["provider"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
DELIVERIES = Counter(
    "broker_deliveries_total",
    "Slack delivery attempts by outcome (sent, retry, failed, cancelled, unconfirmed).",
    ["outcome"],
)
ALERT_LATENCY = Histogram(
    "broker_alert_latency_seconds",
    "From the ingest that wrote the market events to Slack accepting the alert.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
)
HTTP_REQUESTS = Counter(
    "broker_http_requests",
    "API requests by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "broker_http_request_duration_seconds",
    "API request duration by route template.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

CLOCK_SKEW = Gauge(
    "broker_clock_skew_seconds",
    "This process's clock minus the database's, as last measured (positive: ahead). "
    "Beyond BROKER_MAX_CLOCK_SKEW_S the process is reported skewed; the ledger's expiry "
    "follows the database's clock regardless.",
    multiprocess_mode="mostrecent",
)


def observe_clock_skew(engine: Engine, settings: Settings, clock: Clock = utcnow) -> float | None:
    """Measure this process's clock skew from the database (`broker.db.clock_skew_s`), set
    `broker_clock_skew_seconds`, and log an error beyond `settings.max_clock_skew_s`.
    Returns the skew in seconds, or None when the database does not answer."""
    try:
        skew = db.clock_skew_s(engine, clock)
    except SQLAlchemyError as exc:
        log.warning("metrics.clock_skew_unmeasured", extra={"error": type(exc).__name__})
        return None
    CLOCK_SKEW.set(skew)
    if abs(skew) > settings.max_clock_skew_s:
        log.error(
            "clock.skewed this process's clock is %.1f s %s the database's (bound %.0f s)",
            abs(skew),
            "ahead of" if skew > 0 else "behind",
            settings.max_clock_skew_s,
            extra={"clock_skew_s": round(skew, 3)},
        )
    return skew


def observe_delivery(outcome: str, latency_s: float | None) -> None:
    """Count one delivery attempt's outcome; a sent one's latency when known."""
    DELIVERIES.labels(outcome=outcome).inc()
    if outcome == "sent" and latency_s is not None:
        ALERT_LATENCY.observe(max(0.0, latency_s))


#: Methods counted by name; anything else a client sends is counted as `other`.
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_http(method: str, route: str, status: int, duration_s: float) -> None:
    """Count one API request. `route` is the route's template (`/v1/requests/{request_id}`)
    or `unmatched`, never the raw path, so the label set stays bounded."""
    method = method if method in _HTTP_METHODS else "other"
    HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    HTTP_DURATION.labels(route=route).observe(max(0.0, duration_s))


def _t(model: Any) -> Table:
    table: Table = model.__table__
    return table


class StoreCollector(Collector):
    """Metrics read from the store (and Redis) at each scrape. Each query runs on its own
    connection, and one that fails (the database down, a table or column a migration has
    not added yet) drops its families from that scrape, never the scrape."""

    def __init__(self, engine: Engine, settings: Settings, clock: Clock = utcnow) -> None:
        self.engine, self.settings, self.clock = engine, settings, clock

    def _rows(self, stmt: Executable) -> list[tuple[Any, ...]] | None:
        try:
            with self.engine.connect() as conn:
                return [tuple(row) for row in conn.execute(stmt)]
        except SQLAlchemyError as exc:
            log.warning("metrics.query_failed", extra={"error": type(exc).__name__})
            return None

    def collect(self) -> Iterator[Metric]:
        runs, offers, events = _t(PollRun), _t(StoredOffer), _t(MarketEvent)
        states, deliveries = _t(ProviderState), _t(AlertDelivery)

        rows = self._rows(
            select(runs.c.source, runs.c.status, func.count()).group_by(
                runs.c.source, runs.c.status
            )
        )
        if rows is not None:
            polls = CounterMetricFamily(
                "broker_polls",
                "Polls ingested, by source and outcome (ok, degraded, failed).",
                labels=["provider", "outcome"],
            )
            for source, status, n in rows:
                polls.add_metric([source, status], n)
            yield polls

        stale_before = self.clock() - timedelta(minutes=self.settings.stale_after_minutes)
        is_stale = and_(offers.c.active, offers.c.last_seen < stale_before)
        rows = self._rows(
            select(
                offers.c.provider,
                offers.c.active,
                func.count(),
                func.sum(case((is_stale, 1), else_=0)),
            ).group_by(offers.c.provider, offers.c.active)
        )
        if rows is not None:
            current = GaugeMetricFamily(
                "broker_offers",
                "Offers by provider and state (active, or withdrawn and kept for history).",
                labels=["provider", "state"],
            )
            stale = GaugeMetricFamily(
                "broker_offers_stale",
                "Active offers not seen by a poll within BROKER_STALE_AFTER_MINUTES.",
                labels=["provider"],
            )
            for provider, active, n, n_stale in rows:
                current.add_metric([provider, "active" if active else "withdrawn"], n)
                if active:
                    stale.add_metric([provider], n_stale or 0)
            yield current
            yield stale

        rows = self._rows(select(events.c.type, func.count()).group_by(events.c.type))
        if rows is not None:
            by_type = CounterMetricFamily(
                "broker_market_events", "Market events written, by type.", labels=["type"]
            )
            for type_, n in rows:
                by_type.add_metric([type_], n)
            yield by_type

        rows = self._rows(select(states.c.provider, states.c.status, states.c.unrecognised))
        if rows is not None:
            up = GaugeMetricFamily(
                "broker_provider_up",
                "1 when the provider's last poll was ok, 0 when degraded or failed.",
                labels=["provider"],
            )
            unknown = GaugeMetricFamily(
                "broker_unrecognised_offers",
                "Offers of the provider's last successful poll whose region (kind=region) or "
                "GPU name (kind=gpu_name) the tables do not know (kept, with a null location "
                "or model).",
                labels=["provider", "kind"],
            )
            for provider, status, unrecognised in rows:
                up.add_metric([provider], 1 if status == "ok" else 0)
                for kind, part in (("region", "regions"), ("gpu_name", "gpu_names")):
                    n = sum((unrecognised or {}).get(part, {}).values())
                    unknown.add_metric([provider, kind], n)
            yield up
            yield unknown

        queue = GaugeMetricFamily(
            "broker_queue_depth",
            "Work waiting: poll runs whose events are not processed yet (events), deliveries "
            "pending (deliveries), tasks in the Celery queue in Redis (celery).",
            labels=["queue"],
        )
        rows = self._rows(select(deliveries.c.state, func.count()).group_by(deliveries.c.state))
        if rows is not None:
            outbox = GaugeMetricFamily(
                "broker_alert_deliveries",
                "Slack deliveries in the outbox, by state.",
                labels=["state"],
            )
            counts = {state: n for state, n in rows}
            for state, n in sorted(counts.items()):
                outbox.add_metric([state], n)
            yield outbox
            queue.add_metric(["deliveries"], counts.get("pending", 0))
        rows = self._rows(
            select(func.count()).select_from(runs).where(runs.c.processed_at.is_(None))
        )
        if rows is not None:
            queue.add_metric(["events"], rows[0][0])
        depth = self._celery_depth()
        if depth is not None:
            queue.add_metric(["celery"], depth)
        if queue.samples:
            yield queue

    def _celery_depth(self) -> int | None:
        """LLEN of Celery's default queue (a Redis list named `celery`); None in embedded
        mode or when Redis does not answer within half a second."""
        if not self.settings.redis_url:
            return None
        try:
            import redis

            client = redis.Redis.from_url(
                self.settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
            try:
                return int(client.llen("celery"))
            finally:
                client.close()
        except Exception as exc:  # Redis down or misconfigured: no sample, never a failed scrape
            log.warning("metrics.redis_unreachable", extra={"error": type(exc).__name__})
            return None


def render(engine: Engine, settings: Settings, clock: Clock = utcnow) -> tuple[bytes, str]:
    """The exposition text (body, content type): this process's metrics (the default
    registry) plus the store's. The store's collector goes in a registry of its own, built
    per scrape, so any number of apps (tests) may scrape any number of engines."""
    observe_clock_skew(engine, settings, clock)
    store = CollectorRegistry(auto_describe=False)
    store.register(StoreCollector(engine, settings, clock))
    return generate_latest(REGISTRY) + generate_latest(store), CONTENT_TYPE_LATEST
