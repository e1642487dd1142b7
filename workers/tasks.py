"""Celery tasks: thin wrappers over the plain functions of `broker/`.

    poll(provider, fence) ──ingest──▶ process_events(first_id, last_id) ──▶ deliver(delivery_id)
    sweep() (every `alerts.sweep_interval_s`, from the scheduler): re-queues what a lost task
    left (unprocessed event batches, due deliveries) and expires ended reservations.

A poll the scheduler enqueued carries the fence of the leader lease it was enqueued under;
one whose fence is no longer the latest (its leader was paused past its lease and replaced)
is refused (`workers.fencing`). A poll without a fence (asked for by hand) is run.

Each builds what it needs from Settings, calls one function of `broker`, and enqueues the
next step. All are idempotent (acks_late: a task may run twice after a worker dies):
re-polling is a diff, rescoring an event range twice writes no second `best_option_changed`
(the best is compared with the stored one), a delivery already sent is never sent again.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import cache
from typing import Any

import redis
from sqlalchemy import Engine, select

from broker import db
from broker.config import Settings, get_settings
from broker.domain import utcnow
from broker.models import ProviderState
from broker.pipeline import deliver_pending, process_events
from broker.polling import poll_source
from broker.sources import build_sources
from workers.celery_app import app
from workers.fencing import current_fence
from workers.housekeeping import tidy_store

log = logging.getLogger(__name__)


@cache
def _runtime() -> tuple[Settings, Engine]:
    settings = get_settings()
    return settings, db.make_engine(url=settings.effective_database_url)


def poll_due(engine: Engine, settings: Settings, provider: str) -> bool:
    """False while a degraded provider is backing off: interval × 2^failures (bounded)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(
                ProviderState.__table__.c.consecutive_failures,  # type: ignore[attr-defined]
                ProviderState.__table__.c.last_poll_at,  # type: ignore[attr-defined]
            ).where(ProviderState.__table__.c.provider == provider)  # type: ignore[attr-defined]
        ).first()
    if row is None or not row.consecutive_failures or row.last_poll_at is None:
        return True
    wait = min(
        settings.poll_interval_for(provider) * 2 ** min(row.consecutive_failures, 16),
        settings.max_poll_backoff_s,
    )
    return bool(utcnow() - row.last_poll_at >= timedelta(seconds=wait))


@cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def stale_fence(settings: Settings, fence: int) -> int | None:
    """None when `fence` is the latest lease's; else the latest fence (0: none), meaning
    the poll comes from a scheduler that lost its lease.

    Raises:
        redis.exceptions.RedisError: Redis does not answer (the task is delivered again).
    """
    url = settings.redis_url or str(app.conf.broker_url)
    current = current_fence(_redis(url))
    return None if current == fence else (current or 0)


@app.task(name="broker.poll", bind=True, max_retries=3, default_retry_delay=30)
def poll(self: Any, provider: str, force: bool = False, fence: int | None = None) -> dict[str, Any]:
    """Poll one provider, ingest, and enqueue the processing of the events it wrote.
    `fence`: the scheduler's lease token; a stale one is refused, nothing polled."""
    settings, engine = _runtime()
    if fence is not None:
        latest = stale_fence(settings, fence)
        if latest is not None:
            log.warning(
                "tasks.poll_stale_fence %s: fence %d, latest %d; refused",
                provider,
                fence,
                latest,
                extra={"provider": provider, "fence": fence, "latest_fence": latest},
            )
            return {"provider": provider, "skipped": f"stale scheduler fence {fence}"}
    if not force and not poll_due(engine, settings, provider):
        log.info("tasks.poll_backing_off %s", provider)
        return {"provider": provider, "skipped": "backing off while degraded"}
    sources = build_sources(settings, utcnow)
    source = sources.enabled.get(provider)
    if source is None:
        reason = sources.disabled.get(provider, "unknown provider")
        log.warning("tasks.poll_disabled %s: %s", provider, reason)
        return {"provider": provider, "skipped": reason}
    outcome = poll_source(engine, source)
    if outcome.first_event_id is not None and outcome.last_event_id is not None:
        process.delay(outcome.first_event_id, outcome.last_event_id)
    return {
        "provider": provider,
        "status": str(outcome.status),
        "offers": outcome.offers_seen,
        "events": dict(outcome.events),
    }


@app.task(name="broker.process_events", bind=True, max_retries=5, default_retry_delay=10)
def process(self: Any, first_id: int, last_id: int) -> dict[str, Any]:
    """Rescore the requests and match the subscriptions these market events touch; enqueue
    the deliveries they wrote (the outbox rows are committed before this returns)."""
    settings, engine = _runtime()
    try:
        out = process_events(engine, first_id, last_id, settings, utcnow)
    except Exception as exc:  # a DB hiccup: retry with backoff, the work is idempotent
        raise self.retry(exc=exc, countdown=min(300, 10 * 2**self.request.retries)) from exc
    for delivery_id in out.deliveries:
        deliver.delay(delivery_id)
    return {"rescored_changed": out.best_changed, "deliveries": len(out.deliveries)}


@app.task(name="broker.deliver", bind=True, max_retries=None)
def deliver(self: Any, delivery_id: int) -> dict[str, Any]:
    """Send one outbox delivery (idempotent: a sent delivery is never sent again). A retry
    is re-queued for when it is due; the row's `attempts` bound the retries, not Celery."""
    settings, engine = _runtime()
    result = deliver_pending(engine, [delivery_id], settings, utcnow)
    retry_in = result.get("retry_in_s")
    if retry_in is not None:
        raise self.retry(countdown=max(0.0, retry_in))
    return result


@app.task(name="broker.sweep")
def sweep() -> dict[str, Any]:
    """The outbox and the poll runs are the truth, the queue only a hint: re-queue event
    batches left unprocessed and deliveries due for a while (their task was lost, e.g. to a
    Redis restart), mark sends cut off mid-call; then expire ended reservations and forget
    old Idempotency-Keys, never ahead of the database's clock (`workers.housekeeping`)."""
    from broker import alerts

    settings, engine = _runtime()
    found = alerts.sweep(engine, settings, utcnow)
    for first, last in found.ranges:
        process.delay(first, last)
    for delivery_id in found.deliveries:
        deliver.delay(delivery_id)
    tidied = tidy_store(engine, settings, utcnow)
    expired = tidied.expired
    if found.ranges or found.deliveries or found.unconfirmed or expired:
        log.warning(
            "tasks.sweep batches=%d deliveries=%d unconfirmed=%d expired=%d",
            len(found.ranges),
            len(found.deliveries),
            found.unconfirmed,
            len(expired),
        )
    return {
        "batches": len(found.ranges),
        "deliveries": len(found.deliveries),
        "unconfirmed": found.unconfirmed,
        "expired_reservations": len(expired),
        "clock_skew_s": tidied.clock_skew_s,
    }
