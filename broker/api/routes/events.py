"""`/v1/events`: the market's change feed, ordered by id, for followers.

A follower asks `?after=<last_id>` (0 or nothing the first time) and keeps the `last_id` of
each answer: ids are assigned in commit order (see `broker.offers.INGEST_LOCK_KEY`), so
nothing committed later can appear behind it. `next_cursor` is set while more events are
already waiting; `last_id` is always there, also when the page is empty.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field
from sqlalchemy import select
from sqlmodel import col

from broker.api.deps import SessionDep
from broker.api.errors import invalid
from broker.api.pagination import (
    DEFAULT_LIMIT,
    MAX_ID,
    CursorQuery,
    LimitQuery,
    Page,
    decode_cursor,
    encode_cursor,
)
from broker.api.schemas import EventPublic
from broker.domain import EventType
from broker.models import MarketEvent

router = APIRouter(prefix="/events", tags=["events"])

EVENT_TYPES = [t.value for t in EventType]


class EventsPage(Page[EventPublic]):
    last_id: int = Field(
        description="Pass as `after` to continue the feed (the last event's id, or `after`)."
    )


def _types(raw: list[str] | None) -> list[str]:
    wanted = list(
        dict.fromkeys(p.strip() for item in raw or () for p in item.split(",") if p.strip())
    )
    bad = [t for t in wanted if t not in EVENT_TYPES]
    if bad:
        shown = ", ".join(repr(b[:64]) for b in bad[:5])
        raise invalid(
            "types",
            f"unknown event type {shown}; valid types: {', '.join(EVENT_TYPES)}",
            valid=EVENT_TYPES,
        )
    return wanted


@router.get("", response_model=EventsPage)
def list_events(
    session: SessionDep,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_ID, description="Only events with a greater id (0: from the start)."),
    ] = None,
    types: Annotated[
        list[str] | None,
        Query(description=f"Event types, comma-separated or repeated: {', '.join(EVENT_TYPES)}."),
    ] = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> dict[str, Any]:
    """Market events with id > `after` (or after the `cursor`), oldest first."""
    wanted = _types(types)
    if cursor is not None:
        if after is not None:
            raise invalid("cursor", "give either after or cursor, not both")
        (start,) = decode_cursor(cursor, "events", (int,))
    else:
        start = after or 0
    e = MarketEvent
    stmt = select(e).where(col(e.id) > start)
    if wanted:
        stmt = stmt.where(col(e.type).in_(wanted))
    rows = session.execute(stmt.order_by(col(e.id)).limit(limit + 1)).scalars().all()
    more = len(rows) > limit
    rows = rows[:limit]
    last_id = rows[-1].id if rows else start
    assert last_id is not None
    return {
        "data": [{f: getattr(r, f) for f in EventPublic.model_fields} for r in rows],
        "next_cursor": encode_cursor("events", last_id) if more else None,
        "last_id": last_id,
    }
