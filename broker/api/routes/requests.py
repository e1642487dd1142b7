"""`/v1/requests`: capacity requests of the caller's team, their recommendations and events.

Thin: validation is `broker.requests.RequestIn` (every error names its field), storage and
scoring are `broker.requests` / `broker.scoring`. Another team's request is a 404, never a
403: its existence is not disclosed. Writing needs the member role; reading, any role.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from sqlmodel import Session

from broker import requests as capacity
from broker.api.deps import ClockDep, CurrentPrincipal, SessionDep, SettingsDep, require_role
from broker.api.errors import ApiError, not_found
from broker.api.idempotency import IdempotencyDep
from broker.api.pagination import (
    CursorQuery,
    LimitQuery,
    Page,
    RequestId,
    id_page,
)
from broker.auth import Principal
from broker.models import CapacityRequest

router = APIRouter(prefix="/requests", tags=["requests"])

Member = Annotated[Principal, Depends(require_role("member"))]


class RequestPublic(BaseModel):
    """A capacity request as stored: the validated body plus state and its last best option."""

    id: int
    name: str | None
    state: capacity.RequestState
    gpu_models: list[str]
    resolved_gpu_models: list[str]
    gpus: int
    gpus_per_node: int | None
    residency: dict[str, list[str]]
    markets: list[str]
    max_price_per_gpu_hour: str | None
    not_before: datetime | None
    needed_by: datetime | None
    duration_hours: int
    weights: dict[str, float]
    exclude_anomalies: bool = False
    best_option: dict[str, Any] | None = Field(
        description="The best option at the last scoring: offer keys and instances, price, "
        "cost, time to power, score."
    )
    scored_at: datetime | None
    created_at: datetime
    updated_at: datetime


class RequestEventPublic(BaseModel):
    id: int
    request_id: int
    type: str
    at: datetime
    market_event_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class Recommendations(BaseModel):
    """Ranked options (best first) and every offer family that did not qualify, with why."""

    request_id: int
    state: str
    options: list[dict[str, Any]]
    excluded: list[dict[str, Any]]
    considered_offers: int
    total_options: int


def _public(row: CapacityRequest) -> RequestPublic:
    return RequestPublic.model_validate(capacity.request_out(row))


def _own(session: Session, principal: Principal, request_id: int) -> CapacityRequest:
    row = capacity.get_request(session, principal.team_id, request_id)
    if row is None:
        raise not_found(f"no capacity request {request_id} in team {principal.team}")
    return row


def _validation(exc: ValidationError) -> ApiError:
    details = [
        {
            "loc": "body." + ".".join(str(p) for p in e["loc"]) if e["loc"] else "body",
            "field": ".".join(str(p) for p in e["loc"]) or "body",
            "message": e["msg"],
            "type": e["type"],
        }
        for e in exc.errors()
    ]
    fields = ", ".join(dict.fromkeys(d["field"] for d in details))
    message = f"invalid {fields}: " + "; ".join(d["message"] for d in details)
    return ApiError(422, "invalid_request", message, details)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RequestPublic)
def create(
    body: capacity.RequestIn,
    session: SessionDep,
    principal: Member,
    settings: SettingsDep,
    clock: ClockDep,
    idem: IdempotencyDep,
) -> RequestPublic | JSONResponse:
    """Submit a capacity request; it is scored at once (`best_option`, state `matched` when
    the market has an option, else `open`). With `Idempotency-Key`, a retry returns the
    first answer."""
    if (replayed := idem.claim(session, principal)) is not None:
        return replayed
    try:
        row = capacity.create_request(
            session, principal.team_id, body, settings=settings, clock=clock
        )
    except capacity.RequestError as exc:
        raise ApiError(
            422, exc.code, str(exc), [{"loc": f"body.{exc.field}", "field": exc.field}]
        ) from None
    return idem.remember(session, 201, _public(row))


@router.get("", response_model=Page[RequestPublic])
def list_(
    session: SessionDep,
    principal: CurrentPrincipal,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    state: Annotated[
        list[capacity.RequestState] | None, Query(description="Only these states.")
    ] = None,
) -> Page[RequestPublic]:
    """The team's requests, oldest first."""
    states = [str(s) for s in state or ()]
    rows, nxt = id_page(
        "requests",
        cursor,
        limit,
        lambda after, n: capacity.list_requests(
            session, principal.team_id, states=states, after_id=after, limit=n
        ),
    )
    return Page[RequestPublic](data=[_public(r) for r in rows], next_cursor=nxt)


