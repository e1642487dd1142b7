"""The reservation ledger: what a team has committed to, with whom, until when, for how much.

A `Reservation` is booked through the broker from offers (`reserve`: a capacity request's
chosen option) or records a commitment made outside it (`record_commitment`, or a CSV of
them with `import_commitments`). Nothing is updated without a trace: every change
(`change`: activate, extend, amend the rate or fee, cancel; `expire_reservations`) appends a
`LedgerEntry` saying who, when, why, and the fields before and after. Usage (GPU-hours used
over a period) is recorded against a reservation (`record_usage`, `import_usage`) for the
utilisation risk of `broker.risk`. No HTTP here: `broker.api.routes.reservations` maps these
functions onto endpoints; errors are `LedgerInvalid` (a field or CSV row is wrong: 422) and
`LedgerConflict` (the store's state refuses it: 409).

States: `held` (booked, not yet confirmed running; broker bookings start here) → `active`
(in force; external commitments start here) → `expired` (its end passed:
`expire_reservations` in `broker.ledger_expiry`, run by the scheduler and before every
report, never ahead of the database's clock) | `cancelled`.

No double booking. Booking from an offer locks the offer rows (`SELECT ... FOR UPDATE` on
PostgreSQL; on SQLite the first write takes the database's single write lock) before
counting the GPUs that live (`held`/`active`) reservations already hold on each offer over
an overlapping period; more than the offer's stated quantity (`available_count` instances ×
`gpu_count`) is refused. A capacity-block offering is bought whole, and a partial unique
index allows one live reservation per capacity-block offer key: the database itself refuses
a second. Offers whose provider states no quantity (price lists) cannot be overbooked as
far as the broker knows, so they are not capped.

Money is `Decimal` in `currency` (only USD: every price the broker reads is USD); rates per
GPU-hour with six decimals.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import Table, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from broker import gpus, regions
from broker import requests as capacity
from broker.config import Settings
from broker.db import keyset_page
from broker.domain import Availability, Market, to_price
from broker.ledger_expiry import SYSTEM_ACTOR as SYSTEM_ACTOR  # re-exported
from broker.ledger_expiry import expire_reservations as expire_reservations  # re-exported
from broker.ledger_expiry import expiry_cutoff
from broker.models import (
    LIVE_RESERVATION_STATES,
    CapacityRequest,
    LedgerEntry,
    Reservation,
    StoredOffer,
    UsageSample,
)
from broker.scoring import MarketOffer, ScoringConfig, max_instances


class ReservationKind(StrEnum):
    ON_DEMAND_HOLD = "on_demand_hold"
    SPOT = "spot"
    CAPACITY_BLOCK = "capacity_block"
    RESERVED_1Y = "reserved_1y"
    RESERVED_3Y = "reserved_3y"
    CONTRACT = "contract"


class ReservationState(StrEnum):
    HELD = "held"
    ACTIVE = "active"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class Action(StrEnum):
    CREATED = "created"
    ACTIVATED = "activated"
    EXTENDED = "extended"
    RATE_AMENDED = "rate_amended"
    AMENDED = "amended"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


LIVE_STATES = tuple(ReservationState(s) for s in LIVE_RESERVATION_STATES)
CLOSED_STATES = (ReservationState.EXPIRED, ReservationState.CANCELLED)
#: A provider the broker does not track (a colo contract, a neocloud without an adapter).
OTHER_PROVIDER = "other"
CURRENCIES = ("USD",)
#: The longest commitment the ledger takes (a 3-year reservation is 26,280 h).
MAX_TERM = timedelta(days=3660)
MIN_YEAR, MAX_YEAR = 1970, 9000
#: A booking starts at most this far ahead.
MAX_LEAD = timedelta(days=1100)
#: A booking may start this long before "now" (clock skew, a slow client), not earlier.
START_SLACK = timedelta(hours=1)
#: Hours from which a reserved offer's term counts as three years.
THREE_YEARS_HOURS = 3 * 8760
MAX_CSV_BYTES = 5_000_000
MAX_CSV_ROWS = 10_000
_RES = Reservation.__table__  # type: ignore[attr-defined]
_OFFERS = StoredOffer.__table__  # type: ignore[attr-defined]
_REQUESTS = CapacityRequest.__table__  # type: ignore[attr-defined]


# ------------------------------------------------------------------------- errors


class LedgerInvalid(ValueError):
    """A field (or CSV rows) the ledger refuses; `details` name each field or line."""

    def __init__(self, field: str, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.field = field
        self.details = details if details is not None else [{"field": field, "message": message}]


class LedgerConflict(Exception):
    """The store's state refuses the change (capacity taken, reservation closed...)."""

    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.details = dict(details or {})


# --------------------------------------------------------------------- validation


def _no_nul(v: str | None) -> str | None:
    if v is not None and "\x00" in v:
        raise ValueError("must not contain NUL characters")
    return v


def _clean_text(v: str | None) -> str | None:
    _no_nul(v)
    if v is None:
        return None
    return v.strip() or None


@functools.cache
def known_providers() -> frozenset[str]:
    """Provider ids a commitment may name: every provider of the region table, and `other`."""
    return frozenset(regions.load_table().providers()) | {OTHER_PROVIDER}


def canonical_gpu(name: str) -> gpus.GpuModel:
    """The catalogue entry of a model name (`H100-SXM`, `H100`) or a provider's spelling
    (`NVIDIA H100 80GB HBM3`, `h100 sxm`).

    Raises:
        gpus.UnknownGpu: neither; the message names near matches.
    """
    try:
        return gpus.get(name)
    except gpus.UnknownGpu:
        model = gpus.normalise(name) if name.strip() else None
        if model is None:
            raise
        return model


