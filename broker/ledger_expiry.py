"""Expiry of reservations, split out of `broker.ledger` (which re-exports it): a held or
active reservation whose end has passed becomes `expired`, once, with a `LedgerEntry` by
`system`. Run by the scheduled sweep (`workers.tasks.sweep`, the embedded housekeeping) and
before every report and ledger read of the API, so they are right without a scheduler.

Whose clock. Expiry is irreversible (an expired reservation is closed: it cannot be
reactivated or extended), so it never runs ahead of the database's clock (PostgreSQL
`now()`, SQLite's UTC `'now'`; `broker.db.database_now`): the cutoff is the earlier of the
caller's `now` and the database's time. A process whose clock runs 40 days ahead expires
nothing early (issue 16: such a worker's sweep expired two active reservations 16 and 28
days early); a `now` in the past (a test's clock, a report as of an earlier time) is
honoured; without `now` (the sweep) the database's time is the cutoff. How far a process
is off is measured by `broker.db.clock_skew_s` and shown by `/readyz` and the
`broker_clock_skew_seconds` metric.

Imports nothing of `broker.ledger` (which imports this module): the two values it writes
are `ReservationState.EXPIRED` and `Action.EXPIRED` there, both the string `expired`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlmodel import Session

from broker.db import database_now
from broker.models import LIVE_RESERVATION_STATES, LedgerEntry, Reservation

#: The state an ended reservation takes and the action its ledger entry records.
EXPIRED = "expired"
#: Who the ledger names for what the broker does by itself.
SYSTEM_ACTOR = "system"
_RES = Reservation.__table__  # type: ignore[attr-defined]


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def expiry_cutoff(session: Session, now: datetime | None = None) -> datetime:
    """The time up to which ended reservations expire: `now` capped by the database's
    clock (the database's clock when `now` is None)."""
    db_now = database_now(session.connection())
    return db_now if now is None or now > db_now else now


def expire_reservations(session: Session, now: datetime | None = None) -> list[int]:
    """Expire every held or active reservation whose end is at or before the cutoff
    (`expiry_cutoff`: `now`, never later than the database's clock). Each gets a ledger
    entry by `system`, stamped with the cutoff. Safe to run concurrently: a reservation is
    expired once. Returns the ids, ascending."""
    cutoff = expiry_cutoff(session, now)
    conn = session.connection()
    due = conn.execute(
        select(_RES.c.id, _RES.c.team_id, _RES.c.state, _RES.c.ends_at)
        .where(_RES.c.state.in_(LIVE_RESERVATION_STATES), _RES.c.ends_at <= cutoff)
        .order_by(_RES.c.id)
    ).all()
    done: list[int] = []
    for r in due:
        res = conn.execute(
            update(_RES)
            .where(_RES.c.id == r.id, _RES.c.state == r.state)
            .values(state=EXPIRED, updated_at=cutoff)
        )
        if res.rowcount != 1:
            continue
        session.add(
            LedgerEntry(
                reservation_id=r.id,
                team_id=r.team_id,
                at=cutoff,
                actor=SYSTEM_ACTOR,
                action=EXPIRED,
                reason=f"the term ended at {_iso(r.ends_at)}",
                before={"state": r.state},
                after={"state": EXPIRED},
            )
        )
        done.append(r.id)
    if done:
        session.flush()
        # Rows loaded in this session before the bulk UPDATE must not keep the old state.
        for obj in list(session.identity_map.values()):
            if isinstance(obj, Reservation) and obj.id in done:
                session.expire(obj)
    return done
