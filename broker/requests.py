"""Capacity requests: validation, storage, recommendations and rescoring on market events.

A request is what a team needs ("64 H100 in the EU within 10 days for 4 weeks under $3.50
per GPU-hour"). `RequestIn` validates a body (every error names its field); the store keeps
the validated spec as JSON. `recommendations()` scores it against the current market
(`broker.scoring`); `rescore_for_events()` re-ranks the open requests whose GPU models a
range of market events touched and writes a `best_option_changed` request event when the
best option is no longer the same offers. No HTTP here: `broker.api.routes.requests` maps
these functions onto endpoints.

States: `open` (no option yet) ⇄ `matched` (at least one option) → `fulfilled` |
`cancelled` | `expired` (needed_by passed). Only open and matched requests are rescored.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import Engine, and_, bindparam, func, insert, select, update
from sqlmodel import Session, col

from broker import gpus, regions
from broker.config import Settings
from broker.db import keyset_page, session_scope
from broker.domain import Availability, Clock, Market, utcnow
from broker.inputs import MarketList, ModelList, PlaceList
from broker.models import (
    CapacityRequest,
    MarketEvent,
    Observation,
    PollRun,
    RequestEvent,
    StoredOffer,
    StoredQuota,
)
from broker.offers import gpu_filters
from broker.scoring import (
    History,
    MarketOffer,
    MarketSnapshot,
    QuotaView,
    Recommendation,
    RequestSpec,
    Residency,
    ScoringConfig,
    Weights,
    recommend,
)


class RequestState(StrEnum):
    OPEN = "open"
    MATCHED = "matched"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


LIVE_STATES = (RequestState.OPEN, RequestState.MATCHED)
FINAL_STATES = (RequestState.FULFILLED, RequestState.CANCELLED, RequestState.EXPIRED)
BEST_OPTION_CHANGED = "best_option_changed"
STATE_CHANGED = "state_changed"


# -------------------------------------------------------------------- validation


@functools.cache
def known_place_codes() -> frozenset[str]:
    """Two-letter codes a residency rule may name: `EU` and every country of the region
    table."""
    table = regions.load_table()
    codes = {"EU"}
    for provider in table.providers():
        codes |= {r.country for r in table.regions_of(provider)}
    return frozenset(codes)


@functools.cache
def known_region_names() -> frozenset[str]:
    table = regions.load_table()
    names: set[str] = set()
    for provider in table.providers():
        for r in table.regions_of(provider):
            names |= {r.region, f"{provider}/{r.region}"}
    return frozenset(names)


def _check_places(items: list[str]) -> list[str]:
    out = []
    for raw in items:
        item = raw.strip()
        if len(item) == 2 and item.isalpha():
            code = item.upper()
            if code not in known_place_codes():
                raise ValueError(
                    f"unknown jurisdiction or country code {item!r}; use EU or an ISO "
                    f"3166-1 alpha-2 country code of a known region "
                    f"(known: {', '.join(sorted(known_place_codes()))})"
                )
            out.append(code)
        elif item in known_region_names():
            out.append(item)
        else:
            raise ValueError(
                f"unknown region {item!r}: give a jurisdiction (EU), a country code (DE) "
                "or a region id of a provider (eu-west-1 or aws/eu-west-1)"
            )
    return out


class ResidencyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow: PlaceList = Field(
        default_factory=list,
        description="Jurisdictions (EU, US), countries (DE) or regions (eu-west-1, "
        "aws/eu-west-1) the capacity may be in; empty = anywhere not denied. An offer of "
        "unknown jurisdiction fails any allow-list.",
    )
    deny: PlaceList = Field(default_factory=list)

    _places = field_validator("allow", "deny")(_check_places)


class WeightsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time_to_power: float = Field(default=0.5, ge=0, le=1000)
    cost: float = Field(default=0.5, ge=0, le=1000)

    @model_validator(mode="after")
    def _not_both_zero(self) -> WeightsIn:
        if self.time_to_power == 0 and self.cost == 0:
            raise ValueError("weights: time_to_power and cost cannot both be 0")
        return self


AwareDatetime = Annotated[datetime, Field(description="ISO 8601 with a timezone")]


class RequestIn(BaseModel):
    """`POST /v1/requests` body."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=256)
    gpu_models: ModelList = Field(
        min_length=1,
        description='Canonical models or families, e.g. ["H100", "H200"], a memory size '
        '("H100 80GB") or MODEL:COUNT for at least COUNT per instance ("H100:8").',
    )
    gpus: int = Field(gt=0, le=100_000, description="Total GPUs needed.")
    gpus_per_node: int | None = Field(
        default=None, gt=0, le=64, description="Node size of a gang (offers in one region)."
    )
    residency: ResidencyIn = Field(default_factory=ResidencyIn)
    markets: MarketList = Field(
        default_factory=lambda: [Market.ON_DEMAND, Market.CAPACITY_BLOCK], min_length=1
    )
    max_price_per_gpu_hour: Decimal | None = Field(default=None, ge=0, max_digits=12)
    not_before: AwareDatetime | None = None
    needed_by: AwareDatetime | None = None
    duration_hours: int = Field(gt=0, le=24 * 366 * 5)
    weights: WeightsIn = Field(default_factory=WeightsIn)
    exclude_anomalies: bool = Field(
        default=False,
        description="Leave out offers whose price a sanity rule flagged (docs/anomalies.md); "
        "by default they are ranked with low confidence and their explanation says so.",
    )

    @field_validator("gpu_models")
    @classmethod
    def _known_models(cls, v: list[str]) -> list[str]:
        for name in v:
            gpus.parse_gpu_filter(name)  # GpuFilterError is a ValueError saying why
        return v

    @field_validator("not_before", "needed_by")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("must include a timezone, e.g. 2026-12-01T00:00:00Z")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RequestIn:
        if self.not_before and self.needed_by and self.needed_by <= self.not_before:
            raise ValueError("needed_by must be after not_before")
        if self.gpus_per_node and self.gpus % self.gpus_per_node:
            raise ValueError(
                f"gpus ({self.gpus}) must be a multiple of gpus_per_node ({self.gpus_per_node})"
            )
        return self

    def resolved_models(self) -> frozenset[str]:
        return gpu_filters(self.gpu_models)[0] or frozenset()

    def to_spec(self) -> RequestSpec:
        models, minimums = gpu_filters(self.gpu_models)
        return RequestSpec(
            gpu_models=models or frozenset(),
            min_gpus_per_instance=minimums,
            gpus=self.gpus,
            duration_hours=self.duration_hours,
            gpus_per_node=self.gpus_per_node,
            residency=Residency(tuple(self.residency.allow), tuple(self.residency.deny)),
            markets=frozenset(self.markets),
            max_price_per_gpu_hour=self.max_price_per_gpu_hour,
            not_before=self.not_before,
            needed_by=self.needed_by,
            weights=Weights(self.weights.time_to_power, self.weights.cost),
            exclude_anomalies=self.exclude_anomalies,
        )


