"""`/v1/offers`: the current market (the filters of `broker offers`), one offer, its history."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from sqlalchemy import and_, or_, select
from sqlmodel import Session, col

from broker import gpus, vocab
from broker.api.deps import ClockDep, SessionDep, SettingsDep
from broker.api.errors import invalid, not_found
from broker.api.pagination import (
    DEFAULT_LIMIT,
    CursorQuery,
    LimitQuery,
    Page,
    decode_cursor,
    encode_cursor,
    invalid_cursor,
)
from broker.api.schemas import ObservationPublic, OfferDetail, OfferPublic
from broker.config import Settings
from broker.domain import Market
from broker.models import Observation, StoredOffer
from broker.offers import OUTPUT_FIELDS, OfferQuery, gpu_filters, source_of, sources
from broker.offers import list_offers as query_offers
from broker.scoring import ScoringConfig, market_from_rows, time_to_power

router = APIRouter(prefix="/offers", tags=["offers"])

MAX_FILTER_LEN = 128
#: The price part of an offers cursor, as `str(Decimal)` of a stored price writes it.
_PRICE_TEXT = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,12})?")
MAX_PRICE = Decimal(10**6)
MAX_GPUS = Decimal(10**6)


def _values(name: str, raw: list[str] | None) -> tuple[str, ...]:
    """A repeatable filter, each value possibly a comma-separated list; blanks dropped."""
    out: list[str] = []
    for item in raw or ():
        for part in item.split(","):
            part = part.strip()
            if len(part) > MAX_FILTER_LEN:
                raise invalid(name, f"a value is longer than {MAX_FILTER_LEN} characters")
            if part:
                out.append(part)
    return tuple(dict.fromkeys(out))


def _gpu_models(values: tuple[str, ...]) -> tuple[frozenset[str] | None, dict[str, int]]:
    try:
        return gpu_filters(values)
    except gpus.GpuFilterError as exc:
        raise invalid("gpu", str(exc), known_models=sorted(gpus.CATALOGUE)) from None


def _markets(values: tuple[str, ...]) -> tuple[Market, ...]:
    valid = [m.value for m in Market]
    bad = [v for v in values if v not in valid]
    if bad:
        raise invalid(
            "market", f"unknown market {', '.join(bad)}; markets: {', '.join(valid)}", valid=valid
        )
    return tuple(Market(v) for v in values)


def _filter_query(description: str) -> Any:
    return Query(description=description + " Repeatable, or comma-separated.")


@router.get("", response_model=Page[OfferPublic])
def list_offers(
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
    gpu: Annotated[
        list[str] | None,
        _filter_query(
            "GPU model or family (H100 covers H100-SXM, -PCIe, -NVL...; 'H100 80GB' the 80 GB "
            "ones); MODEL:COUNT = at least COUNT per instance (H100:8)."
        ),
    ] = None,
    min_gpus: Annotated[
        Decimal | None, Query(ge=0, le=MAX_GPUS, description="Minimum accelerators per instance.")
    ] = None,
    provider: Annotated[list[str] | None, _filter_query("Provider id.")] = None,
    region: Annotated[list[str] | None, _filter_query("Provider region.")] = None,
    country: Annotated[list[str] | None, _filter_query("ISO country code.")] = None,
    jurisdiction: Annotated[
        list[str] | None, _filter_query("EU (EU/EEA) or an ISO country code.")
    ] = None,
    market: Annotated[
        list[str] | None, _filter_query("on_demand, spot, capacity_block or reserved.")
    ] = None,
    max_price_per_gpu_hour: Annotated[
        Decimal | None, Query(ge=0, le=MAX_PRICE, description="Maximum USD per GPU-hour.")
    ] = None,
    include_stale: Annotated[
        bool, Query(description="Also offers whose data is older than the stale TTL.")
    ] = False,
    exclude_anomalies: Annotated[
        bool,
        Query(description="Leave out offers whose price a sanity rule flagged (anomalies)."),
    ] = False,
    sort: Annotated[
        Literal["price", "time_to_power"],
        Query(
            description="price: USD per GPU-hour, then key. time_to_power: hours until usable "
            "(the scoring model's time to power, no quotas), then price, then key."
        ),
    ] = "price",
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> dict[str, Any]:
    """Current offers matching every filter given, cheapest per GPU-hour first."""
    models, minimums = _gpu_models(_values("gpu", gpu))
    places = {
        "provider": _values("provider", provider),
        "region": _values("region", region),
        "country": _values("country", country),
        "jurisdiction": _values("jurisdiction", jurisdiction),
    }
    for kind, values in places.items():
        try:
            vocab.check(kind, values)
        except vocab.UnknownName as exc:
            raise invalid(kind, str(exc)) from None
    query = OfferQuery(
        gpu_models=models,
        gpu_minimums=minimums,
        min_gpus=min_gpus,
        providers=places["provider"],
        regions=places["region"],
        countries=places["country"],
        jurisdictions=places["jurisdiction"],
        markets=_markets(_values("market", market)),
        max_price_per_gpu_hour=max_price_per_gpu_hour,
        include_stale=include_stale,
        exclude_anomalies=exclude_anomalies,
    )
    if sort == "time_to_power":
        return _by_time_to_power(session, query, settings, clock(), limit, cursor)
    after: tuple[Decimal, str] | None = None
    if cursor is not None:
        price_text, key = decode_cursor(cursor, "offers", (str, str))
        if not _PRICE_TEXT.fullmatch(price_text):
            raise invalid_cursor()
        price = Decimal(price_text)
        after = (price, key)
    rows = query_offers(
        session,
        query,
        now=clock(),
        stale_after=timedelta(minutes=settings.stale_after_minutes),
        limit=limit + 1,
        after=after,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if more:
        last = rows[-1]
        next_cursor = encode_cursor("offers", str(last["price_per_gpu_hour"]), last["key"])
    return {"data": rows, "next_cursor": next_cursor}


def _by_time_to_power(
    session: Session,
    query: OfferQuery,
    settings: Settings,
    now: datetime,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    """Offers ordered by time to power (sold-out offers with no history last), computed in
    memory over every match; keyset cursor = (hours, price, key) of the last row."""
    rows = query_offers(
        session, query, now=now, stale_after=timedelta(minutes=settings.stale_after_minutes)
    )
    cfg = ScoringConfig.from_settings(settings.scoring)
    never = float("inf")
    keyed = []
    for r in rows:
        ttp = time_to_power(market_from_rows([r])[0], now, cfg)
        r["time_to_power_hours"] = round(ttp.hours, 4) if ttp else None
        hours = r["time_to_power_hours"] if ttp else never
        keyed.append(((hours, r["price_per_gpu_hour"], r["key"]), r))
    keyed.sort(key=lambda kr: kr[0])
    if cursor is not None:
        hours_text, price_text, key = decode_cursor(cursor, "offers_ttp", (str, str, str))
        try:
            last = (float(hours_text), Decimal(price_text), key)
        except (ValueError, InvalidOperation):
            raise invalid_cursor() from None
        keyed = [kr for kr in keyed if kr[0] > last]
    page = keyed[: limit + 1]
    more = len(page) > limit
    page = page[:limit]
    next_cursor = None
    if more:
        (h, p, k), _ = page[-1]
        next_cursor = encode_cursor("offers_ttp", repr(h), str(p), k)
    return {"data": [r for _, r in page], "next_cursor": next_cursor}


def _load(session: SessionDep, key: str) -> StoredOffer:
    row: StoredOffer | None = session.execute(
        select(StoredOffer).where(col(StoredOffer.key) == key)
    ).scalar_one_or_none()
    if row is None:
        raise not_found(f"no offer with key {key[:300]!r}")
    return row


@router.get("/{key:path}/history", response_model=Page[ObservationPublic])
def offer_history(
    key: str,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> dict[str, Any]:
    """The offer's change points, oldest first: appeared, changed (price, availability or
    spec), withdrawn (a gap: not on sale until the next `returned`), returned. Each point
    keeps the GPU count and per-GPU price of its own time, and its source poll."""
    offer = _load(session, key)
    o = Observation
    stmt = select(o).where(col(o.offer_id) == offer.id)
    if cursor is not None:
        at_text, last_id = decode_cursor(cursor, "history", (str, int))
        try:
            at = datetime.fromisoformat(at_text)
            if at.tzinfo is None:
                raise ValueError("naive")
            at = at.astimezone(UTC)
        except (ValueError, OverflowError):
            raise invalid_cursor() from None
        stmt = stmt.where(or_(col(o.at) > at, and_(col(o.at) == at, col(o.id) > last_id)))
    rows = session.execute(stmt.order_by(col(o.at), col(o.id)).limit(limit + 1)).scalars().all()
    more = len(rows) > limit
    rows = rows[:limit]
    polls = sources(session.connection(), [{"poll_run_id": r.poll_run_id} for r in rows])
    data = [
        {
            "at": r.at,
            "kind": r.kind,
            "price_per_hour": r.price_per_hour,
            "gpu_count": r.gpu_count,
            "price_per_gpu_hour": r.price_per_gpu_hour,
            "availability": r.availability,
            "available_count": r.available_count,
            "source": source_of(offer.provider, r.poll_run_id, polls),
        }
        for r in rows
    ]
    next_cursor = None
    if more:
        last = rows[-1]
        assert last.id is not None
        next_cursor = encode_cursor("history", last.at.isoformat(), last.id)
    return {"data": data, "next_cursor": next_cursor}


@router.get("/{key:path}", response_model=OfferDetail)
def read_offer(
    key: str, session: SessionDep, settings: SettingsDep, clock: ClockDep
) -> dict[str, Any]:
    """One offer by key (`provider/region[/zone]/instance_type/market`), also when withdrawn."""
    row = _load(session, key)
    cutoff = clock() - timedelta(minutes=settings.stale_after_minutes)
    out = {f: getattr(row, f) for f in OUTPUT_FIELDS if f not in ("stale", "source")}
    polls = sources(session.connection(), [{"poll_run_id": row.poll_run_id}])
    out.update(
        stale=row.last_seen < cutoff,
        source=source_of(row.provider, row.poll_run_id, polls),
        active=row.active,
        withdrawn_at=row.withdrawn_at,
        gpu_vendor=row.gpu_vendor,
        interconnect=row.interconnect,
        offering_id=row.offering_id,
        min_duration_hours=row.min_duration_hours,
        max_duration_hours=row.max_duration_hours,
        raw=row.raw,
    )
    return out
