"""The timed writes of housekeeping, shared by the Celery `broker.sweep` task and the
embedded poller of `broker serve`: expire ended reservations, forget old Idempotency-Keys.

Both are irreversible, so neither runs ahead of the database's clock: the time used is the
process clock capped by the database's (`broker.ledger_expiry.expiry_cutoff`). A worker
whose clock runs ahead therefore expires and forgets nothing early; how far off it is goes
to `broker_clock_skew_seconds` and, beyond `BROKER_MAX_CLOCK_SKEW_S`, to an error log line
(`broker.metrics.observe_clock_skew`). The alert side of a sweep (`broker.alerts.sweep`,
`broker.pipeline.sweep_embedded`) is its callers'.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from broker.config import Settings
from broker.db import session_scope
from broker.domain import Clock, utcnow
from broker.ledger_expiry import expire_reservations, expiry_cutoff


@dataclass(frozen=True)
class Tidied:
    """What one housekeeping pass did: the reservations it expired, the time it used (the
    process clock capped by the database's), and the measured skew (None: unmeasured)."""

    expired: list[int]
    at: datetime
    clock_skew_s: float | None


def tidy_store(engine: Engine, settings: Settings, clock: Clock = utcnow) -> Tidied:
    """Expire ended reservations and forget Idempotency-Keys older than their TTL, in one
    transaction, by the process clock capped by the database's."""
    # Imported here, as `broker.polling` does: a worker chooses prometheus-client's
    # multiprocess mode before its first import (`broker.cli._serve_metrics`).
    from broker.api.idempotency import forget_old_keys
    from broker.metrics import observe_clock_skew

    skew = observe_clock_skew(engine, settings, clock)
    with session_scope(engine) as session:
        at = expiry_cutoff(session, clock())
        expired = expire_reservations(session, at)
        forget_old_keys(session, at, settings.idempotency_ttl_hours)
    return Tidied(expired, at, skew)