class RequestPatch(BaseModel):
    """`PATCH /v1/requests/{id}`: any field of the request, or `state` to fulfil/cancel."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=256)
    gpu_models: ModelList | None = None
    gpus: int | None = None
    gpus_per_node: int | None = None
    residency: ResidencyIn | None = None
    markets: MarketList | None = None
    max_price_per_gpu_hour: Decimal | None = None
    not_before: AwareDatetime | None = None
    needed_by: AwareDatetime | None = None
    duration_hours: int | None = None
    weights: WeightsIn | None = None
    exclude_anomalies: bool | None = None
    state: RequestState | None = Field(
        default=None, description="Only `fulfilled` or `cancelled` can be set by hand."
    )


class RequestError(ValueError):
    """A request change that is not allowed (`code` for the API's error shape)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.field = code, field


# ---------------------------------------------------------------------- storage


def request_out(row: CapacityRequest) -> dict[str, Any]:
    spec = dict(row.spec)
    return {
        "id": row.id,
        "name": row.name,
        "state": row.state,
        **{k: v for k, v in spec.items() if k != "name"},
        "resolved_gpu_models": sorted(row.gpu_models),
        "best_option": row.best,
        "scored_at": row.scored_at,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def _spec_json(body: RequestIn) -> dict[str, Any]:
    return body.model_dump(mode="json", exclude={"name"})


def spec_of(row: CapacityRequest) -> RequestSpec:
    return RequestIn.model_validate({**row.spec, "name": row.name}).to_spec()


def create_request(
    session: Session, team_id: int, body: RequestIn, *, settings: Settings, clock: Clock = utcnow
) -> CapacityRequest:
    """Store a validated request and score it once (no event: nothing changed yet).

    Raises:
        RequestError: `needed_by` is already past (the request could never be met).
    """
    now = clock()
    _check_needed_by(body, now)
    row = CapacityRequest(
        team_id=team_id,
        name=body.name,
        state=RequestState.OPEN,
        spec=_spec_json(body),
        gpu_models=sorted(body.resolved_models()),
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    market = load_market(session)
    _apply_score(session, row, market, now, settings, market_event_id=None, emit=False)
    return row


def _check_needed_by(body: RequestIn, now: datetime) -> None:
    if body.needed_by is not None and body.needed_by <= now:
        raise RequestError(
            "invalid_request",
            f"needed_by {body.needed_by:%Y-%m-%d %H:%M} UTC is already past (now "
            f"{now:%Y-%m-%d %H:%M} UTC): no offer could meet it",
            "needed_by",
        )


def get_request(session: Session, team_id: int, request_id: int) -> CapacityRequest | None:
    """The team's request, or None (another team's request is indistinguishable from none)."""
    row = session.get(CapacityRequest, request_id)
    return row if row is not None and row.team_id == team_id else None


def list_requests(
    session: Session,
    team_id: int,
    *,
    states: Sequence[str] = (),
    after_id: int | None = None,
    limit: int = 50,
) -> list[CapacityRequest]:
    where = [col(CapacityRequest.team_id) == team_id]
    if states:
        where.append(col(CapacityRequest.state).in_(list(states)))
    return keyset_page(session, CapacityRequest, *where, after_id=after_id, limit=limit)


def update_request(
    session: Session,
    row: CapacityRequest,
    patch: RequestPatch,
    *,
    settings: Settings,
    clock: Clock = utcnow,
) -> CapacityRequest:
    """Apply a PATCH: spec fields are re-validated as a whole; `state` may only become
    fulfilled or cancelled, and only from a live state."""
    now = clock()
    changes = patch.model_dump(exclude_unset=True)
    new_state = changes.pop("state", None)
    if row.state in FINAL_STATES and (changes or new_state):
        raise RequestError("request_closed", f"request is {row.state}; it cannot change")
    if changes:
        merged = {**row.spec, "name": row.name, **patch.model_dump(mode="json", exclude_unset=True)}
        merged.pop("state", None)
        body = RequestIn.model_validate(merged)
        if "needed_by" in changes:
            _check_needed_by(body, now)
        row.spec = _spec_json(body)
        row.name = body.name
        row.gpu_models = sorted(body.resolved_models())
    if new_state is not None:
        if new_state not in (RequestState.FULFILLED, RequestState.CANCELLED):
            raise RequestError(
                "invalid_state",
                f"state can only be set to fulfilled or cancelled, not {new_state}",
                "state",
            )
        _set_state(session, row, RequestState(new_state), now)
    row.updated_at = now
    session.add(row)
    session.flush()
    if changes and row.state in LIVE_STATES:
        market = load_market(session)
        _apply_score(session, row, market, now, settings, market_event_id=None, emit=True)
    return row


def _set_state(session: Session, row: CapacityRequest, state: RequestState, now: datetime) -> None:
    if row.state == state:
        return
    assert row.id is not None
    session.add(
        RequestEvent(
            request_id=row.id,
            team_id=row.team_id,
            type=STATE_CHANGED,
            at=now,
            before={"state": row.state},
            after={"state": str(state)},
        )
    )
    row.state = state


def request_events(
    session: Session, row: CapacityRequest, *, after_id: int | None = None, limit: int = 50
) -> list[RequestEvent]:
    where = col(RequestEvent.request_id) == row.id
    return keyset_page(session, RequestEvent, where, after_id=after_id, limit=limit)


# ----------------------------------------------------------------------- market


_OFFERS = StoredOffer.__table__  # type: ignore[attr-defined]
_OBSERVATIONS = Observation.__table__  # type: ignore[attr-defined]
#: The `offers` columns a `MarketOffer` is built from (`MarketOffer.from_row`).
MARKET_COLUMNS = (
    "id",
    "key",
    "provider",
    "region",
    "instance_type",
    "market",
    "gpu_model",
    "gpu_count",
    "price_per_hour",
    "price_per_gpu_hour",
    "country",
    "jurisdiction",
    "availability",
    "available_count",
    "earliest_start",
    "min_duration_hours",
    "max_duration_hours",
    "upfront_fee",
    "vcpus",
    "last_seen",
    "anomalies",
)


@dataclass
class _CachedMarket:
    version: tuple[int, int]
    snapshot: MarketSnapshot


#: Market snapshots per engine, rebuilt when an ingest has run since (the newest poll run or
#: market event id moved; ids only grow): loading ~3,000 offers costs far more than scoring.
_MARKET_CACHE: weakref.WeakKeyDictionary[Engine, _CachedMarket] = weakref.WeakKeyDictionary()


def _market_version(session: Session) -> tuple[int, int]:
    conn = session.connection()
    runs = PollRun.__table__  # type: ignore[attr-defined]
    events = MarketEvent.__table__  # type: ignore[attr-defined]
    return (
        int(conn.execute(select(func.coalesce(func.max(runs.c.id), 0))).scalar_one()),
        int(conn.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar_one()),
    )


def load_market(session: Session) -> MarketSnapshot:
    """Every current offer with the sell-out history of the unavailable ones, and quotas;
    cached per database until the next ingest. Staleness is judged at scoring time
    (`recommend(..., stale_before=)`), so a cached snapshot never goes stale itself."""
    engine = session.get_bind().engine
    version = _market_version(session)
    cached = _MARKET_CACHE.get(engine)
    if cached is not None and cached.version == version:
        return cached.snapshot
    snapshot = _load_market(session)
    _MARKET_CACHE[engine] = _CachedMarket(version, snapshot)
    return snapshot


def _load_market(session: Session) -> MarketSnapshot:
    stmt = select(*(_OFFERS.c[c] for c in MARKET_COLUMNS)).where(_OFFERS.c.active)
    rows = session.connection().execute(stmt).all()
    sold_out = [r.id for r in rows if r.availability == Availability.UNAVAILABLE]
    histories = _sellout_histories(session, sold_out) if sold_out else {}
    offers = [MarketOffer.from_row(r, histories.get(r.id)) for r in rows]
    quotas = [
        QuotaView(
            provider=q.provider,
            region=q.region,
            name=q.name,
            market=q.market,
            unit=q.unit,
            headroom=q.limit - (q.usage or Decimal(0)),
            instance_types=frozenset(q.instance_types),
        )
        for q in session.exec(select(StoredQuota)).scalars()  # type: ignore[call-overload]
    ]
    return MarketSnapshot(offers, quotas)


def _sellout_histories(session: Session, offer_ids: list[int]) -> dict[int, History]:
    """From each offer's observations (change points): how many sell-outs ended, how long
    they lasted on average, and when the present one began."""
    points: dict[int, list[tuple[datetime, str]]] = {}
    for chunk in range(0, len(offer_ids), 500):
        ids = offer_ids[chunk : chunk + 500]
        for oid, at, availability in session.connection().execute(
            select(_OBSERVATIONS.c.offer_id, _OBSERVATIONS.c.at, _OBSERVATIONS.c.availability)
            .where(_OBSERVATIONS.c.offer_id.in_(ids))
            .order_by(_OBSERVATIONS.c.offer_id, _OBSERVATIONS.c.at, _OBSERVATIONS.c.id)
        ):
            points.setdefault(oid, []).append((at, availability))
    out: dict[int, History] = {}
    for oid, seq in points.items():
        spells: list[float] = []
        start: datetime | None = None
        for at, availability in seq:
            if availability == Availability.UNAVAILABLE:
                if start is None:
                    start = at
            elif start is not None:
                spells.append((at - start) / timedelta(hours=1))
                start = None
        out[oid] = History(
            sellouts=len(spells),
            mean_sellout_hours=sum(spells) / len(spells) if spells else None,
            current_since=start,
        )
    return out


def recommendations(
    session: Session, row: CapacityRequest, *, settings: Settings, clock: Clock = utcnow
) -> Recommendation:
    """Score the request against the whole current market, exclusions included."""
    now = clock()
    return recommend(
        spec_of(row),
        load_market(session),
        now,
        ScoringConfig.from_settings(settings.scoring),
        stale_before=stale_cutoff(settings, now),
    )


def stale_cutoff(settings: Settings, now: datetime) -> datetime:
    return now - timedelta(minutes=settings.stale_after_minutes)


def _best_signature(rec: Recommendation) -> dict[str, Any] | None:
    best = rec.best
    if best is None:
        return None
    return {
        "offers": [{"key": p.offer.key, "instances": p.instances} for p in best.parts],
        "price_per_gpu_hour": str(best.price_per_gpu_hour),
        "total_cost_usd": str(best.total_cost_usd),
        "time_to_power_hours": round(best.time_to_power_hours, 2),
        "score": best.score,
    }


def _apply_score(
    session: Session,
    row: CapacityRequest,
    market: MarketSnapshot,
    now: datetime,
    settings: Settings,
    *,
    market_event_id: int | None,
    emit: bool,
) -> bool:
    """Rescore one live request; True when its best option changed (event written)."""
    assert row.id is not None
    spec = spec_of(row)
    if spec.needed_by is not None and spec.needed_by <= now:
        _set_state(session, row, RequestState.EXPIRED, now)
        session.add(row)
        return False
    rec = recommend(
        spec,
        market,
        now,
        ScoringConfig.from_settings(settings.scoring),
        with_excluded=False,
        stale_before=stale_cutoff(settings, now),
    )
    best = _best_signature(rec)
    before = row.best
    changed = (before or {}).get("offers") != (best or {}).get("offers")
    if changed and emit:
        session.add(
            RequestEvent(
                request_id=row.id,
                team_id=row.team_id,
                type=BEST_OPTION_CHANGED,
                at=now,
                market_event_id=market_event_id,
                before=before,
                after=best,
            )
        )
    row.best = best
    row.scored_at = now
    state = RequestState.MATCHED if best else RequestState.OPEN
    if emit:
        _set_state(session, row, state, now)
    else:
        row.state = state
    session.add(row)
    return changed and emit


def rescore_for_events(
    engine: Engine,
    first_event_id: int,
    last_event_id: int,
    *,
    settings: Settings,
    clock: Clock = utcnow,
) -> int:
    """Rescore the live requests whose GPU models market events `first..last` touched (an
    offer of that model changed, or a provider selling it degraded/recovered). Returns how
    many best options changed. One transaction; the market is loaded once."""
    with session_scope(engine) as session:
        return rescore_in(session, first_event_id, last_event_id, settings=settings, now=clock())


def rescore_in(
    session: Session,
    first_event_id: int,
    last_event_id: int,
    *,
    settings: Settings,
    now: datetime,
) -> int:
    """`rescore_for_events` inside the caller's transaction (the pipeline matches alerts in
    the same one)."""
    conn = session.connection()
    ev = MarketEvent.__table__  # type: ignore[attr-defined]
    off = StoredOffer.__table__  # type: ignore[attr-defined]
    in_range = and_(ev.c.id >= first_event_id, ev.c.id <= last_event_id)
    touched_models = set(
        conn.execute(
            select(off.c.gpu_model)
            .distinct()
            .select_from(ev.join(off, off.c.key == ev.c.offer_key))
            .where(in_range)
        ).scalars()
    )
    providers = list(
        conn.execute(
            select(ev.c.provider).distinct().where(in_range, ev.c.offer_key.is_(None))
        ).scalars()
    )
    if providers:
        touched_models |= set(
            conn.execute(
                select(off.c.gpu_model).distinct().where(off.c.provider.in_(providers))
            ).scalars()
        )
    if not touched_models:
        return 0
    req = CapacityRequest.__table__  # type: ignore[attr-defined]
    live = [
        r
        for r in conn.execute(
            select(
                req.c.id,
                req.c.team_id,
                req.c.name,
                req.c.spec,
                req.c.gpu_models,
                req.c.best,
                req.c.state,
            ).where(req.c.state.in_([str(s) for s in LIVE_STATES]))
        )
        if touched_models.intersection(r.gpu_models)
    ]
    if not live:
        return 0
    market = load_market(session)
    cfg = ScoringConfig.from_settings(settings.scoring)
    cutoff = stale_cutoff(settings, now)
    rows: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for r in live:
        spec = RequestIn.model_validate({**r.spec, "name": r.name}).to_spec()
        state = RequestState(r.state)
        if spec.needed_by is not None and spec.needed_by <= now:
            best, state = r.best, RequestState.EXPIRED
        else:
            rec = recommend(spec, market, now, cfg, with_excluded=False, stale_before=cutoff)
            best = _best_signature(rec)
            state = RequestState.MATCHED if best else RequestState.OPEN
            if (r.best or {}).get("offers") != (best or {}).get("offers"):
                events.append(
                    {
                        "request_id": r.id,
                        "team_id": r.team_id,
                        "type": BEST_OPTION_CHANGED,
                        "at": now,
                        "market_event_id": last_event_id,
                        "before": r.best,
                        "after": best,
                    }
                )
        if state != r.state:
            events.append(
                {
                    "request_id": r.id,
                    "team_id": r.team_id,
                    "type": STATE_CHANGED,
                    "at": now,
                    "market_event_id": last_event_id,
                    "before": {"state": r.state},
                    "after": {"state": str(state)},
                }
            )
        if state != r.state or best != r.best:
            rows.append({"_id": r.id, "best": best, "state": str(state)})
    conn.execute(update(req).where(req.c.id.in_([r.id for r in live])).values(scored_at=now))
    if rows:
        conn.execute(
            update(req)
            .where(req.c.id == bindparam("_id"))
            .values(best=bindparam("best"), state=bindparam("state"), updated_at=now),
            rows,
        )
    if events:
        conn.execute(insert(RequestEvent.__table__), events)  # type: ignore[attr-defined]
    return sum(1 for e in events if e["type"] == BEST_OPTION_CHANGED)
