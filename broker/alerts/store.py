"""What every alerts module shares: the tables, the states of a subscription and of a
delivery, `AlertError`, and how an error text is made safe to store.

The tables are the SQLModel ones of `broker.models`, used through SQLAlchemy Core (bulk
reads and conditional updates). Nothing here talks to Slack or reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from broker.domain import redact
from broker.models import (
    AlertDelivery,
    AlertMatch,
    AlertSubscription,
    MarketEvent,
    PollRun,
    RequestEvent,
    StoredOffer,
)

SUBS = AlertSubscription.__table__  # type: ignore[attr-defined]
MATCHES = AlertMatch.__table__  # type: ignore[attr-defined]
DELIVERIES = AlertDelivery.__table__  # type: ignore[attr-defined]
OFFERS = StoredOffer.__table__  # type: ignore[attr-defined]
EVENTS = MarketEvent.__table__  # type: ignore[attr-defined]
RUNS = PollRun.__table__  # type: ignore[attr-defined]
REQUEST_EVENTS = RequestEvent.__table__  # type: ignore[attr-defined]

#: A subscription's states.
ACTIVE, DISABLED = "active", "disabled"
#: A delivery's states (see `broker.models.AlertDelivery`).
PENDING, SENDING, SENT = "pending", "sending", "sent"
FAILED, CANCELLED, UNCONFIRMED = "failed", "cancelled", "unconfirmed"
#: Keys per `IN (...)` query.
CHUNK = 500
#: `alert_deliveries.last_error` and `alert_subscriptions.disabled_reason` hold this much.
MAX_ERROR = 1000


class AlertError(ValueError):
    """A subscription change that is not allowed (`code`/`field` for the API's error shape)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.field = code, field


def safe_error(error: str | None, secrets: Iterable[str | None] = ()) -> str | None:
    """`error` ready to store: secrets masked first, then cut to `MAX_ERROR` (masking after
    the cut could leave the start of a secret unrecognised); None when empty."""
    if not error:
        return None
    return redact(error, secrets)[:MAX_ERROR] or None
