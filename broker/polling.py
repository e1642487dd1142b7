"""Running polls into the store: one source at a time, one transaction per poll.

Owns what a producer does with a `PollResult` (`broker poll`, `broker replay`, later the
scheduler and the workers): ingest it, count what happened, survive a source that raises.
Sources are anything with a `name` and a `fetch()` (the adapters of `providers/`); this
module never imports them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from sqlalchemy import Engine

from broker.db import session_scope
from broker.domain import Clock, PollResult, ProviderStatus, Scope, ScopeError, utcnow
from broker.offers import IngestResult, count_offers, empty_event_counts, ingest_poll

log = logging.getLogger(__name__)


class Source(Protocol):
    name: ClassVar[str]

    def fetch(self) -> PollResult: ...


def fetch_safely(source: Source, clock: Clock = utcnow) -> PollResult:
    """`source.fetch()`, turning an unexpected exception (a bug, not a provider fault:
    those arrive as scope errors) into a failed poll of the whole source."""
    try:
        return source.fetch()
    except Exception as exc:
        log.exception("poll.fetch_crashed", extra={"provider": source.name})
        return PollResult(
            offers=(),
            scopes_ok=(),
            fetched_at=clock(),
            scope_errors=(
                ScopeError(Scope(source.name), "error", f"adapter crashed: {type(exc).__name__}"),
            ),
        )


def poll_source(
    engine: Engine, source: Source, *, clock: Clock = utcnow, label: str | None = None
) -> IngestResult:
    """Fetch once and ingest the result in one transaction (timed for /metrics)."""
    from broker.metrics import POLL_DURATION

    with POLL_DURATION.labels(provider=source.name).time():
        result = fetch_safely(source, clock)
        with session_scope(engine) as session:
            return ingest_poll(session, result, source=source.name, label=label, clock=clock)


@dataclass
class ReplaySummary:
    """What `broker replay` prints: snapshots played, current offers, events by type."""

    snapshots: int = 0
    offers: int = 0
    events: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: What the last snapshot of each provider could not map (see `IngestResult`).
    unrecognised: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        events = empty_event_counts()
        events.update(self.events)
        return {
            "snapshots": self.snapshots,
            "offers": self.offers,
            "events": events,
            "skipped": dict(sorted(self.skipped.items())),
            "unrecognised": self.unrecognised,
            "errors": self.errors,
        }


def replay_results(
    engine: Engine,
    results: Iterable[tuple[str, PollResult]],
    *,
    clock: Clock = utcnow,
    source: str = "replay",
    after: Callable[[IngestResult], object] | None = None,
) -> ReplaySummary:
    """Ingest recorded polls in order, each in its own transaction, as successive polls.

    `results` is consumed lazily (label, PollResult) so a long replay holds one snapshot
    in memory at a time. `after` runs after each committed ingest (the event pipeline).
    """
    summary = ReplaySummary()
    for label, result in results:
        with session_scope(engine) as session:
            outcome = ingest_poll(session, result, source=source, label=label, clock=clock)
        if after is not None:
            after(outcome)
        summary.snapshots += 1
        summary.events.update(outcome.events)
        summary.skipped.update(result.skipped)
        summary.unrecognised.update(outcome.unrecognised)
        summary.notes += list(result.notes)
        summary.errors += [f"{e['scope']}: {e['message']}" for e in outcome.scope_errors]
        if outcome.status != ProviderStatus.OK:
            log.warning("replay.snapshot_degraded", extra={"label": label})
    with session_scope(engine) as session:
        summary.offers = count_offers(session)
    return summary