def _money(v: Decimal, what: str) -> Decimal:
    if not v.is_finite():
        raise ValueError(f"{what} must be a finite number")
    return to_price(v)


AwareDatetime = Annotated[datetime, Field(description="ISO 8601 with a timezone")]
Rate = Annotated[
    Decimal,
    Field(ge=0, le=1_000_000, allow_inf_nan=False, description='Per GPU-hour, e.g. "2.99".'),
]
Fee = Annotated[Decimal, Field(ge=0, le=100_000_000_000, allow_inf_nan=False)]


def _aware(v: datetime | None) -> datetime | None:
    """A time with a timezone, as UTC, between the years 1970 and 9000."""
    if v is None:
        return None
    if v.tzinfo is None:
        raise ValueError("must include a timezone, e.g. 2026-12-01T00:00:00Z")
    try:
        utc = v.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None
    if not MIN_YEAR <= utc.year <= MAX_YEAR:
        raise ValueError(f"must be between the years {MIN_YEAR} and {MAX_YEAR}")
    return utc


class CommitmentIn(BaseModel):
    """`POST /v1/reservations` body and each row of `POST /v1/reservations/import`: a
    commitment made outside the broker. The team comes from the API key."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(
        min_length=1,
        max_length=64,
        description="A provider id of the broker (aws, gcp, azure, lambda_cloud, runpod, "
        "vast, verda, oci, ...) or `other` for one it does not track.",
    )
    gpu_model: str = Field(
        min_length=1,
        max_length=64,
        description="A GPU model or family (H100-SXM, H100, A100-80GB); stored canonical.",
    )
    gpus: int = Field(gt=0, le=1_000_000)
    region: str = Field(
        min_length=1,
        max_length=128,
        description="The provider's region id (eu-west-1); free text for `other`.",
    )
    country: str | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="ISO 3166-1 alpha-2; required for `other` (gives the jurisdiction), "
        "otherwise taken from the region and checked if given.",
    )
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    rate_per_gpu_hour: Rate
    upfront_fee_usd: Fee = Decimal(0)
    currency: str = Field(default="USD", max_length=3, description="Only USD.")
    kind: ReservationKind
    counterparty: str | None = Field(default=None, max_length=256)
    notes: str | None = Field(default=None, max_length=2000)
    state: Literal["held", "active"] | None = Field(
        default=None,
        description="Default `active` (the commitment exists); `held` for one not yet "
        "confirmed. A commitment already over is recorded `expired`.",
    )

    _text = field_validator("counterparty", "notes")(_clean_text)
    _times = field_validator("starts_at", "ends_at")(_aware)

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, v: str) -> str:
        _no_nul(v)
        name = v.strip().lower()
        if name not in known_providers():
            raise ValueError(
                f"unknown provider {v!r}; use one of {', '.join(sorted(known_providers()))}"
            )
        return name

    @field_validator("gpu_model")
    @classmethod
    def _known_gpu(cls, v: str) -> str:
        _no_nul(v)
        return canonical_gpu(v).name

    @field_validator("region")
    @classmethod
    def _region_text(cls, v: str) -> str:
        _no_nul(v)
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()

    @field_validator("country")
    @classmethod
    def _country(cls, v: str | None) -> str | None:
        if v is None:
            return None
        code = v.strip().upper()
        known = capacity.known_place_codes() - {"EU"}
        if code not in known:
            raise ValueError(
                f"unknown country code {v!r}; use an ISO 3166-1 alpha-2 code of a known "
                f"region ({', '.join(sorted(known))})"
            )
        return code

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        code = v.strip().upper()
        if code not in CURRENCIES:
            raise ValueError(
                f"unsupported currency {v!r}: only {', '.join(CURRENCIES)} (every price the "
                "broker reads is in USD)"
            )
        return code

    @field_validator("rate_per_gpu_hour", "upfront_fee_usd")
    @classmethod
    def _six_places(cls, v: Decimal) -> Decimal:
        return _money(v, "money")

    @model_validator(mode="after")
    def _consistent(self) -> CommitmentIn:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        if self.ends_at - self.starts_at > MAX_TERM:
            raise ValueError(f"the term is longer than {MAX_TERM.days} days")
        if self.provider == OTHER_PROVIDER:
            if self.country is None:
                raise ValueError(
                    "country is required for provider `other` (it gives the jurisdiction)"
                )
            return self
        info = regions.resolve(self.provider, self.region)
        if info is None:
            near = regions.suggest(self.provider, self.region)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ValueError(f"unknown region {self.region!r} of {self.provider}{hint}")
        if self.country is not None and self.country != info.country:
            raise ValueError(
                f"country {self.country} does not match region {self.region} of "
                f"{self.provider} ({info.country})"
            )
        return self

    def place(self) -> tuple[str | None, str | None]:
        """(country, jurisdiction) of the commitment."""
        if self.provider != OTHER_PROVIDER:
            info = regions.resolve(self.provider, self.region)
            if info is not None:
                return info.country, info.jurisdiction
        if self.country is None:
            return None, None
        return self.country, regions.jurisdiction_for_country(self.country)


class ReservePart(BaseModel):
    """One offer of the chosen option: its key and how many instances (or GPUs)."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=512)
    instances: int | None = Field(default=None, gt=0, le=100_000)
    gpus: Decimal | None = Field(default=None, gt=0, le=1_000_000, allow_inf_nan=False)

    _key = field_validator("key")(_no_nul)

    @model_validator(mode="after")
    def _some_size(self) -> ReservePart:
        if self.instances is None and self.gpus is None:
            raise ValueError("give instances or gpus")
        return self


