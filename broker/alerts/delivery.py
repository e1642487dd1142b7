"""Sending the outbox: `deliver` sends one `alert_deliveries` row, `sweep` finds the work a
lost task left behind.

`deliver` claims a due row (`pending → sending`, committed, held until `claimed_until`),
calls Slack (`broker.alerts.slack`), and records the outcome in a second transaction:
`sent`; `pending` again after a backoff (429 with its Retry-After, 5xx, timeouts, an answer
cut off mid-body); `failed` after `max_attempts` or when Slack rejects the message; and when
Slack says the target is gone or closed to us for good (404 `no_service`, 403
`posting_to_general_channel_denied`, `invalid_auth`, `channel_not_found`, a redirect...)
the subscription is disabled with the reason. A row left `sending` past its claim (the
worker died mid-call) becomes `unconfirmed` and is not resent: Slack may already show it,
and an alert must never arrive twice.

Every row ends in a recorded state, whatever happens before or during the call: a stored
webhook URL that no longer passes `check_webhook_url` (stored before the check was strict,
or its host since removed from the allow-list) fails the row and disables the subscription
without a call; a send that raises anything unexpected fails the row (not retried: Slack
may have it) and is logged with the secret masked. So one broken subscription never stops
a batch, a `broker replay` or the sweep from sending everyone else's alerts.

Due times, claims and the sweep's cut-offs are decided in the database's time
(`broker.alerts.clock`); the injected clock stamps `sent_at` and `updated_at`.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update

from broker.alerts.clock import decision_now
from broker.alerts.slack import SendResult, send_bot, send_webhook
from broker.alerts.store import (
    ACTIVE,
    CANCELLED,
    DELIVERIES,
    DISABLED,
    EVENTS,
    FAILED,
    PENDING,
    RUNS,
    SENDING,
    SENT,
    SUBS,
    UNCONFIRMED,
    AlertError,
    safe_error,
)
from broker.alerts.webhooks import check_webhook_url
from broker.config import Settings
from broker.db import session_scope
from broker.domain import Clock, redact, utcnow
from broker.secrets import SecretBox, SecretUnavailable

log = logging.getLogger(__name__)

_CUT_OFF = "the sender stopped mid-call; not resent"


@dataclass(frozen=True)
class DeliveryOutcome:
    """What `deliver` did with one row: its state after, and when to try again."""

    delivery_id: int
    state: str
    sent: bool = False
    retry_in_s: float | None = None
    latency_s: float | None = None


@dataclass(frozen=True)
class _Claimed:
    """A row this worker now holds (`sending`), with what the call needs."""

    row: Any
    sub: Any
    secret: str


def _backoff(attempts: int, settings: Settings) -> float:
    a = settings.alerts
    return float(min(a.max_backoff_s, a.backoff_base_s * 2 ** max(0, attempts - 1)))


def deliver(
    engine: Engine, delivery_id: int, settings: Settings, clock: Clock = utcnow
) -> DeliveryOutcome:
    """Send one outbox row if it is due; never twice (see the module docstring). Raises
    only what the database raises: whatever the send does, the row ends recorded."""
    with session_scope(engine) as session:
        claimed = _claim(session.connection(), delivery_id, settings, clock)
    if isinstance(claimed, DeliveryOutcome):
        return claimed
    result = _send(claimed, settings)
    with session_scope(engine) as session:
        return _record(session.connection(), claimed, result, settings, clock)


def _claim(
    conn: Connection, delivery_id: int, settings: Settings, clock: Clock
) -> _Claimed | DeliveryOutcome:
    """Take the row for sending if it is pending and due; else say why not."""
    now = decision_now(conn, clock)
    row = conn.execute(select(DELIVERIES).where(DELIVERIES.c.id == delivery_id)).first()
    if row is None:
        return DeliveryOutcome(delivery_id, "missing")
    if row.state == SENDING and row.claimed_until is not None and row.claimed_until < now:
        _finish(conn, delivery_id, UNCONFIRMED, _CUT_OFF)
        return DeliveryOutcome(delivery_id, UNCONFIRMED)
    if row.state != PENDING:
        return DeliveryOutcome(delivery_id, row.state)
    if row.next_attempt_at > now:
        wait = (row.next_attempt_at - now).total_seconds()
        return DeliveryOutcome(delivery_id, PENDING, retry_in_s=wait)
    sub = conn.execute(select(SUBS).where(SUBS.c.id == row.subscription_id)).one()
    if sub.deleted_at is not None:
        _finish(conn, delivery_id, CANCELLED, "subscription deleted")
        return DeliveryOutcome(delivery_id, CANCELLED)
    if sub.state != ACTIVE and row.kind != "test":
        _finish(conn, delivery_id, FAILED, f"subscription disabled: {sub.disabled_reason}")
        return DeliveryOutcome(delivery_id, FAILED)
    try:
        secret = SecretBox(settings).open(sub.channel_secret)
    except SecretUnavailable as exc:
        return _retry_later(conn, row.id, row.attempts + 1, str(exc), None, settings, now)
    if sub.channel_type == "slack_webhook":
        try:
            check_webhook_url(secret, settings)
        except AlertError as exc:
            reason = f"the stored webhook URL is refused: {exc}"
            _finish(conn, delivery_id, FAILED, reason)
            _disable(conn, sub.id, reason, clock())
            return DeliveryOutcome(delivery_id, FAILED)
    claimed = conn.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.id == delivery_id, DELIVERIES.c.state == PENDING)
        .values(
            state=SENDING,
            attempts=DELIVERIES.c.attempts + 1,
            claimed_until=now + timedelta(seconds=settings.alerts.claim_s),
        )
    ).rowcount
    if claimed != 1:
        return DeliveryOutcome(delivery_id, "raced")
    return _Claimed(row, sub, secret)


def _send(claimed: _Claimed, settings: Settings) -> SendResult:
    """Call Slack. Anything unexpected (a bug, a row an older version wrote) becomes a
    `rejected` result: the row fails and is not retried, since Slack may have the message."""
    row, sub, secret = claimed.row, claimed.sub, claimed.secret
    try:
        payload = {"text": row.payload["text"], "blocks": row.payload.get("blocks")}
        if sub.channel_type == "slack_webhook":
            return send_webhook(secret, payload, settings)
        return send_bot(secret, sub.channel_name, payload, settings)
    except Exception as exc:
        log.error(
            "alerts.send_crashed delivery=%s subscription=%s\n%s",
            row.id,
            sub.id,
            redact(traceback.format_exc(), [secret]),
        )
        return SendResult("rejected", f"the send crashed ({type(exc).__name__}); not resent")


def _record(
    conn: Connection, claimed: _Claimed, result: SendResult, settings: Settings, clock: Clock
) -> DeliveryOutcome:
    """Write what the call came to (see the module docstring)."""
    row, sub = claimed.row, claimed.sub
    stamp = clock()
    error = safe_error(result.error, [claimed.secret])
    if result.outcome == "sent":
        conn.execute(
            update(DELIVERIES)
            .where(DELIVERIES.c.id == row.id)
            .values(state=SENT, sent_at=stamp, claimed_until=None, last_error=None)
        )
        latency = (stamp - row.event_at).total_seconds() if row.event_at else None
        log.info("alerts.sent delivery=%s subscription=%s", row.id, sub.id)
        return DeliveryOutcome(row.id, SENT, sent=True, latency_s=latency)
    if result.outcome == "retry":
        now = decision_now(conn, clock)
        return _retry_later(
            conn, row.id, row.attempts + 1, error, result.retry_after, settings, now
        )
    _finish(conn, row.id, FAILED, error)
    if result.outcome == "gone":
        _disable(conn, sub.id, error, stamp)
    return DeliveryOutcome(row.id, FAILED)


def _disable(conn: Connection, subscription_id: int, reason: str | None, stamp: datetime) -> None:
    """Slack refused the target for good: stop sending to it until someone re-enables it."""
    conn.execute(
        update(SUBS)
        .where(SUBS.c.id == subscription_id)
        .values(state=DISABLED, disabled_reason=safe_error(reason), updated_at=stamp)
    )
    log.warning("alerts.subscription_disabled id=%s: %s", subscription_id, safe_error(reason))


def _finish(conn: Connection, delivery_id: int, state: str, error: str | None) -> None:
    conn.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.id == delivery_id)
        .values(state=state, claimed_until=None, last_error=safe_error(error))
    )


def _retry_later(
    conn: Connection,
    delivery_id: int,
    attempts: int,
    error: str | None,
    retry_after: float | None,
    settings: Settings,
    now: datetime,
) -> DeliveryOutcome:
    """Back to `pending`, due `retry_after` (Slack's) or the backoff after `now` (decision
    time); `failed` once `max_attempts` are spent."""
    if attempts >= settings.alerts.max_attempts:
        _finish(conn, delivery_id, FAILED, f"gave up after {attempts} attempts: {error}")
        return DeliveryOutcome(delivery_id, FAILED)
    wait = retry_after if retry_after is not None else _backoff(attempts, settings)
    conn.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.id == delivery_id)
        .values(
            state=PENDING,
            attempts=attempts,
            claimed_until=None,
            next_attempt_at=now + timedelta(seconds=wait),
            last_error=safe_error(error),
        )
    )
    log.info("alerts.retry delivery=%s in %.1fs: %s", delivery_id, wait, safe_error(error))
    return DeliveryOutcome(delivery_id, PENDING, retry_in_s=wait)


# --------------------------------------------------------------------------- sweep


@dataclass
class Sweep:
    """Work whose task may have been lost: event ranges of unprocessed poll runs, due
    deliveries; and how many cut-off sends were marked unconfirmed."""

    ranges: list[tuple[int, int]] = field(default_factory=list)
    deliveries: list[int] = field(default_factory=list)
    unconfirmed: int = 0


def sweep(
    engine: Engine,
    settings: Settings,
    clock: Clock = utcnow,
    *,
    delivery_grace_s: float | None = None,
) -> Sweep:
    """What to (re-)queue: poll runs whose events are still unprocessed `sweep_grace_s`
    after ingest, pending deliveries due `delivery_grace_s` (default the same) ago; marks
    sends cut off past their claim `unconfirmed`. All three judged in decision time."""
    grace = timedelta(seconds=settings.alerts.sweep_grace_s)
    delivery_grace = grace if delivery_grace_s is None else timedelta(seconds=delivery_grace_s)
    out = Sweep()
    with session_scope(engine) as session:
        conn = session.connection()
        now = decision_now(conn, clock)
        runs = select(RUNS.c.id).where(
            RUNS.c.processed_at.is_(None), RUNS.c.ingested_at <= now - grace
        )
        out.ranges = [
            (int(lo), int(hi))
            for lo, hi in conn.execute(
                select(func.min(EVENTS.c.id), func.max(EVENTS.c.id))
                .where(EVENTS.c.poll_run_id.in_(runs))
                .group_by(EVENTS.c.poll_run_id)
                .order_by(func.min(EVENTS.c.id))
            )
        ]
        out.deliveries = list(
            conn.execute(
                select(DELIVERIES.c.id)
                .where(
                    DELIVERIES.c.state == PENDING,
                    DELIVERIES.c.next_attempt_at <= now - delivery_grace,
                )
                .order_by(DELIVERIES.c.id)
                .limit(1000)
            ).scalars()
        )
        out.unconfirmed = conn.execute(
            update(DELIVERIES)
            .where(DELIVERIES.c.state == SENDING, DELIVERIES.c.claimed_until < now)
            .values(state=UNCONFIRMED, claimed_until=None, last_error=_CUT_OFF)
        ).rowcount
    return out
