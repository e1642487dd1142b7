"""`/v1/reservations` and `POST /v1/requests/{id}/reserve`: the team's reservation ledger.

Thin: validation is `broker.ledger`'s models (every error names its field, or the CSV line
and field), storage and the double-booking guard are `broker.ledger`. Another team's
reservation (or request) is a 404. Reading needs any role; booking, recording, changing and
reporting usage need the member role. Every change appends a ledger entry whose actor is
`team/key-prefix` of the caller's API key.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, PlainSerializer
from sqlmodel import Session

from broker import ledger
from broker import requests as capacity
from broker.api.deps import ClockDep, CurrentPrincipal, SessionDep, SettingsDep, require_role
from broker.api.errors import ApiError, not_found
from broker.api.idempotency import IdempotencyDep
from broker.api.pagination import (
    CursorQuery,
    LimitQuery,
    Page,
    RequestId,
    ReservationId,
    id_page,
)
from broker.auth import Principal
from broker.models import Reservation

router = APIRouter(tags=["reservations"])

Member = Annotated[Principal, Depends(require_role("member"))]


def _count(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


#: A Decimal count (GPUs, hours) as a JSON number: an integer when whole (16, not 16.0).
Count = Annotated[Decimal, PlainSerializer(_count, return_type=int | float, when_used="json")]

CSV_BODY = {
    "requestBody": {
        "required": True,
        "content": {"text/csv": {"schema": {"type": "string", "format": "binary"}}},
    }
}


class ReservationPublic(BaseModel):
    """A reservation as the ledger holds it. Money is an exact decimal string in `currency`."""

    id: int
    request_id: int | None
    source: str = Field(description="`request` (booked from an offer), `api` or `import`.")
    offer_key: str | None
    instances: int | None
    provider: str
    gpu_model: str
    gpu_family: str
    gpus: Count
    region: str
    country: str | None
    jurisdiction: str | None
    starts_at: datetime
    ends_at: datetime
    term_hours: Count
    currency: str
    rate_per_gpu_hour: str
    upfront_fee_usd: str
    total_commitment: str = Field(description="rate × GPUs × term hours + upfront fee.")
    kind: ledger.ReservationKind
    state: ledger.ReservationState
    counterparty: str | None
    notes: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    activated_at: datetime | None
    cancelled_at: datetime | None


class Booked(BaseModel):
    """What a booking made: one reservation per offer, and the request's state after it."""

    request_id: int
    request_state: str
    reservations: list[ReservationPublic]


class Imported(BaseModel):
    imported: int
    reservations: list[ReservationPublic]


class LedgerEntryPublic(BaseModel):
    id: int
    reservation_id: int
    at: datetime
    actor: str = Field(description="`team/key-prefix` of the API key, `cli` or `system`.")
    action: str
    reason: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class UsagePublic(BaseModel):
    id: int
    reservation_id: int
    period_start: datetime
    period_end: datetime
    gpu_hours: Count
    source: str
    recorded_by: str
    recorded_at: datetime


class UsageImported(BaseModel):
    imported: int
    usage: list[UsagePublic]


def _public(row: Reservation) -> ReservationPublic:
    return ReservationPublic.model_validate(ledger.reservation_out(row))


def _usage_public(row: Any) -> UsagePublic:
    return UsagePublic.model_validate(row, from_attributes=True)


def actor_of(principal: Principal) -> str:
    return f"{principal.team}/{principal.prefix}"


def _own(session: Session, principal: Principal, reservation_id: int) -> Reservation:
    row = ledger.get_reservation(session, principal.team_id, reservation_id)
    if row is None:
        raise not_found(f"no reservation {reservation_id} in team {principal.team}")
    return row


def _invalid(exc: ledger.LedgerInvalid) -> ApiError:
    """422: `invalid_csv` naming each bad line and field, or `invalid_request` naming the
    body field."""
    if exc.field == "file" or any("line" in d for d in exc.details):
        lines = [d for d in exc.details if "line" in d]
        return ApiError(
            422, "invalid_csv", str(exc), lines or [{"field": "file", "message": str(exc)}]
        )
    details = [{"loc": f"body.{d['field']}", **d} for d in exc.details]
    return ApiError(422, "invalid_request", f"invalid {exc.field}: {exc}", details)


def _conflict(exc: ledger.LedgerConflict) -> ApiError:
    return ApiError(409, exc.code, str(exc), exc.details)