class ReserveIn(BaseModel):
    """`POST /v1/requests/{id}/reserve`: book a recommendation (its `offers` list can be
    passed as is)."""

    model_config = ConfigDict(extra="forbid")

    offers: list[ReservePart] = Field(min_length=1, max_length=20)
    starts_at: AwareDatetime | None = Field(
        default=None,
        description="Default: now, or a capacity block's start.",
    )
    duration_hours: int | None = Field(
        default=None, gt=0, le=87_840, description="Default: the request's duration."
    )
    notes: str | None = Field(default=None, max_length=2000)

    _text = field_validator("notes")(_clean_text)
    _times = field_validator("starts_at")(_aware)

    @field_validator("offers")
    @classmethod
    def _distinct(cls, v: list[ReservePart]) -> list[ReservePart]:
        keys = [p.key for p in v]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"an offer appears twice: {', '.join(dupes)}")
        return v


class ReservationPatch(BaseModel):
    """`PATCH /v1/reservations/{id}`: one or more changes and why (each change appends a
    ledger entry)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=1000, description="Why: kept in the ledger.")
    state: Literal["active", "cancelled"] | None = Field(
        default=None, description="`active` (from held) or `cancelled`."
    )
    ends_at: AwareDatetime | None = Field(default=None, description="Extend: a later end.")
    rate_per_gpu_hour: Rate | None = None
    upfront_fee_usd: Fee | None = None
    counterparty: str | None = Field(default=None, max_length=256)
    notes: str | None = Field(default=None, max_length=2000)

    _text = field_validator("counterparty", "notes", "reason")(_clean_text)
    _times = field_validator("ends_at")(_aware)

    @field_validator("rate_per_gpu_hour", "upfront_fee_usd")
    @classmethod
    def _six_places(cls, v: Decimal | None) -> Decimal | None:
        return None if v is None else _money(v, "money")


class UsageIn(BaseModel):
    """GPU-hours used against a reservation over one period."""

    model_config = ConfigDict(extra="forbid")

    period_start: AwareDatetime
    period_end: AwareDatetime
    gpu_hours: Decimal = Field(ge=0, le=1_000_000_000, allow_inf_nan=False)

    _times = field_validator("period_start", "period_end")(_aware)

    @field_validator("gpu_hours")
    @classmethod
    def _three_places(cls, v: Decimal) -> Decimal:
        return v.quantize(Decimal("0.001"))

    @model_validator(mode="after")
    def _ordered(self) -> UsageIn:
        if self.period_end <= self.period_start:
            raise ValueError("period_end must be after period_start")
        return self


class UsageRowIn(UsageIn):
    """A row of the usage CSV: the reservation it counts against, then the usage."""

    reservation_id: int = Field(gt=0, le=2**63 - 1)


# ------------------------------------------------------------------------ helpers


def hours_between(start: datetime, end: datetime) -> Decimal:
    delta = end - start
    micro = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return Decimal(micro) / Decimal(3_600_000_000)


def money_str(d: Decimal) -> str:
    """A money amount as text: at least two decimals, no float noise (`2.99`, `0.123456`)."""
    n = d.normalize()
    exponent = n.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        return f"{n:f}"
    return f"{d.quantize(Decimal('0.01')):f}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return money_str(value) if value != value.to_integral_value() else str(int(value))
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def snapshot(row: Reservation, fields: Iterable[str]) -> dict[str, Any]:
    return {f: _jsonable(getattr(row, f)) for f in fields}


def total_commitment(row: Reservation) -> Decimal:
    """rate × GPUs × term hours + upfront fee, to the cent."""
    total = row.rate_per_gpu_hour * row.gpus * hours_between(row.starts_at, row.ends_at)
    return (total + row.upfront_fee_usd).quantize(Decimal("0.01"))


def reservation_out(row: Reservation) -> dict[str, Any]:
    return {
        "id": row.id,
        "request_id": row.request_id,
        "source": row.source,
        "offer_key": row.offer_key,
        "instances": row.instances,
        "provider": row.provider,
        "gpu_model": row.gpu_model,
        "gpu_family": row.gpu_family,
        "gpus": row.gpus,
        "region": row.region,
        "country": row.country,
        "jurisdiction": row.jurisdiction,
        "starts_at": row.starts_at,
        "ends_at": row.ends_at,
        "term_hours": hours_between(row.starts_at, row.ends_at),
        "currency": row.currency,
        "rate_per_gpu_hour": money_str(row.rate_per_gpu_hour),
        "upfront_fee_usd": money_str(row.upfront_fee_usd),
        "total_commitment": money_str(total_commitment(row)),
        "kind": row.kind,
        "state": row.state,
        "counterparty": row.counterparty,
        "notes": row.notes,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "activated_at": row.activated_at,
        "cancelled_at": row.cancelled_at,
    }


def _entry(
    row: Reservation,
    action: Action,
    *,
    actor: str,
    at: datetime,
    reason: str | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> LedgerEntry:
    assert row.id is not None
    return LedgerEntry(
        reservation_id=row.id,
        team_id=row.team_id,
        at=at,
        actor=actor,
        action=str(action),
        reason=reason,
        before=before,
        after=after,
    )


_CREATED_FIELDS = (
    "state",
    "kind",
    "provider",
    "offer_key",
    "instances",
    "gpu_model",
    "gpus",
    "region",
    "jurisdiction",
    "starts_at",
    "ends_at",
    "currency",
    "rate_per_gpu_hour",
    "upfront_fee_usd",
    "counterparty",
)


def _lock(session: Session, table: Table, column: str, values: Sequence[Any]) -> None:
    """Lock rows for the rest of the transaction, in `values` order (sorted by the caller:
    every booking takes its locks in the same order, so two never deadlock).

    PostgreSQL: `SELECT ... FOR UPDATE`. SQLite has no row locks; a no-op UPDATE takes its
    single write lock, which serialises every writer until commit."""
    conn = session.connection()
    c = table.c[column]
    if conn.dialect.name == "postgresql":
        for v in values:
            conn.execute(select(table.c.id).where(c == v).with_for_update())
    else:
        conn.execute(update(table).where(c.in_(list(values))).values(id=table.c.id))


def reserved_gpus(
    session: Session,
    offer_key: str,
    start: datetime,
    end: datetime,
    *,
    excluding: int | None = None,
) -> Decimal:
    """GPUs that live reservations hold on `offer_key` at some time in [start, end)."""
    stmt = select(func.coalesce(func.sum(_RES.c.gpus), 0)).where(
        _RES.c.offer_key == offer_key,
        _RES.c.state.in_(LIVE_RESERVATION_STATES),
        _RES.c.starts_at < end,
        _RES.c.ends_at > start,
    )
    if excluding is not None:
        stmt = stmt.where(_RES.c.id != excluding)
    return Decimal(session.connection().execute(stmt).scalar_one())


def _capacity_check(
    session: Session,
    offer: StoredOffer,
    want: Decimal,
    start: datetime,
    end: datetime,
    *,
    excluding: int | None = None,
) -> None:
    most = max_instances(MarketOffer.from_row(offer), ScoringConfig())
    if most is None:
        return
    room = offer.gpu_count * most
    taken = reserved_gpus(session, offer.key, start, end, excluding=excluding)
    if taken + want > room:
        free = max(Decimal(0), room - taken)
        raise LedgerConflict(
            "capacity_exhausted",
            f"offer {offer.key} has room for {_n(room)} GPUs ({most} "
            f"instance{'s' if most != 1 else ''} × {_n(offer.gpu_count)}); live "
            f"reservations already hold {_n(taken)} of them between "
            f"{start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} UTC, so "
            f"{_n(want)} more cannot be booked ({_n(free)} free)",
            {
                "offer_key": offer.key,
                "capacity_gpus": _n(room),
                "reserved_gpus": _n(taken),
                "requested_gpus": _n(want),
                "free_gpus": _n(free),
            },
        )


def _n(d: Decimal) -> str:
    return str(int(d)) if d == d.to_integral_value() else f"{d.normalize():f}"


def _kind_of(offer: StoredOffer) -> ReservationKind:
    market = Market(offer.market)
    if market == Market.SPOT:
        return ReservationKind.SPOT
    if market == Market.CAPACITY_BLOCK:
        return ReservationKind.CAPACITY_BLOCK
    if market == Market.RESERVED:
        long = (offer.min_duration_hours or 0) >= THREE_YEARS_HOURS
        return ReservationKind.RESERVED_3Y if long else ReservationKind.RESERVED_1Y
    return ReservationKind.ON_DEMAND_HOLD


def _flush(session: Session) -> None:
    """Flush; a live capacity-block reservation already holding the offer (the partial
    unique index) is a conflict, not an error."""
    try:
        session.flush()
    except IntegrityError as exc:
        if "uq_reservations_live_capacity_block" in str(exc.orig):
            raise LedgerConflict(
                "capacity_exhausted",
                "this capacity block is already reserved by a live reservation",
            ) from None
        raise


# ------------------------------------------------------------------------ booking


@dataclass(frozen=True)
class Booking:
    """What `reserve` did: the reservations (one per offer) and the request's state."""

    reservations: list[Reservation]
    request: CapacityRequest


