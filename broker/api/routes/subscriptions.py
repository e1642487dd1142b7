"""`/v1/subscriptions`: Slack alerts of the caller's team (`broker.alerts`).

A subscription is a market `filter` or a capacity request (`request_id`) plus a Slack
`channel`. The webhook URL or bot token is write-only: answers show it masked. Writing needs
the member role; another team's subscription is a 404.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlmodel import Session

from broker import alerts
from broker.api.deps import (
    ClockDep,
    CurrentPrincipal,
    EngineDep,
    SessionDep,
    SettingsDep,
    require_role,
)
from broker.api.errors import ApiError, not_found
from broker.api.idempotency import IdempotencyDep
from broker.api.pagination import (
    CursorQuery,
    LimitQuery,
    Page,
    SubscriptionId,
    id_page,
)
from broker.auth import Principal
from broker.models import AlertSubscription

router = APIRouter(prefix="/subscriptions", tags=["subscriptions"])

Member = Annotated[Principal, Depends(require_role("member"))]


class SubscriptionPublic(BaseModel):
    id: int
    name: str
    kind: str = Field(description="`offers` (a market filter) or `request`.")
    filter: dict[str, Any] | None
    request_id: int | None
    channel: dict[str, Any] = Field(description="Type and the masked URL or token.")
    price_drop_pct: str
    state: str = Field(description="`active` or `disabled` (see `disabled_reason`).")
    disabled_reason: str | None
    matching_offers: int | None = Field(
        description="Offers matching now (on create and when the filter changed)."
    )
    created_by: str
    created_at: datetime
    updated_at: datetime


class DeliveryPublic(BaseModel):
    id: int
    kind: str
    state: str = Field(
        description="pending, sending, sent, failed, cancelled or unconfirmed (cut off "
        "mid-send, not resent)."
    )
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime
    last_error: str | None
    text: str


def _public(row: AlertSubscription, matching: int | None = None) -> SubscriptionPublic:
    return SubscriptionPublic.model_validate(alerts.subscription_out(row, matching))


def _own(session: Session, principal: Principal, subscription_id: int) -> AlertSubscription:
    row = alerts.get_subscription(session, principal.team_id, subscription_id)
    if row is None:
        raise not_found(f"no subscription {subscription_id} in team {principal.team}")
    return row


def _alert_error(exc: alerts.AlertError) -> ApiError:
    if exc.code == "not_found":
        return ApiError(404, "not_found", str(exc))
    details = [{"loc": f"body.{exc.field}", "field": exc.field}] if exc.field else None
    return ApiError(422, exc.code, str(exc), details)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SubscriptionPublic)
def create(
    body: alerts.SubscriptionIn,
    session: SessionDep,
    principal: Member,
    settings: SettingsDep,
    clock: ClockDep,
    idem: IdempotencyDep,
) -> SubscriptionPublic | JSONResponse:
    """Subscribe a Slack channel to offers passing `filter` (alerts when an offer enters the
    filter, or gets `price_drop_pct` cheaper) or to a request's best option. What matches
    now is taken as known: alerts start with the next change. With `Idempotency-Key`, a
    retry returns the first answer."""
    if (replayed := idem.claim(session, principal)) is not None:
        return replayed
    try:
        row, matching = alerts.create_subscription(
            session,
            principal.team_id,
            body,
            actor=f"{principal.team}/{principal.prefix}",
            settings=settings,
            clock=clock,
        )
    except alerts.AlertError as exc:
        raise _alert_error(exc) from None
    return idem.remember(session, 201, _public(row, matching))


@router.get("", response_model=Page[SubscriptionPublic])
def list_(
    session: SessionDep,
    principal: CurrentPrincipal,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[SubscriptionPublic]:
    rows, nxt = id_page(
        "subscriptions",
        cursor,
        limit,
        lambda after, n: alerts.list_subscriptions(
            session, principal.team_id, after_id=after, limit=n
        ),
    )
    return Page[SubscriptionPublic](data=[_public(r) for r in rows], next_cursor=nxt)


@router.get("/{subscription_id}", response_model=SubscriptionPublic)
def read(
    subscription_id: SubscriptionId, session: SessionDep, principal: CurrentPrincipal
) -> SubscriptionPublic:
    return _public(_own(session, principal, subscription_id))


@router.patch("/{subscription_id}", response_model=SubscriptionPublic)
def patch(
    subscription_id: SubscriptionId,
    body: Annotated[alerts.SubscriptionPatch, Body()],
    session: SessionDep,
    principal: Member,
    settings: SettingsDep,
    clock: ClockDep,
) -> SubscriptionPublic:
    """Rename, change the filter (the match set is re-seeded, silently), replace the
    channel, or set `state`: `disabled` pauses, `active` resumes (also after Slack said the
    target was gone)."""
    row = _own(session, principal, subscription_id)
    try:
        row, matching = alerts.update_subscription(
            session, row, body, settings=settings, clock=clock
        )
    except alerts.AlertError as exc:
        raise _alert_error(exc) from None
    return _public(row, matching)


@router.delete("/{subscription_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete(
    subscription_id: SubscriptionId, session: SessionDep, principal: Member, clock: ClockDep
) -> Response:
    """Stop the alerts; unsent deliveries are cancelled."""
    row = _own(session, principal, subscription_id)
    alerts.delete_subscription(session, row, clock)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{subscription_id}/test", response_model=DeliveryPublic)
def send_test(
    subscription_id: SubscriptionId,
    session: SessionDep,
    engine: EngineDep,
    principal: Member,
    settings: SettingsDep,
    clock: ClockDep,
) -> DeliveryPublic:
    """Send a test message now; the answer is the delivery as Slack left it (`sent`, or
    `failed` with Slack's reason, or `pending` with a retry time)."""
    row = _own(session, principal, subscription_id)
    delivery_id = alerts.enqueue_test(session, row, settings, clock)
    session.commit()
    alerts.deliver(engine, delivery_id, settings, clock)
    return _delivery(session, delivery_id)


@router.get("/{subscription_id}/deliveries", response_model=Page[DeliveryPublic])
def deliveries(
    subscription_id: SubscriptionId,
    session: SessionDep,
    principal: CurrentPrincipal,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[DeliveryPublic]:
    """What was (or is to be) sent to this subscription, oldest first."""
    row = _own(session, principal, subscription_id)
    rows, nxt = id_page(
        "deliveries",
        cursor,
        limit,
        lambda after, n: alerts.deliveries_of(session, row, after_id=after, limit=n),
    )
    return Page[DeliveryPublic](data=[_delivery_public(r) for r in rows], next_cursor=nxt)


def _delivery_public(r: Any) -> DeliveryPublic:
    return DeliveryPublic(
        id=r.id,
        kind=r.kind,
        state=r.state,
        attempts=r.attempts,
        created_at=r.created_at,
        sent_at=r.sent_at,
        next_attempt_at=r.next_attempt_at,
        last_error=r.last_error,
        text=r.payload.get("text", ""),
    )


def _delivery(session: Session, delivery_id: int) -> DeliveryPublic:
    from broker.models import AlertDelivery

    session.expire_all()
    row = session.get(AlertDelivery, delivery_id)
    assert row is not None
    return _delivery_public(row)
