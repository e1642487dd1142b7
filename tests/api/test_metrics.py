"""`GET /metrics`: no key needed, figures equal to what the store holds, poll duration
observed by a real poll, API requests labelled by route template, and a scrape that
survives an older schema and an unreachable Redis."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select, text
from sqlmodel import col

from broker import db, metrics
from broker.config import Settings
from broker.models import StoredOffer
from broker.polling import ReplaySummary
from tests.api.conftest import Clock, Keys, TestClient, bearer

Sample = tuple[str, dict[str, str], float]


def parse(body: str) -> list[Sample]:
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(body)
        for s in family.samples
    ]


def samples(client: TestClient) -> list[Sample]:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def by_label(found: list[Sample], name: str, label: str, **where: str) -> dict[str, float]:
    return {
        labels[label]: value
        for n, labels, value in found
        if n == name and all(labels.get(k) == v for k, v in where.items())
    }


def total(found: list[Sample], name: str, **where: str) -> float:
    return sum(
        value
        for n, labels, value in found
        if n == name and all(labels.get(k) == v for k, v in where.items())
    )


def test_metrics_match_the_store(
    client: TestClient, engine: Engine, market: ReplaySummary, keys: Keys, clock: Clock
) -> None:
    with engine.connect() as conn:
        offers = Counter[str]()
        withdrawn = Counter[str]()
        for provider, active in conn.execute(text("SELECT provider, active FROM offers")):
            (offers if active else withdrawn)[provider] += 1
        events: dict[str, int] = dict(
            conn.execute(text("SELECT type, count(*) FROM market_events GROUP BY type")).all()
        )
        runs: dict[tuple[str, str], int] = {
            (source, status): n
            for source, status, n in conn.execute(
                text("SELECT source, status, count(*) FROM poll_runs GROUP BY source, status")
            )
        }
        up: dict[str, str] = dict(
            conn.execute(text("SELECT provider, status FROM provider_states")).all()
        )
    assert len(offers) >= 3 and sum(events.values()) > 0 and sum(runs.values()) == 3

    found = samples(client)  # no Authorization header: Prometheus carries none
    assert by_label(found, "broker_offers", "provider", state="active") == {
        p: float(n) for p, n in offers.items()
    }
    assert by_label(found, "broker_offers", "provider", state="withdrawn") == {
        p: float(n) for p, n in withdrawn.items()
    }
    assert by_label(found, "broker_market_events_total", "type") == {
        t: float(n) for t, n in events.items()
    }
    assert total(found, "broker_market_events_total", type="offer_appeared") == float(
        events["offer_appeared"]
    )
    assert {
        (labels["provider"], labels["outcome"]): value
        for n, labels, value in found
        if n == "broker_polls_total"
    } == {key: float(n) for key, n in runs.items()}
    assert total(found, "broker_polls_total", provider="replay") == 3.0
    assert by_label(found, "broker_provider_up", "provider") == {
        p: 1.0 if s == "ok" else 0.0 for p, s in up.items()
    }
    # The fixture ran no event pipeline: every run is unprocessed, the outbox empty.
    assert by_label(found, "broker_queue_depth", "queue") == {"events": 3.0, "deliveries": 0.0}
    assert by_label(found, "broker_alert_deliveries", "state") == {}
    assert "gpb_" not in client.get("/metrics").text


def test_stale_offers_follow_the_clock(
    client: TestClient, engine: Engine, market: ReplaySummary, clock: Clock, settings: Settings
) -> None:
    with engine.connect() as conn:
        seen = conn.execute(
            select(col(StoredOffer.provider), col(StoredOffer.last_seen)).where(
                col(StoredOffer.active)
            )
        ).all()
    active = Counter(provider for provider, _ in seen)

    clock.advance(minutes=settings.stale_after_minutes - 30)  # the T0-1h snapshot is stale
    cutoff = clock() - timedelta(minutes=settings.stale_after_minutes)
    expected = Counter(provider for provider, last_seen in seen if last_seen < cutoff)
    stale = by_label(samples(client), "broker_offers_stale", "provider")
    assert stale == {p: float(expected[p]) for p in active}

    clock.advance(hours=3)  # nothing polled since: every active offer is stale
    stale = by_label(samples(client), "broker_offers_stale", "provider")
    assert stale == {p: float(n) for p, n in active.items()}


def test_a_real_poll_is_timed_and_requests_are_counted_by_template(
    client: TestClient, market: ReplaySummary, keys: Keys
) -> None:
    before = samples(client)
    r = client.post("/v1/providers/replay/poll", headers=bearer(keys.admin))
    assert r.status_code == 200, r.text
    r = client.get("/v1/requests/987654321", headers=bearer(keys.admin))
    assert r.status_code == 404, r.text
    after = samples(client)

    def delta(name: str, **where: str) -> float:
        return total(after, name, **where) - total(before, name, **where)

    assert delta("broker_poll_duration_seconds_count", provider="replay") == 1.0
    assert delta("broker_poll_duration_seconds_sum", provider="replay") > 0.0
    assert delta("broker_polls_total", provider="replay") == 1.0
    template = "/v1/requests/{request_id}"
    assert delta("broker_http_requests_total", route=template, status="404", method="GET") == 1
    assert delta("broker_http_requests_total", route="/metrics", status="200") == 1
    assert delta("broker_http_request_duration_seconds_count", route=template) == 1
    assert "987654321" not in client.get("/metrics").text  # raw paths never become labels


def test_observe_delivery_counts_outcomes_and_sent_latency(client: TestClient) -> None:
    before = samples(client)
    metrics.observe_delivery("sent", 0.3)
    metrics.observe_delivery("retry", None)
    metrics.observe_delivery("sent", None)
    after = samples(client)

    def delta(name: str, **where: str) -> float:
        return total(after, name, **where) - total(before, name, **where)

    assert delta("broker_deliveries_total", outcome="sent") == 2
    assert delta("broker_deliveries_total", outcome="retry") == 1
    assert delta("broker_alert_latency_seconds_count") == 1
    assert delta("broker_alert_latency_seconds_bucket", le="0.25") == 0
    assert delta("broker_alert_latency_seconds_bucket", le="0.5") == 1


def test_scrape_survives_an_older_schema_and_an_unreachable_redis(tmp_path: Path) -> None:
    """Before migration 0005 there is no outbox and no `processed_at`: those families are
    left out, the others still answer; a Redis that refuses connections adds no sample."""
    engine = db.make_engine(url=f"sqlite:///{tmp_path / 'old.db'}")
    try:
        db.upgrade(engine, "0004")
        settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:9/0")
        body, content_type = metrics.render(engine, settings)
    finally:
        engine.dispose()
    assert content_type.startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    assert {"broker_polls", "broker_offers", "broker_market_events"} <= names
    assert "broker_alert_deliveries" not in names
    assert "broker_queue_depth" not in names  # neither events, deliveries nor celery


REDIS_URL = os.environ.get("BROKER_TEST_METRICS_REDIS_URL", "redis://127.0.0.1:6379/12")


@pytest.fixture
def celery_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis not reachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    client.delete("celery")
    yield client
    client.delete("celery")
    client.close()


def test_production_mode_reports_the_celery_queue_length(
    sqlite_engine: Engine, tmp_path: Path, celery_redis: redis.Redis
) -> None:
    celery_redis.rpush("celery", "task-1", "task-2", "task-3")
    settings = Settings(data_dir=tmp_path, redis_url=REDIS_URL)
    body, _ = metrics.render(sqlite_engine, settings)
    assert by_label(parse(body.decode()), "broker_queue_depth", "queue") == {
        "events": 0.0,
        "deliveries": 0.0,
        "celery": 3.0,
    }
