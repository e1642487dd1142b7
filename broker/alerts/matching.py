"""Edge-triggered matching: the market events of a batch against the subscriptions, and
the outbox rows it decides, all in the caller's transaction (see `broker.alerts`).

An offer subscription's match set (`alert_matches`) holds the offers passing its filter;
`match_events` looks only at the offers the batch touched: one that enters the set or gets
`price_drop_pct` cheaper than last alerted is alerted, one that leaves is dropped silently.
A request subscription hears each `best_option_changed` the batch caused. One outbox row
per subscription and batch, under a unique `dedupe_key`: a batch processed twice writes
nothing twice.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select, update

from broker.alerts.clock import due_now
from broker.alerts.filters import CompiledFilter, offer_rows
from broker.alerts.messages import offers_message, request_message
from broker.alerts.store import (
    ACTIVE,
    CHUNK,
    DELIVERIES,
    EVENTS,
    MATCHES,
    PENDING,
    REQUEST_EVENTS,
    RUNS,
    SUBS,
)
from broker.config import Settings
from broker.models import CapacityRequest
from broker.scoring import ScoringConfig


@dataclass
class _SubView:
    id: int
    team_id: int
    name: str
    filter: CompiledFilter
    drop: Decimal
    entered: list[Any] = field(default_factory=list)
    drops: list[tuple[Any, Decimal]] = field(default_factory=list)


def write_delivery(
    conn: Connection,
    sub: Any,
    kind: str,
    dedupe_key: str,
    payload: dict[str, Any],
    now: datetime,
    event_at: datetime | None,
) -> int:
    """Insert one outbox row unless its dedupe key exists; its id either way. `now` stamps
    it; it is due at once (`broker.alerts.clock.due_now`)."""
    existing = conn.execute(
        select(DELIVERIES.c.id).where(DELIVERIES.c.dedupe_key == dedupe_key)
    ).scalar()
    if existing is not None:
        return int(existing)
    return int(
        conn.execute(
            insert(DELIVERIES).returning(DELIVERIES.c.id),
            {
                "dedupe_key": dedupe_key,
                "subscription_id": sub.id,
                "team_id": sub.team_id,
                "kind": kind,
                "created_at": now,
                "event_at": event_at,
                "payload": payload,
                "state": PENDING,
                "attempts": 0,
                "next_attempt_at": due_now(conn, now),
            },
        ).scalar_one()
    )


def match_events(
    conn: Connection, first_id: int, last_id: int, settings: Settings, now: datetime
) -> list[int]:
    """Run the offer subscriptions over the offers market events `first..last` touched and
    the request subscriptions over the `best_option_changed` those events caused; write the
    outbox rows (in the caller's transaction). Returns the new deliveries' ids."""
    in_range = and_(EVENTS.c.id >= first_id, EVENTS.c.id <= last_id)
    event_at = conn.execute(
        select(func.min(RUNS.c.ingested_at)).where(
            RUNS.c.id.in_(select(EVENTS.c.poll_run_id).where(in_range))
        )
    ).scalar()
    subs = [
        _SubView(
            s.id,
            s.team_id,
            s.name,
            CompiledFilter.of(s.filter),
            Decimal(s.price_drop_pct),
        )
        for s in conn.execute(
            select(SUBS.c.id, SUBS.c.team_id, SUBS.c.name, SUBS.c.filter, SUBS.c.price_drop_pct)
            .where(SUBS.c.kind == "offers", SUBS.c.state == ACTIVE, SUBS.c.deleted_at.is_(None))
            .order_by(SUBS.c.id)
        )
    ]
    ids: list[int] = []
    if subs:
        keys = sorted(
            set(
                conn.execute(
                    select(EVENTS.c.offer_key).where(in_range, EVENTS.c.offer_key.is_not(None))
                ).scalars()
            )
        )
        if keys:
            ids += _match_offers(conn, subs, keys, first_id, last_id, settings, now, event_at)
    ids += _match_requests(conn, first_id, last_id, settings, now, event_at)
    return ids


def _match_offers(
    conn: Connection,
    subs: list[_SubView],
    keys: list[str],
    first_id: int,
    last_id: int,
    settings: Settings,
    now: datetime,
    event_at: datetime | None,
) -> list[int]:
    offers = offer_rows(conn, keys)
    by_model: dict[str | None, list[_SubView]] = defaultdict(list)
    for s in subs:
        for m in s.filter.models or (None,):
            by_model[m].append(s)
    sub_ids = [s.id for s in subs]
    in_set: dict[tuple[int, str], Decimal] = {}
    for i in range(0, len(keys), CHUNK):
        for sid, key, price in conn.execute(
            select(MATCHES.c.subscription_id, MATCHES.c.offer_key, MATCHES.c.price_per_gpu_hour)
            .where(MATCHES.c.offer_key.in_(keys[i : i + CHUNK]))
            .where(MATCHES.c.subscription_id.in_(sub_ids))
        ):
            in_set[(sid, key)] = Decimal(price)
    enter: list[dict[str, Any]] = []
    reprice: list[tuple[int, str, Decimal]] = []
    leave: list[tuple[int, str]] = []
    for o in offers:
        candidates = by_model.get(o.gpu_model, []) + by_model.get(None, [])
        passing = {s.id for s in candidates if s.filter.matches(o)}
        for s in candidates:
            last = in_set.pop((s.id, o.key), None)
            if s.id in passing:
                if last is None:
                    s.entered.append(o)
                    enter.append(
                        {
                            "subscription_id": s.id,
                            "offer_key": o.key,
                            "price_per_gpu_hour": o.price_per_gpu_hour,
                            "entered_at": now,
                        }
                    )
                elif o.price_per_gpu_hour <= last * (1 - s.drop):
                    s.drops.append((o, last))
                    reprice.append((s.id, o.key, o.price_per_gpu_hour))
            elif last is not None:
                leave.append((s.id, o.key))
    # Set members whose offer is not a candidate any more (the filter's models differ from
    # the offer's, e.g. after a renaming): they left too.
    leave += list(in_set)
    if enter:
        conn.execute(insert(MATCHES), enter)
    for sid, key, price in reprice:
        conn.execute(
            update(MATCHES)
            .where(MATCHES.c.subscription_id == sid, MATCHES.c.offer_key == key)
            .values(price_per_gpu_hour=price)
        )
    for sid, key in leave:
        conn.execute(
            delete(MATCHES).where(MATCHES.c.subscription_id == sid, MATCHES.c.offer_key == key)
        )
    ids = []
    cfg = ScoringConfig.from_settings(settings.scoring)
    for s in subs:
        if not s.entered and not s.drops:
            continue
        payload = offers_message(s.name, s.filter, s.entered, s.drops, settings, cfg, now)
        ids.append(
            write_delivery(
                conn, s, "offers", f"offers:{s.id}:{first_id}-{last_id}", payload, now, event_at
            )
        )
    return ids


def _match_requests(
    conn: Connection,
    first_id: int,
    last_id: int,
    settings: Settings,
    now: datetime,
    event_at: datetime | None,
) -> list[int]:
    changes = conn.execute(
        select(
            REQUEST_EVENTS.c.id,
            REQUEST_EVENTS.c.request_id,
            REQUEST_EVENTS.c.before,
            REQUEST_EVENTS.c.after,
        )
        .where(
            REQUEST_EVENTS.c.type == "best_option_changed",
            REQUEST_EVENTS.c.market_event_id >= first_id,
            REQUEST_EVENTS.c.market_event_id <= last_id,
        )
        .order_by(REQUEST_EVENTS.c.id)
    ).all()
    if not changes:
        return []
    by_request: dict[int, list[Any]] = defaultdict(list)
    for ch in changes:
        by_request[ch.request_id].append(ch)
    subs = conn.execute(
        select(SUBS.c.id, SUBS.c.team_id, SUBS.c.name, SUBS.c.request_id).where(
            SUBS.c.kind == "request",
            SUBS.c.state == ACTIVE,
            SUBS.c.deleted_at.is_(None),
            SUBS.c.request_id.in_(list(by_request)),
        )
    ).all()
    names = dict(
        conn.execute(
            select(CapacityRequest.__table__.c.id, CapacityRequest.__table__.c.name).where(  # type: ignore[attr-defined]
                CapacityRequest.__table__.c.id.in_(list(by_request))  # type: ignore[attr-defined]
            )
        ).all()
    )
    ids = []
    for s in subs:
        for ch in by_request[s.request_id]:
            payload = request_message(
                s.name, s.request_id, names.get(s.request_id), ch.before, ch.after, settings
            )
            ids.append(
                write_delivery(
                    conn, s, "request", f"request:{s.id}:{ch.id}", payload, now, event_at
                )
            )
    return ids


def claim_batch(conn: Connection, first_id: int, last_id: int) -> bool:
    """Take the write lock of the poll runs whose events lie in `first..last` (a no-op
    update: row locks on PostgreSQL, the database write lock on SQLite) and say whether any
    of them is still unprocessed. Two runs of one batch at once (a slow batch the sweep
    re-queued) are serialised here: the second waits, then finds it processed and does
    nothing, instead of rescoring from the same stored best options and alerting twice."""
    runs = select(EVENTS.c.poll_run_id).where(EVENTS.c.id >= first_id, EVENTS.c.id <= last_id)
    conn.execute(update(RUNS).where(RUNS.c.id.in_(runs)).values(processed_at=RUNS.c.processed_at))
    left = conn.execute(
        select(func.count()).where(RUNS.c.id.in_(runs), RUNS.c.processed_at.is_(None))
    ).scalar_one()
    return bool(left)


def mark_processed(conn: Connection, first_id: int, last_id: int, now: datetime) -> None:
    """Stamp the poll runs whose events lie in `first..last` as processed."""
    conn.execute(
        update(RUNS)
        .where(
            RUNS.c.id.in_(
                select(EVENTS.c.poll_run_id).where(EVENTS.c.id >= first_id, EVENTS.c.id <= last_id)
            ),
            RUNS.c.processed_at.is_(None),
        )
        .values(processed_at=now)
    )