def reserve(
    session: Session,
    request: CapacityRequest,
    body: ReserveIn,
    *,
    actor: str,
    settings: Settings,
    now: datetime,
) -> Booking:
    """Book the chosen offers for `request` (one `held` reservation per offer, all or
    none), at each offer's current rate and fee. The request becomes `fulfilled` when its
    live reservations hold at least the GPUs it asked for.

    Raises:
        LedgerInvalid: an unknown offer key, a size that is not whole instances, an offer
            that does not fit the request (GPU model, market, residency), a bad start or
            duration (the field is named).
        LedgerConflict: the request is closed; an offer is withdrawn, stale or sold out;
            the offer has no room left (`capacity_exhausted`).
    """
    assert request.id is not None
    _lock(session, _REQUESTS, "id", [request.id])
    session.refresh(request)
    if request.state not in capacity.LIVE_STATES:
        raise LedgerConflict(
            "request_closed",
            f"capacity request {request.id} is {request.state}; only an open or matched "
            "request can be booked",
            {"state": request.state},
        )
    keys = sorted(p.key for p in body.offers)
    _lock(session, _OFFERS, "key", keys)
    found = {
        o.key: o
        for o in session.exec(  # type: ignore[call-overload]
            select(StoredOffer).where(col(StoredOffer.key).in_(keys))
        ).scalars()
    }
    for o in found.values():
        session.refresh(o)
    spec = capacity.spec_of(request)
    duration = body.duration_hours or spec.duration_hours
    stale_before = now - timedelta(minutes=settings.stale_after_minutes)
    planned: list[tuple[StoredOffer, int, Decimal, datetime, datetime]] = []
    for i, part in enumerate(body.offers):
        where = f"offers.{i}"
        offer = found.get(part.key)
        if offer is None:
            raise LedgerInvalid(f"{where}.key", f"no offer with key {part.key!r}")
        if not offer.active:
            raise LedgerConflict(
                "offer_withdrawn",
                f"offer {offer.key} was withdrawn by {offer.provider}"
                + (f" at {offer.withdrawn_at:%Y-%m-%d %H:%M} UTC" if offer.withdrawn_at else "")
                + "; it cannot be booked",
                {"offer_key": offer.key},
            )
        if offer.last_seen < stale_before:
            raise LedgerConflict(
                "offer_stale",
                f"offer {offer.key} was last seen at {offer.last_seen:%Y-%m-%d %H:%M} UTC, "
                f"more than {settings.stale_after_minutes} min ago: its price and "
                "availability are stale; book it after the next successful poll",
                {"offer_key": offer.key, "last_seen": _jsonable(offer.last_seen)},
            )
        if offer.availability == Availability.UNAVAILABLE or offer.available_count == 0:
            raise LedgerConflict(
                "sold_out",
                f"offer {offer.key} is sold out ({offer.provider} reports it unavailable)",
                {"offer_key": offer.key},
            )
        if offer.gpu_model not in request.gpu_models:
            raise LedgerInvalid(
                f"{where}.key",
                f"offer {offer.key} carries {offer.gpu_model}, which request {request.id} "
                f"does not accept ({', '.join(sorted(request.gpu_models))})",
            )
        if Market(offer.market) not in spec.markets:
            raise LedgerInvalid(
                f"{where}.key",
                f"offer {offer.key} is in market {offer.market}, which request {request.id} "
                f"does not allow ({', '.join(sorted(str(m) for m in spec.markets))})",
            )
        rule = spec.residency.check(MarketOffer.from_row(offer))
        if rule is not None:
            template, value = rule
            sentence = template.replace("{values}", value).replace("{is}", "is")
            raise LedgerInvalid(
                f"{where}.key",
                f"offer {offer.key} breaks request {request.id}'s residency: {sentence}",
            )
        instances = _instances(part, offer, where)
        if (
            offer.market == Market.CAPACITY_BLOCK
            and offer.available_count is not None
            and instances != offer.available_count
        ):
            raise LedgerInvalid(
                f"{where}.instances",
                f"a capacity block is bought whole: offer {offer.key} is "
                f"{offer.available_count} instances, not {instances}",
            )
        start = body.starts_at or offer.earliest_start or now
        if offer.earliest_start is not None and start < offer.earliest_start:
            raise LedgerInvalid(
                "starts_at",
                f"offer {offer.key} starts at {offer.earliest_start:%Y-%m-%d %H:%M} UTC, "
                "not earlier",
            )
        if (
            offer.market == Market.CAPACITY_BLOCK
            and offer.earliest_start is not None
            and start != offer.earliest_start
        ):
            raise LedgerInvalid(
                "starts_at",
                f"capacity block {offer.key} starts at "
                f"{offer.earliest_start:%Y-%m-%d %H:%M} UTC exactly",
            )
        if start < now - START_SLACK:
            raise LedgerInvalid("starts_at", "starts_at is in the past")
        if start > now + MAX_LEAD:
            raise LedgerInvalid("starts_at", f"starts_at is more than {MAX_LEAD.days} days ahead")
        if offer.min_duration_hours is not None and duration < offer.min_duration_hours:
            raise LedgerInvalid(
                "duration_hours",
                f"offer {offer.key} commits to at least {offer.min_duration_hours} h, "
                f"not {duration} h",
            )
        if offer.max_duration_hours is not None and duration > offer.max_duration_hours:
            raise LedgerInvalid(
                "duration_hours",
                f"offer {offer.key} can be held for at most {offer.max_duration_hours} h, "
                f"not {duration} h",
            )
        end = start + timedelta(hours=duration)
        want = offer.gpu_count * instances
        _capacity_check(session, offer, want, start, end)
        planned.append((offer, instances, want, start, end))

    rows: list[Reservation] = []
    for offer, instances, want, start, end in planned:
        kind = _kind_of(offer)
        fee = (
            Decimal(0)
            if kind == ReservationKind.CAPACITY_BLOCK or offer.upfront_fee is None
            else offer.upfront_fee * instances
        )
        assert offer.gpu_model is not None  # checked against the request's models above
        row = Reservation(
            team_id=request.team_id,
            request_id=request.id,
            source="request",
            offer_key=offer.key,
            instances=instances,
            provider=offer.provider,
            gpu_model=offer.gpu_model,
            gpu_family=gpus.family_of(offer.gpu_model, offer.gpu_family),
            gpus=want,
            region=offer.region,
            country=offer.country,
            jurisdiction=offer.jurisdiction,
            starts_at=start,
            ends_at=end,
            currency=offer.currency,
            rate_per_gpu_hour=offer.price_per_gpu_hour,
            upfront_fee_usd=fee,
            kind=str(kind),
            state=str(ReservationState.HELD),
            counterparty=offer.provider,
            notes=body.notes,
            created_by=actor,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        _flush(session)
        session.add(
            _entry(
                row,
                Action.CREATED,
                actor=actor,
                at=now,
                reason=f"booked for capacity request {request.id}",
                before=None,
                after=snapshot(row, _CREATED_FIELDS),
            )
        )
        rows.append(row)
    _flush(session)
    booked = Decimal(
        session.connection()
        .execute(
            select(func.coalesce(func.sum(_RES.c.gpus), 0)).where(
                _RES.c.request_id == request.id, _RES.c.state.in_(LIVE_RESERVATION_STATES)
            )
        )
        .scalar_one()
    )
    if booked >= spec.gpus:
        capacity.update_request(
            session,
            request,
            capacity.RequestPatch(state=capacity.RequestState.FULFILLED),
            settings=settings,
            clock=lambda: now,
        )
    return Booking(rows, request)


def _instances(part: ReservePart, offer: StoredOffer, where: str) -> int:
    per = offer.gpu_count
    if part.gpus is not None:
        n = part.gpus / per
        if n != n.to_integral_value():
            raise LedgerInvalid(
                f"{where}.gpus",
                f"offer {offer.key} sells {_n(per)} GPUs per instance: {_n(part.gpus)} GPUs "
                "is not a whole number of instances",
            )
        if part.instances is not None and int(n) != part.instances:
            raise LedgerInvalid(
                f"{where}.gpus",
                f"{part.instances} instances of offer {offer.key} are "
                f"{_n(per * part.instances)} GPUs, not {_n(part.gpus)}",
            )
        return int(n)
    assert part.instances is not None
    return part.instances


# ----------------------------------------------------------- external commitments


def _new_commitment(
    team_id: int,
    body: CommitmentIn,
    *,
    actor: str,
    source: str,
    now: datetime,
    ended_by: datetime,
) -> Reservation:
    """The row of a commitment; `expired` when it ended by `ended_by` (`expiry_cutoff`:
    never ahead of the database's clock, as the expiry sweep)."""
    country, jurisdiction = body.place()
    if body.ends_at <= ended_by:
        state = ReservationState.EXPIRED
    else:
        state = ReservationState(body.state or ReservationState.ACTIVE)
    return Reservation(
        team_id=team_id,
        request_id=None,
        source=source,
        offer_key=None,
        instances=None,
        provider=body.provider,
        gpu_model=body.gpu_model,
        gpu_family=gpus.family_of(body.gpu_model),
        gpus=Decimal(body.gpus),
        region=body.region,
        country=country,
        jurisdiction=jurisdiction,
        starts_at=body.starts_at,
        ends_at=body.ends_at,
        currency=body.currency,
        rate_per_gpu_hour=body.rate_per_gpu_hour,
        upfront_fee_usd=body.upfront_fee_usd,
        kind=str(body.kind),
        state=str(state),
        counterparty=body.counterparty,
        notes=body.notes,
        created_by=actor,
        created_at=now,
        updated_at=now,
        activated_at=now if state == ReservationState.ACTIVE else None,
    )


def record_commitment(
    session: Session,
    team_id: int,
    body: CommitmentIn,
    *,
    actor: str,
    now: datetime,
    source: str = "api",
    reason: str | None = None,
    ended_by: datetime | None = None,
) -> Reservation:
    """Record a commitment made outside the broker (state `active` unless `held` is asked;
    `expired` when its end has passed by `ended_by`, default `expiry_cutoff(session, now)`:
    never by a process clock ahead of the database's)."""
    ended_by = ended_by or expiry_cutoff(session, now)
    row = _new_commitment(team_id, body, actor=actor, source=source, now=now, ended_by=ended_by)
    session.add(row)
    session.flush()
    session.add(
        _entry(
            row,
            Action.CREATED,
            actor=actor,
            at=now,
            reason=reason or "recorded an external commitment",
            before=None,
            after=snapshot(row, _CREATED_FIELDS),
        )
    )
    session.flush()
    return row


COMMITMENT_COLUMNS = tuple(CommitmentIn.model_fields)
USAGE_COLUMNS = ("reservation_id", "period_start", "period_end", "gpu_hours")


def read_csv(
    data: bytes, required: Sequence[str], allowed: Sequence[str]
) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file with a header; empty cells are dropped.

    Raises:
        LedgerInvalid: not UTF-8, too large, no header, a missing or unknown column, no
            rows (field `file`).
    """
    if len(data) > MAX_CSV_BYTES:
        raise LedgerInvalid("file", f"the CSV is larger than {MAX_CSV_BYTES:,} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LedgerInvalid("file", f"the CSV is not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise LedgerInvalid("file", "the CSV contains NUL characters")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise LedgerInvalid("file", f"line 1: {exc}") from None
    if not header:
        raise LedgerInvalid("file", "the CSV is empty: it needs a header line and rows")
    missing = [c for c in required if c not in header]
    unknown = [c for c in header if c not in allowed]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown column(s) {', '.join(unknown)}")
        raise LedgerInvalid(
            "file", f"line 1 (header): {'; '.join(parts)}; columns: {', '.join(allowed)}"
        )
    reader.fieldnames = header
    out: list[tuple[int, dict[str, str]]] = []
    try:
        for rec in reader:
            line = reader.line_num
            if None in rec:
                raise LedgerInvalid("file", f"line {line}: more cells than the header has columns")
            row = {k: v.strip() for k, v in rec.items() if v is not None and v.strip()}
            if not row:
                continue
            out.append((line, row))
            if len(out) > MAX_CSV_ROWS:
                raise LedgerInvalid("file", f"the CSV has more than {MAX_CSV_ROWS:,} rows")
    except csv.Error as exc:
        raise LedgerInvalid("file", f"line {reader.line_num}: {exc}") from None
    if not out:
        raise LedgerInvalid("file", "the CSV has a header but no rows")
    return out


def _row_errors(line: int, exc: ValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        field = ".".join(str(p) for p in e["loc"]) or "row"
        msg = str(e["msg"]).removeprefix("Value error, ")
        out.append({"line": line, "field": field, "message": msg})
    return out


def _raise_rows(errors: list[dict[str, Any]], rows: int) -> None:
    if not errors:
        return
    lines = sorted({e["line"] for e in errors})
    first = errors[0]
    raise LedgerInvalid(
        "file",
        f"{len(lines)} of {rows} rows are invalid, nothing was imported; first: line "
        f"{first['line']}, {first['field']}: {first['message']}",
        errors,
    )


def import_commitments(
    session: Session, team_id: int, data: bytes, *, actor: str, now: datetime
) -> list[Reservation]:
    """Record every row of a CSV of commitments (columns: the fields of `CommitmentIn`, by
    header name, `provider, gpu_model, gpus, region, starts_at, ends_at,
    rate_per_gpu_hour, kind` required), or none: any bad row refuses the whole file.

    Raises:
        LedgerInvalid: with one detail per bad cell, `{"line", "field", "message"}`.
    """
    required = [n for n, f in CommitmentIn.model_fields.items() if f.is_required()]
    rows = read_csv(data, required, COMMITMENT_COLUMNS)
    bodies: list[CommitmentIn] = []
    errors: list[dict[str, Any]] = []
    for line, rec in rows:
        try:
            bodies.append(CommitmentIn.model_validate(rec))
        except ValidationError as exc:
            errors += _row_errors(line, exc)
    _raise_rows(errors, len(rows))
    out = []
    ended_by = expiry_cutoff(session, now)  # once for the file, not a query per row
    for (line, _), body in zip(rows, bodies, strict=True):
        out.append(
            record_commitment(
                session,
                team_id,
                body,
                actor=actor,
                now=now,
                source="import",
                reason=f"imported from CSV line {line}",
                ended_by=ended_by,
            )
        )
    return out


# ------------------------------------------------------------------------ changes


def get_reservation(session: Session, team_id: int, reservation_id: int) -> Reservation | None:
    """The team's reservation, or None (another team's is indistinguishable from none)."""
    row = session.get(Reservation, reservation_id)
    return row if row is not None and row.team_id == team_id else None


def list_reservations(
    session: Session,
    team_id: int,
    *,
    states: Sequence[str] = (),
    after_id: int | None = None,
    limit: int = 50,
) -> list[Reservation]:
    where = [col(Reservation.team_id) == team_id]
    if states:
        where.append(col(Reservation.state).in_(list(states)))
    return keyset_page(session, Reservation, *where, after_id=after_id, limit=limit)


def history(
    session: Session, row: Reservation, *, after_id: int | None = None, limit: int = 50
) -> list[LedgerEntry]:
    where = col(LedgerEntry.reservation_id) == row.id
    return keyset_page(session, LedgerEntry, where, after_id=after_id, limit=limit)


def change(
    session: Session,
    row: Reservation,
    patch: ReservationPatch,
    *,
    actor: str,
    now: datetime,
) -> list[LedgerEntry]:
    """Apply a PATCH: each change (activate, extend, amend rate/fee, amend text, cancel)
    appends one ledger entry with the reason and the fields before and after.

    Raises:
        LedgerInvalid: nothing to change; an end that is not later; extending a
            capacity block.
        LedgerConflict: the reservation is expired or cancelled; an extension the offer
            has no room for.
    """
    assert row.id is not None
    changes = patch.model_dump(exclude_unset=True, exclude={"reason"})
    if not changes:
        raise LedgerInvalid(
            "body",
            "nothing to change: give state, ends_at, rate_per_gpu_hour, upfront_fee_usd, "
            "counterparty or notes",
        )
    _lock(session, _RES, "id", [row.id])
    session.refresh(row)
    if row.state in CLOSED_STATES:
        raise LedgerConflict(
            "reservation_closed",
            f"reservation {row.id} is {row.state}; it cannot change",
            {"state": row.state},
        )
    entries: list[LedgerEntry] = []

    def record(action: Action, fields: Sequence[str], apply: Callable[[], None]) -> None:
        before = snapshot(row, fields)
        apply()
        after = snapshot(row, fields)
        if before != after:
            entries.append(
                _entry(
                    row,
                    action,
                    actor=actor,
                    at=now,
                    reason=patch.reason,
                    before=before,
                    after=after,
                )
            )

    if patch.ends_at is not None and patch.ends_at != row.ends_at:
        new_end = patch.ends_at
        if new_end < row.ends_at:
            raise LedgerInvalid(
                "ends_at",
                f"ends_at can only move later (extend) than {_jsonable(row.ends_at)}; "
                "cancel the reservation instead of shortening it",
            )
        if row.kind == ReservationKind.CAPACITY_BLOCK:
            raise LedgerInvalid("ends_at", "a capacity block has a fixed end; book another")
        if new_end - row.starts_at > MAX_TERM:
            raise LedgerInvalid("ends_at", f"the term would exceed {MAX_TERM.days} days")
        if row.offer_key is not None:
            _lock(session, _OFFERS, "key", [row.offer_key])
            offer = session.exec(  # type: ignore[call-overload]
                select(StoredOffer).where(col(StoredOffer.key) == row.offer_key)
            ).scalar_one_or_none()
            if offer is not None:
                session.refresh(offer)
                _capacity_check(session, offer, row.gpus, row.ends_at, new_end, excluding=row.id)

        def extend() -> None:
            row.ends_at = new_end

        record(Action.EXTENDED, ["ends_at"], extend)
    rate_fields = [
        f for f in ("rate_per_gpu_hour", "upfront_fee_usd") if changes.get(f) is not None
    ]
    if rate_fields:

        def amend_rate() -> None:
            for f in rate_fields:
                setattr(row, f, getattr(patch, f))

        record(Action.RATE_AMENDED, rate_fields, amend_rate)
    text_fields = [f for f in ("counterparty", "notes") if f in changes]
    if text_fields:

        def amend_text() -> None:
            for f in text_fields:
                setattr(row, f, getattr(patch, f))

        record(Action.AMENDED, text_fields, amend_text)
    # Closed states were refused above: the state is held or active here.
    if patch.state == "active" and row.state == ReservationState.HELD:

        def activate() -> None:
            row.state = str(ReservationState.ACTIVE)
            row.activated_at = now

        record(Action.ACTIVATED, ["state", "activated_at"], activate)
    if patch.state == "cancelled":

        def cancel() -> None:
            row.state = str(ReservationState.CANCELLED)
            row.cancelled_at = now

        record(Action.CANCELLED, ["state", "cancelled_at"], cancel)
    if entries:
        row.updated_at = now
        session.add(row)
        session.add_all(entries)
        session.flush()
    return entries


# -------------------------------------------------------------------------- usage


def _usage_checks(session: Session, row: Reservation, body: UsageIn, now: datetime) -> None:
    if body.period_start < row.starts_at or body.period_end > row.ends_at:
        raise LedgerInvalid(
            "period_start" if body.period_start < row.starts_at else "period_end",
            f"the period {_jsonable(body.period_start)} to {_jsonable(body.period_end)} is "
            f"outside reservation {row.id}'s term ({_jsonable(row.starts_at)} to "
            f"{_jsonable(row.ends_at)})",
        )
    if body.period_end > now:
        raise LedgerInvalid("period_end", "the period has not ended yet")
    most = row.gpus * hours_between(body.period_start, body.period_end)
    if body.gpu_hours > most:
        raise LedgerInvalid(
            "gpu_hours",
            f"{_n(body.gpu_hours)} GPU-hours is more than reservation {row.id}'s "
            f"{_n(row.gpus)} GPUs can run in that period ({_n(most.quantize(Decimal('0.001')))})",
        )
    overlap = (
        session.exec(  # type: ignore[call-overload]
            select(UsageSample).where(
                col(UsageSample.reservation_id) == row.id,
                col(UsageSample.period_start) < body.period_end,
                col(UsageSample.period_end) > body.period_start,
            )
        )
        .scalars()
        .first()
    )
    if overlap is not None:
        raise LedgerConflict(
            "usage_overlap",
            f"reservation {row.id} already has usage for {_jsonable(overlap.period_start)} to "
            f"{_jsonable(overlap.period_end)}, which overlaps this period",
            {"usage_id": overlap.id},
        )


def record_usage(
    session: Session,
    row: Reservation,
    body: UsageIn,
    *,
    actor: str,
    now: datetime,
    source: str = "api",
) -> UsageSample:
    """Record GPU-hours used over a period inside the reservation's term, ended by now, at
    most GPUs × hours, overlapping no earlier sample of the reservation.

    Raises:
        LedgerInvalid: period outside the term or in the future; too many GPU-hours.
        LedgerConflict: the period overlaps recorded usage.
    """
    assert row.id is not None
    _usage_checks(session, row, body, now)
    sample = UsageSample(
        reservation_id=row.id,
        team_id=row.team_id,
        period_start=body.period_start,
        period_end=body.period_end,
        gpu_hours=body.gpu_hours,
        source=source,
        recorded_by=actor,
        recorded_at=now,
    )
    session.add(sample)
    session.flush()
    return sample


def usage_of(session: Session, row: Reservation) -> list[UsageSample]:
    stmt = (
        select(UsageSample)
        .where(col(UsageSample.reservation_id) == row.id)
        .order_by(col(UsageSample.period_start))
    )
    return list(session.exec(stmt).scalars().all())  # type: ignore[call-overload]


def import_usage(
    session: Session, team_id: int, data: bytes, *, actor: str, now: datetime
) -> list[UsageSample]:
    """Record every row of a usage CSV (`reservation_id, period_start, period_end,
    gpu_hours`) or none.

    Raises:
        LedgerInvalid: one detail per bad cell or row (`line`, `field`, `message`).
    """
    rows = read_csv(data, USAGE_COLUMNS, USAGE_COLUMNS)
    errors: list[dict[str, Any]] = []
    parsed: list[tuple[int, UsageRowIn, Reservation]] = []
    for line, rec in rows:
        try:
            body = UsageRowIn.model_validate(rec)
        except ValidationError as exc:
            errors += _row_errors(line, exc)
            continue
        row = get_reservation(session, team_id, body.reservation_id)
        if row is None:
            errors.append(
                {
                    "line": line,
                    "field": "reservation_id",
                    "message": f"no reservation {body.reservation_id} in this team",
                }
            )
            continue
        parsed.append((line, body, row))
    # Overlaps inside the file itself.
    seen: dict[int, list[tuple[int, UsageRowIn]]] = {}
    for line, body, _row in parsed:
        for other_line, other in seen.get(body.reservation_id, []):
            if other.period_start < body.period_end and other.period_end > body.period_start:
                errors.append(
                    {
                        "line": line,
                        "field": "period_start",
                        "message": f"overlaps line {other_line} for reservation "
                        f"{body.reservation_id}",
                    }
                )
        seen.setdefault(body.reservation_id, []).append((line, body))
    for line, body, row in parsed:
        try:
            _usage_checks(session, row, body, now)
        except LedgerInvalid as exc:
            errors.append({"line": line, "field": exc.field, "message": str(exc)})
        except LedgerConflict as exc:
            errors.append({"line": line, "field": "period_start", "message": str(exc)})
    errors.sort(key=lambda e: e["line"])
    _raise_rows(errors, len(rows))
    out = []
    for _line, body, row in parsed:
        out.append(record_usage(session, row, body, actor=actor, now=now, source="import"))
    return out
