"""Subscriptions: what a team asks to hear about (a market `filter` or a capacity request)
and where (a Slack incoming or workflow webhook, or a bot token and channel), stored with
the secret sealed (`broker.secrets`) and shown only masked; create, read, change, delete;
and a test message through the outbox.

A webhook URL is checked strictly here (`broker.alerts.webhooks.check_webhook_url`), so
what is stored is exactly what will be called. Creating or re-filtering an offer
subscription seeds its match set with what matches now, silently.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from sqlalchemy import delete, insert, update
from sqlmodel import Session, col

from broker.alerts.filters import CompiledFilter, OfferFilter, offer_rows
from broker.alerts.matching import write_delivery
from broker.alerts.messages import build_test_message
from broker.alerts.store import ACTIVE, CANCELLED, DELIVERIES, MATCHES, PENDING, AlertError
from broker.alerts.webhooks import check_webhook_url, mask_token, mask_webhook
from broker.config import Settings
from broker.db import keyset_page
from broker.domain import Clock, utcnow
from broker.inputs import MAX_SECRET
from broker.models import AlertDelivery, AlertSubscription, CapacityRequest
from broker.secrets import SecretBox


class SlackWebhookChannel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["slack_webhook"]
    url: SecretStr = Field(
        max_length=MAX_SECRET,
        description="A Slack incoming-webhook URL (https://hooks.slack.com/services/...) or "
        "workflow webhook URL (/triggers/... or /workflows/...). Write-only: shown masked.",
    )


class SlackBotChannel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["slack_bot"]
    token: SecretStr = Field(
        max_length=MAX_SECRET, description="A bot token (xoxb-...). Write-only."
    )
    channel: str = Field(min_length=1, max_length=128, description="#name or channel id.")

    @field_validator("token")
    @classmethod
    def _token(cls, v: SecretStr) -> SecretStr:
        text = v.get_secret_value()
        if not text.startswith(("xoxb-", "xoxp-")) or len(text) > 500 or not text.isprintable():
            raise ValueError("must be a Slack bot or user token (xoxb-... or xoxp-...)")
        return v


Channel = Annotated[SlackWebhookChannel | SlackBotChannel, Field(discriminator="type")]


class SubscriptionIn(BaseModel):
    """`POST /v1/subscriptions`: a `filter` over offers, or a `request_id` to follow."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    filter: OfferFilter | None = None
    request_id: int | None = Field(default=None, ge=1, le=2**62)
    channel: Channel
    price_drop_pct: Decimal | None = Field(
        default=None,
        gt=0,
        le=1,
        max_digits=5,
        description="Re-alert when an alerted offer gets this much cheaper (0.05 = 5 %).",
    )

    @model_validator(mode="after")
    def _one_target(self) -> SubscriptionIn:
        if (self.filter is None) == (self.request_id is None):
            raise ValueError("give exactly one of filter (offers) or request_id (a request)")
        return self


