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
    """Rescore (and match alerts) for market events `first_id..last_id`. Idempotent."""
    from broker.requests import rescore_for_events

    changed = rescore_for_events(engine, first_id, last_id, settings=settings, clock=clock)
    return Processed(best_changed=changed)


def deliver_pending(
    engine: Engine, delivery_ids: list[int], settings: Settings, clock: Clock = utcnow
) -> dict[str, Any]:
    """Send these outbox deliveries (none exist until alerts are configured)."""
    return {"sent": 0, "deliveries": len(delivery_ids)}


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
