"""What happens after a poll is ingested: the events it wrote reach whoever cares.

`after_ingest` is the one hook every producer calls (the embedded scheduler, `broker poll`,
`POST /v1/providers/{name}/poll`; later the Celery `process_events` task): it rescores the
open capacity requests whose GPU models the new market events touch.
"""

from __future__ import annotations

from sqlalchemy import Engine

from broker.config import Settings
from broker.domain import Clock, utcnow
from broker.offers import IngestResult


def after_ingest(
    engine: Engine, result: IngestResult, settings: Settings, clock: Clock = utcnow
) -> None:
    """Process the market events of one ingest (ids `first_event_id..last_event_id`)."""
    if result.first_event_id is None or result.last_event_id is None:
        return
    from broker.requests import rescore_for_events

    rescore_for_events(
        engine, result.first_event_id, result.last_event_id, settings=settings, clock=clock
    )
