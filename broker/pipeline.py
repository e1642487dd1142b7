"""What happens after a poll is ingested: the events it wrote reach whoever cares.

    ingest ──▶ process_events(first, last) ──▶ deliver_pending(delivery ids)

`process_events` rescores the open capacity requests whose GPU models the market events
touch (and, with alerts, matches the subscriptions and writes the outbox rows in the same
transaction); `deliver_pending` sends outbox rows. Every producer runs them: in embedded mode
`after_ingest` runs both in-process (`broker serve`'s poller, `broker poll`, `broker replay`,
`POST /v1/providers/{name}/poll`); in production the Celery tasks of `workers.tasks` run
the same two functions on workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from broker.config import Settings
from broker.db import session_scope
from broker.domain import Clock, utcnow
from broker.offers import IngestResult


@dataclass
class Processed:
    """What processing an event range did: best options changed, outbox rows written."""

    best_changed: int = 0
    deliveries: list[int] = field(default_factory=list)


def process_events(
    engine: Engine, first_id: int, last_id: int, settings: Settings, clock: Clock = utcnow
) -> Processed:
    """Rescore requests and match subscriptions for market events `first_id..last_id`, in
    one transaction with the outbox rows they cause and the poll runs' `processed_at`.
    Idempotent: a second run finds the best options and match sets already moved."""
    from broker import alerts
    from broker.requests import rescore_in

    now = clock()
    with session_scope(engine) as session:
        if not alerts.claim_batch(session.connection(), first_id, last_id):
            return Processed()  # another run processed this batch (it waited for it)
        changed = rescore_in(session, first_id, last_id, settings=settings, now=now)
        conn = session.connection()
        deliveries = alerts.match_events(conn, first_id, last_id, settings, now)
        alerts.mark_processed(conn, first_id, last_id, now)
    return Processed(best_changed=changed, deliveries=deliveries)


def deliver_pending(
    engine: Engine, delivery_ids: list[int], settings: Settings, clock: Clock = utcnow
) -> dict[str, Any]:
    """Send these outbox rows (those due and still pending). `retry_in_s`: the soonest a
    retried one is due again (the Celery task re-queues itself for then)."""
    from broker import alerts, metrics

    sent = 0
    retry: list[float] = []
    states: dict[str, int] = {}
    for delivery_id in delivery_ids:
        out = alerts.deliver(engine, delivery_id, settings, clock)
        states[out.state] = states.get(out.state, 0) + 1
        if out.sent:
            sent += 1
            metrics.observe_delivery("sent", out.latency_s)
        elif out.state in (alerts.FAILED, alerts.UNCONFIRMED, alerts.CANCELLED):
            metrics.observe_delivery(out.state, None)
        if out.retry_in_s is not None:
            if out.state == alerts.PENDING:
                metrics.observe_delivery("retry", None)
            retry.append(out.retry_in_s)
    return {
        "sent": sent,
        "deliveries": len(delivery_ids),
        "states": states,
        "retry_in_s": min(retry) if retry else None,
    }


def sweep_embedded(engine: Engine, settings: Settings, clock: Clock = utcnow) -> dict[str, int]:
    """Embedded mode's periodic catch-up: process event batches left unprocessed, send due
    deliveries (retries after a backoff), mark cut-off sends."""
    from broker import alerts

    found = alerts.sweep(engine, settings, clock, delivery_grace_s=0)
    deliveries = list(found.deliveries)
    for first, last in found.ranges:
        deliveries += process_events(engine, first, last, settings, clock).deliveries
    result = deliver_pending(engine, sorted(set(deliveries)), settings, clock)
    return {
        "batches": len(found.ranges),
        "sent": result["sent"],
        "unconfirmed": found.unconfirmed,
    }


def after_ingest(
    engine: Engine, result: IngestResult, settings: Settings, clock: Clock = utcnow
) -> Processed:
    """Embedded mode: process the events of one ingest and deliver at once."""
    if result.first_event_id is None or result.last_event_id is None:
        return Processed()
    out = process_events(engine, result.first_event_id, result.last_event_id, settings, clock)
    if out.deliveries:
        deliver_pending(engine, out.deliveries, settings, clock)
    return out
