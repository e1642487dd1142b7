"""The embedded poller of `broker serve`: APScheduler in a background thread of the API process.

Every enabled provider (the rules of `broker poll`, see `broker.sources`: replay over the
bundled sample when no cloud is configured) gets one interval job, every
`settings.poll_interval_for(provider)` seconds, the first run at once. A run is `poll_source` then
`after_ingest`; an exception is logged, never raised, so one broken provider cannot stop the
others or the API. `max_instances=1` and `coalesce`: a slow poll is never run twice at once,
and runs missed meanwhile collapse into one. A housekeeping job every
`alerts.sweep_interval_s` finishes what a crash or a Slack outage left (event batches not
processed, deliveries due for a retry), expires ended reservations and forgets old
Idempotency-Keys, never ahead of the database's clock (`workers.housekeeping`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.background import (
    BackgroundScheduler,
)
from sqlalchemy import Engine

from broker.config import Settings
from broker.domain import Clock, utcnow
from broker.offers import IngestResult
from broker.pipeline import after_ingest, sweep_embedded
from broker.polling import Source, poll_source
from broker.sources import Sources, build_sources
from workers.housekeeping import tidy_store

log = logging.getLogger(__name__)


def poll_once(
    engine: Engine, source: Source, settings: Settings, clock: Clock = utcnow
) -> IngestResult | None:
    """One scheduled poll of `source`: ingest, then the after-ingest pipeline. Never raises."""
    try:
        outcome = poll_source(engine, source, clock=clock)
    except Exception:
        log.exception("embedded.poll_failed", extra={"provider": source.name})
        return None
    log.info(
        "embedded.polled %s: %s, %d offers, events %s",
        source.name,
        outcome.status,
        outcome.offers_seen,
        dict(outcome.events),
    )
    try:
        after_ingest(engine, outcome, settings, clock)
    except Exception:
        log.exception("embedded.after_ingest_failed", extra={"provider": source.name})
    return outcome


def housekeeping(engine: Engine, settings: Settings, clock: Clock = utcnow) -> None:
    """Catch up on alerts, expire ended reservations and forget old Idempotency-Keys (by
    `clock` capped by the database's: `workers.housekeeping`). Never raises."""
    try:
        done = sweep_embedded(engine, settings, clock)
        tidied = tidy_store(engine, settings, clock)
        expired = tidied.expired
        if done["batches"] or done["sent"] or done["unconfirmed"] or expired:
            log.info("embedded.housekeeping %s, %d reservations expired", done, len(expired))
    except Exception:
        log.exception("embedded.housekeeping_failed")


class EmbeddedPoller:
    """Polls every enabled provider on a schedule until `shutdown()`."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        clock: Clock = utcnow,
        sources: Sources | None = None,
    ) -> None:
        self.engine, self.settings, self.clock = engine, settings, clock
        self.sources = sources if sources is not None else build_sources(settings, clock)
        self.scheduler: Any = BackgroundScheduler(timezone=UTC)

    @property
    def providers(self) -> list[str]:
        return sorted(self.sources.enabled)

    def start(self) -> None:
        for name, reason in sorted(self.sources.disabled.items()):
            log.info("embedded.provider_disabled %s: %s", name, reason)
        first = datetime.now(UTC)
        for name, source in sorted(self.sources.enabled.items()):
            self.scheduler.add_job(
                poll_once,
                "interval",
                args=(self.engine, source, self.settings, self.clock),
                seconds=self.settings.poll_interval_for(name),
                next_run_time=first,
                id=f"poll:{name}",
                name=f"poll {name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=self.settings.poll_interval_for(name),
                replace_existing=True,
            )
        self.scheduler.add_job(
            housekeeping,
            "interval",
            args=(self.engine, self.settings, self.clock),
            seconds=self.settings.alerts.sweep_interval_s,
            id="housekeeping",
            max_instances=1,
            coalesce=True,
            replace_existing=True,
        )
        self.scheduler.start()

    def shutdown(self, wait: bool = False) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)