@router.get("/{request_id}", response_model=RequestPublic)
def read(request_id: RequestId, session: SessionDep, principal: CurrentPrincipal) -> RequestPublic:
    return _public(_own(session, principal, request_id))


@router.patch("/{request_id}", response_model=RequestPublic)
def patch(
    request_id: RequestId,
    body: Annotated[capacity.RequestPatch, Body()],
    session: SessionDep,
    principal: Member,
    settings: SettingsDep,
    clock: ClockDep,
) -> RequestPublic:
    """Change any field (the whole request is validated again and rescored), or set
    `state` to `fulfilled` or `cancelled`. A closed request cannot change (409)."""
    row = _own(session, principal, request_id)
    try:
        capacity.update_request(session, row, body, settings=settings, clock=clock)
    except ValidationError as exc:
        raise _validation(exc) from None
    except capacity.RequestError as exc:
        if exc.code == "request_closed":
            raise ApiError(409, exc.code, str(exc), {"state": row.state}) from None
        raise ApiError(
            422, exc.code, str(exc), [{"loc": f"body.{exc.field}", "field": exc.field}]
        ) from None
    return _public(row)


@router.delete("/{request_id}", response_model=RequestPublic)
def cancel(
    request_id: RequestId,
    session: SessionDep,
    principal: Member,
    settings: SettingsDep,
    clock: ClockDep,
) -> RequestPublic:
    """Cancel the request (kept, in state `cancelled`, with its events). Idempotent."""
    row = _own(session, principal, request_id)
    if row.state != capacity.RequestState.CANCELLED:
        try:
            capacity.update_request(
                session,
                row,
                capacity.RequestPatch(state=capacity.RequestState.CANCELLED),
                settings=settings,
                clock=clock,
            )
        except capacity.RequestError as exc:
            raise ApiError(409, exc.code, str(exc), {"state": row.state}) from None
    return _public(row)


@router.get("/{request_id}/recommendations", response_model=Recommendations)
def recommendations(
    request_id: RequestId,
    session: SessionDep,
    principal: CurrentPrincipal,
    settings: SettingsDep,
    clock: ClockDep,
    limit: Annotated[int, Query(ge=1, le=500, description="Options to return.")] = 20,
) -> Recommendations:
    """Every way the current market can serve the request, best first, each with its score,
    time to power (+ confidence), total cost, price per GPU-hour, Pareto flag and an
    explanation; and `excluded`: each offer family that did not qualify, with a reason
    (`residency`, `gpu_model`, `price`, `count`, `market`, `starts_too_late`, `stale`,
    `unavailable`, `duration`) and a sentence."""
    row = _own(session, principal, request_id)
    rec = capacity.recommendations(session, row, settings=settings, clock=clock)
    assert row.id is not None
    return Recommendations(request_id=row.id, state=row.state, **rec.as_dict(limit=limit))


@router.get("/{request_id}/events", response_model=Page[RequestEventPublic])
def events(
    request_id: RequestId,
    session: SessionDep,
    principal: CurrentPrincipal,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[RequestEventPublic]:
    """The request's events (`best_option_changed`, `state_changed`), oldest first."""
    row = _own(session, principal, request_id)
    rows, nxt = id_page(
        "request_events",
        cursor,
        limit,
        lambda after, n: capacity.request_events(session, row, after_id=after, limit=n),
    )
    return Page[RequestEventPublic](
        data=[RequestEventPublic.model_validate(r, from_attributes=True) for r in rows],
        next_cursor=nxt,
    )