async def _csv_body(request: Request) -> bytes:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("text/csv", "text/plain", "application/csv", "application/octet-stream"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the CSV as the request body with Content-Type: text/csv",
        )
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > ledger.MAX_CSV_BYTES:
            raise ApiError(
                413, "payload_too_large", f"the CSV is larger than {ledger.MAX_CSV_BYTES:,} bytes"
            )
    request._body = data  # Starlette's cache: later readers (Idempotency-Key) see the body
    return data


CsvBody = Annotated[bytes, Depends(_csv_body)]


# ----------------------------------------------------------------------- booking


@router.post(
    "/requests/{request_id}/reserve",
    status_code=status.HTTP_201_CREATED,
    response_model=Booked,
    responses={409: {"description": "Closed request; offer withdrawn, stale or full."}},
)
def reserve(
    request_id: RequestId,
    body: ledger.ReserveIn,
    session: SessionDep,
    principal: Member,
    settings: SettingsDep,
    clock: ClockDep,
    idem: IdempotencyDep,
) -> Booked | JSONResponse:
    """Book a chosen option of the request's recommendations: `offers` (each `key` with
    `instances` or `gpus`, as an option lists them), `starts_at` (default now, or a
    capacity block's start) and `duration_hours` (default the request's). One `held`
    reservation per offer, all or none, at the offer's rate and fee now. The request becomes
    `fulfilled` once its live reservations hold all its GPUs. 409 `capacity_exhausted` when
    an offer has no room left (its stated quantity is held by live reservations)."""
    row = capacity.get_request(session, principal.team_id, request_id)
    if row is None:
        raise not_found(f"no capacity request {request_id} in team {principal.team}")
    if (replayed := idem.claim(session, principal)) is not None:
        return replayed
    try:
        booking = ledger.reserve(
            session, row, body, actor=actor_of(principal), settings=settings, now=clock()
        )
    except ledger.LedgerInvalid as exc:
        raise _invalid(exc) from None
    except ledger.LedgerConflict as exc:
        raise _conflict(exc) from None
    assert row.id is not None
    return idem.remember(
        session,
        201,
        Booked(
            request_id=row.id,
            request_state=booking.request.state,
            reservations=[_public(r) for r in booking.reservations],
        ),
    )


# ------------------------------------------------------------------ reservations


@router.post(
    "/reservations",
    status_code=status.HTTP_201_CREATED,
    response_model=ReservationPublic,
)
def record(
    body: ledger.CommitmentIn,
    session: SessionDep,
    principal: Member,
    clock: ClockDep,
    idem: IdempotencyDep,
) -> ReservationPublic | JSONResponse:
    """Record a commitment made outside the broker (`active`, or `held` if asked; `expired`
    if already over)."""
    if (replayed := idem.claim(session, principal)) is not None:
        return replayed
    row = ledger.record_commitment(
        session, principal.team_id, body, actor=actor_of(principal), now=clock()
    )
    return idem.remember(session, 201, _public(row))


@router.post(
    "/reservations/import",
    status_code=status.HTTP_201_CREATED,
    response_model=Imported,
    openapi_extra=CSV_BODY,
)
def import_(
    principal: Member,  # first: a viewer is refused before the body is read
    data: CsvBody,
    session: SessionDep,
    clock: ClockDep,
    idem: IdempotencyDep,
) -> Imported | JSONResponse:
    """A CSV of commitments (header: the fields of `POST /v1/reservations`; `provider,
    gpu_model, gpus, region, starts_at, ends_at, rate_per_gpu_hour, kind` required). All
    rows or none: any bad row is a 422 `invalid_csv` whose `details` name each bad
    `line` and `field`."""
    if (replayed := idem.claim(session, principal)) is not None:
        return replayed
    try:
        rows = ledger.import_commitments(
            session, principal.team_id, data, actor=actor_of(principal), now=clock()
        )
    except ledger.LedgerInvalid as exc:
        raise _invalid(exc) from None
    return idem.remember(
        session, 201, Imported(imported=len(rows), reservations=[_public(r) for r in rows])
    )


@router.post(
    "/reservations/usage/import",
    status_code=status.HTTP_201_CREATED,
    response_model=UsageImported,
    openapi_extra=CSV_BODY,
)
def import_usage(
    principal: Member, data: CsvBody, session: SessionDep, clock: ClockDep
) -> UsageImported:
    """A CSV of usage: `reservation_id, period_start, period_end, gpu_hours`. All rows or
    none (422 `invalid_csv` naming each bad line and field)."""
    try:
        rows = ledger.import_usage(
            session, principal.team_id, data, actor=actor_of(principal), now=clock()
        )
    except ledger.LedgerInvalid as exc:
        raise _invalid(exc) from None
    return UsageImported(imported=len(rows), usage=[_usage_public(r) for r in rows])


