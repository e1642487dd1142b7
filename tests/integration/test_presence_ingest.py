"""Capacity by presence (Lambda): a still-sold type that drops out of a region's capacity list
turns `unavailable` (an availability change), and coming back is another one; a type gone from
the catalogue is withdrawn."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from broker.db import session_scope
from broker.domain import Availability, Market, Offer, PollResult, Scope
from broker.models import MarketEvent, StoredOffer
from broker.offers import ingest_poll

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def offer(region: str, itype: str = "gpu_8x_h100_sxm5") -> Offer:
    return Offer(
        provider="lambda_cloud",
        region=region,
        instance_type=itype,
        market=Market.ON_DEMAND,
        gpu_model="H100-SXM",
        gpu_count=Decimal(8),
        price_per_hour=Decimal("23.92"),
        availability=Availability.AVAILABLE,
    )


def poll(engine: Engine, at: datetime, offers: list[Offer], sold: set[str]) -> dict[str, int]:
    result = PollResult(
        offers=offers,
        scopes_ok=[Scope("lambda_cloud")],
        scope_errors=[],
        fetched_at=at,
        capacity_by_presence=frozenset(("lambda_cloud", t) for t in sold),
    )
    with session_scope(engine) as session:
        return dict(ingest_poll(session, result, source="lambda_cloud").events)


def state(engine: Engine, key: str) -> tuple[bool, str]:
    with Session(engine) as session:
        row = session.exec(select(StoredOffer).where(StoredOffer.key == key)).one()
        return row.active, row.availability


def test_sell_out_is_an_availability_change_not_a_withdrawal(engine: Engine) -> None:
    h100 = "gpu_8x_h100_sxm5"
    a10 = "gpu_1x_a10"
    eu = offer("europe-central-1").key
    assert poll(
        engine,
        T0,
        [offer("us-east-1"), offer("europe-central-1"), offer("us-east-1", a10)],
        {h100, a10},
    ) == {"offer_appeared": 3}
    # europe-central-1 loses H100 capacity; the type is still listed.
    t1 = T0 + timedelta(minutes=5)
    assert poll(engine, t1, [offer("us-east-1"), offer("us-east-1", a10)], {h100, a10}) == {
        "availability_changed": 1
    }
    assert state(engine, eu) == (True, "unavailable")
    # Still sold out: nothing new.
    t2 = t1 + timedelta(minutes=5)
    assert poll(engine, t2, [offer("us-east-1"), offer("us-east-1", a10)], {h100, a10}) == {}
    # Capacity comes back: one availability change back to available.
    t3 = t2 + timedelta(minutes=5)
    assert poll(
        engine,
        t3,
        [offer("us-east-1"), offer("europe-central-1"), offer("us-east-1", a10)],
        {h100, a10},
    ) == {"availability_changed": 1}
    assert state(engine, eu) == (True, "available")
    # The A10 type disappears from the catalogue: that is a withdrawal.
    t4 = t3 + timedelta(minutes=5)
    assert poll(engine, t4, [offer("us-east-1"), offer("europe-central-1")], {h100}) == {
        "offer_withdrawn": 1
    }
    with Session(engine) as session:
        changes = session.exec(
            select(MarketEvent).where(MarketEvent.offer_key == eu).order_by(col(MarketEvent.id))
        ).all()
    assert [(e.type, (e.after or {}).get("availability")) for e in changes] == [
        ("offer_appeared", "available"),
        ("availability_changed", "unavailable"),
        ("availability_changed", "available"),
    ]


def test_quotas_are_upserted_per_region_name_and_market(engine: Engine) -> None:
    from broker.domain import Quota
    from broker.models import StoredQuota

    def q(limit: int, usage: int) -> Quota:
        return Quota(
            provider="lambda_cloud",
            region="us-east-1",
            name="GPUS",
            unit="gpus",
            limit=Decimal(limit),
            usage=Decimal(usage),
            instance_types=frozenset({"gpu_8x_h100_sxm5"}),
        )

    for i, (limit, usage) in enumerate([(16, 8), (32, 0)]):
        result = PollResult(
            offers=[offer("us-east-1")],
            scopes_ok=[Scope("lambda_cloud")],
            scope_errors=[],
            fetched_at=T0 + timedelta(minutes=i),
            quotas=[q(limit, usage)],
        )
        with session_scope(engine) as session:
            ingest_poll(session, result, source="lambda_cloud")
    with Session(engine) as session:
        rows = session.exec(select(StoredQuota)).all()
    assert [(r.name, r.market, r.limit, r.usage, r.instance_types) for r in rows] == [
        ("GPUS", "*", Decimal(32), Decimal(0), ["gpu_8x_h100_sxm5"])
    ]