class SubscriptionPatch(BaseModel):
    """`PATCH /v1/subscriptions/{id}`: rename, refilter, new channel, pause or re-enable."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=256)
    filter: OfferFilter | None = None
    channel: Channel | None = None
    price_drop_pct: Decimal | None = Field(default=None, gt=0, le=1, max_digits=5)
    state: Literal["active", "disabled"] | None = None


def subscription_out(row: AlertSubscription, matching: int | None = None) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": row.channel_type}
    if row.channel_type == "slack_webhook":
        channel["url"] = row.channel_hint
    else:
        channel["token"] = row.channel_hint.split(" via ", 1)[-1]
        channel["channel"] = row.channel_name
    return {
        "id": row.id,
        "name": row.name,
        "kind": row.kind,
        "filter": row.filter if row.kind == "offers" else None,
        "request_id": row.request_id,
        "channel": channel,
        "price_drop_pct": str(row.price_drop_pct),
        "state": row.state,
        "disabled_reason": row.disabled_reason,
        "matching_offers": matching,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def _apply_channel(
    row: AlertSubscription, channel: SlackWebhookChannel | SlackBotChannel, settings: Settings
) -> None:
    box = SecretBox(settings)
    if isinstance(channel, SlackWebhookChannel):
        url = channel.url.get_secret_value()
        check_webhook_url(url, settings)
        row.channel_type, row.channel_name = "slack_webhook", None
        row.channel_secret, row.channel_hint = box.seal(url), mask_webhook(url)
    else:
        token = channel.token.get_secret_value()
        row.channel_type, row.channel_name = "slack_bot", channel.channel
        row.channel_secret = box.seal(token)
        row.channel_hint = mask_token(token, channel.channel)


def _seed_matches(session: Session, row: AlertSubscription, now: datetime) -> int:
    """Replace the match set with what passes the filter now (silently); its size."""
    assert row.id is not None
    conn = session.connection()
    conn.execute(delete(MATCHES).where(MATCHES.c.subscription_id == row.id))
    flt = CompiledFilter.of(row.filter)
    rows = [
        {
            "subscription_id": row.id,
            "offer_key": o.key,
            "price_per_gpu_hour": o.price_per_gpu_hour,
            "entered_at": now,
        }
        for o in offer_rows(conn)
        if flt.matches(o)
    ]
    if rows:
        conn.execute(insert(MATCHES), rows)
    return len(rows)


def create_subscription(
    session: Session,
    team_id: int,
    body: SubscriptionIn,
    *,
    actor: str,
    settings: Settings,
    clock: Clock = utcnow,
) -> tuple[AlertSubscription, int | None]:
    """Store a subscription (secret sealed) and seed its match set; (row, matching now)."""
    now = clock()
    if body.request_id is not None:
        req = session.get(CapacityRequest, body.request_id)
        if req is None or req.team_id != team_id:
            raise AlertError(
                "not_found", f"no capacity request {body.request_id} in this team", "request_id"
            )
    row = AlertSubscription(
        team_id=team_id,
        name=body.name,
        kind="offers" if body.filter is not None else "request",
        filter=body.filter.model_dump(mode="json") if body.filter is not None else {},
        request_id=body.request_id,
        price_drop_pct=body.price_drop_pct
        if body.price_drop_pct is not None
        else Decimal(str(settings.alerts.price_drop_pct)),
        channel_type="",
        channel_secret="",
        channel_hint="",
        state=ACTIVE,
        created_by=actor,
        created_at=now,
        updated_at=now,
    )
    _apply_channel(row, body.channel, settings)
    session.add(row)
    session.flush()
    matching = _seed_matches(session, row, now) if row.kind == "offers" else None
    return row, matching


def get_subscription(
    session: Session, team_id: int, subscription_id: int
) -> AlertSubscription | None:
    row = session.get(AlertSubscription, subscription_id)
    if row is None or row.team_id != team_id or row.deleted_at is not None:
        return None
    return row


def list_subscriptions(
    session: Session, team_id: int, *, after_id: int | None = None, limit: int = 50
) -> list[AlertSubscription]:
    return keyset_page(
        session,
        AlertSubscription,
        col(AlertSubscription.team_id) == team_id,
        col(AlertSubscription.deleted_at).is_(None),
        after_id=after_id,
        limit=limit,
    )


def update_subscription(
    session: Session,
    row: AlertSubscription,
    patch: SubscriptionPatch,
    *,
    settings: Settings,
    clock: Clock = utcnow,
) -> tuple[AlertSubscription, int | None]:
    now = clock()
    fields = patch.model_fields_set
    if "filter" in fields:
        if row.kind != "offers" or patch.filter is None:
            raise AlertError(
                "invalid_request", "only an offers subscription has a filter", "filter"
            )
        row.filter = patch.filter.model_dump(mode="json")
    if "name" in fields and patch.name is not None:
        row.name = patch.name
    if "price_drop_pct" in fields and patch.price_drop_pct is not None:
        row.price_drop_pct = patch.price_drop_pct
    if "channel" in fields and patch.channel is not None:
        _apply_channel(row, patch.channel, settings)
    reseed = "filter" in fields
    if "state" in fields and patch.state is not None and patch.state != row.state:
        row.state = patch.state
        row.disabled_reason = None if patch.state == ACTIVE else "paused through the API"
        reseed = reseed or patch.state == ACTIVE
    row.updated_at = now
    session.add(row)
    session.flush()
    matching = None
    if reseed and row.kind == "offers":
        matching = _seed_matches(session, row, now)
    return row, matching


def delete_subscription(session: Session, row: AlertSubscription, clock: Clock = utcnow) -> None:
    """Soft-delete: the row stays for its deliveries; unsent ones are cancelled."""
    now = clock()
    conn = session.connection()
    conn.execute(delete(MATCHES).where(MATCHES.c.subscription_id == row.id))
    conn.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.subscription_id == row.id, DELIVERIES.c.state == PENDING)
        .values(state=CANCELLED, last_error="subscription deleted")
    )
    row.deleted_at = row.updated_at = now
    session.add(row)


def enqueue_test(
    session: Session, row: AlertSubscription, settings: Settings, clock: Clock = utcnow
) -> int:
    """An outbox row with a test message for this subscription; its id."""
    now = clock()
    assert row.id is not None
    payload = build_test_message(row, settings)
    key = f"test:{row.id}:{uuid.uuid4().hex}"  # every test call is a new message
    return write_delivery(session.connection(), row, "test", key, payload, now, now)


def deliveries_of(
    session: Session, row: AlertSubscription, *, after_id: int | None = None, limit: int = 50
) -> list[AlertDelivery]:
    where = col(AlertDelivery.subscription_id) == row.id
    return keyset_page(session, AlertDelivery, where, after_id=after_id, limit=limit)