@router.get("/reservations", response_model=Page[ReservationPublic])
def list_(
    session: SessionDep,
    principal: CurrentPrincipal,
    clock: ClockDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    state: Annotated[
        list[ledger.ReservationState] | None, Query(description="Only these states.")
    ] = None,
) -> Page[ReservationPublic]:
    """The team's reservations, oldest first (ended ones are expired first)."""
    ledger.expire_reservations(session, clock())
    states = [str(s) for s in state or ()]
    rows, nxt = id_page(
        "reservations",
        cursor,
        limit,
        lambda after, n: ledger.list_reservations(
            session, principal.team_id, states=states, after_id=after, limit=n
        ),
    )
    return Page[ReservationPublic](data=[_public(r) for r in rows], next_cursor=nxt)


@router.get("/reservations/{reservation_id}", response_model=ReservationPublic)
def read(
    reservation_id: ReservationId, session: SessionDep, principal: CurrentPrincipal, clock: ClockDep
) -> ReservationPublic:
    ledger.expire_reservations(session, clock())
    return _public(_own(session, principal, reservation_id))


@router.patch("/reservations/{reservation_id}", response_model=ReservationPublic)
def patch(
    reservation_id: ReservationId,
    body: Annotated[ledger.ReservationPatch, Body()],
    session: SessionDep,
    principal: Member,
    clock: ClockDep,
) -> ReservationPublic:
    """Change a live reservation, saying why (`reason`, required): `state` `active`
    (activate a held one) or `cancelled`; a later `ends_at` (extend; re-checked against the
    offer's room); `rate_per_gpu_hour` / `upfront_fee_usd` (amend); `counterparty`,
    `notes`. Each change appends a ledger entry with the values before and after. An
    expired or cancelled reservation cannot change (409)."""
    now = clock()
    ledger.expire_reservations(session, now)
    row = _own(session, principal, reservation_id)
    try:
        ledger.change(session, row, body, actor=actor_of(principal), now=now)
    except ledger.LedgerInvalid as exc:
        raise _invalid(exc) from None
    except ledger.LedgerConflict as exc:
        raise _conflict(exc) from None
    return _public(row)


@router.get("/reservations/{reservation_id}/history", response_model=Page[LedgerEntryPublic])
def history(
    reservation_id: ReservationId,
    session: SessionDep,
    principal: CurrentPrincipal,
    clock: ClockDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> Page[LedgerEntryPublic]:
    """The reservation's ledger entries, oldest first: who, when, why, before and after."""
    ledger.expire_reservations(session, clock())
    row = _own(session, principal, reservation_id)
    rows, nxt = id_page(
        "ledger",
        cursor,
        limit,
        lambda after, n: ledger.history(session, row, after_id=after, limit=n),
    )
    return Page[LedgerEntryPublic](
        data=[LedgerEntryPublic.model_validate(r, from_attributes=True) for r in rows],
        next_cursor=nxt,
    )


@router.post(
    "/reservations/{reservation_id}/usage",
    status_code=status.HTTP_201_CREATED,
    response_model=UsagePublic,
)
def add_usage(
    reservation_id: ReservationId,
    body: ledger.UsageIn,
    session: SessionDep,
    principal: Member,
    clock: ClockDep,
) -> UsagePublic:
    """GPU-hours used over a period (inside the term, ended, at most GPUs × hours, not
    overlapping earlier usage of the reservation: 409 `usage_overlap`)."""
    row = _own(session, principal, reservation_id)
    try:
        sample = ledger.record_usage(session, row, body, actor=actor_of(principal), now=clock())
    except ledger.LedgerInvalid as exc:
        raise _invalid(exc) from None
    except ledger.LedgerConflict as exc:
        raise _conflict(exc) from None
    return _usage_public(sample)


@router.get("/reservations/{reservation_id}/usage", response_model=list[UsagePublic])
def list_usage(
    reservation_id: ReservationId, session: SessionDep, principal: CurrentPrincipal
) -> list[UsagePublic]:
    """The reservation's usage samples, by period."""
    row = _own(session, principal, reservation_id)
    return [_usage_public(s) for s in ledger.usage_of(session, row)]
