"""Time in the alert pipeline: which clock stamps, and which one decides whether to send.

Two kinds of time are written to the alert tables:

- **Stamps** record when something happened: `created_at`, `sent_at`, `entered_at`,
  `updated_at`, a poll run's `processed_at`. They come from the injected clock (`clock`,
  by default the process clock `broker.domain.utcnow`), so a test reads back the times its
  clock set.
- **Decisions** say whether to send now: a delivery's `next_attempt_at` (due or not), its
  `claimed_until` (a sender still holds it, or was cut off), and the sweep's cut-offs (a
  batch or a delivery whose task counts as lost). They are written and compared in **the
  database's time** (`database_now`): every API process and worker shares that one clock,
  so a worker whose own clock is ten minutes off neither holds a due alert back nor sends a
  retry before Slack's Retry-After is over.

The injected clock decides instead only when it is a simulation rather than the process's
clock: tests and soaks that move time by hand (`clock.advance(hours=1)`) keep doing so. A
clock is the process clock when it is `broker.domain.utcnow` or carries a true
`process_clock` attribute (a test standing in for a process whose clock is wrong);
production passes `utcnow` everywhere (`workers.tasks`, `broker.cli`, `create_app`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, func, select

from broker.domain import Clock, utcnow

#: SQLite's `CURRENT_TIMESTAMP` is UTC in whole seconds; `%f` keeps the milliseconds, so a
#: retry due in half a second is not held back up to a second more.
_SQLITE_NOW = func.strftime("%Y-%m-%d %H:%M:%f", "now")


def database_now(conn: Connection) -> datetime:
    """The database's clock as an aware UTC datetime: PostgreSQL `now()` (the start of the
    current transaction), SQLite `'now'` (UTC, milliseconds)."""
    if conn.dialect.name == "sqlite":
        text = conn.execute(select(_SQLITE_NOW)).scalar_one()
        return datetime.fromisoformat(str(text)).replace(tzinfo=UTC)
    value = conn.execute(select(func.now())).scalar_one()
    if not isinstance(value, datetime):
        raise TypeError(f"now() returned {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def is_process_clock(clock: Clock) -> bool:
    """Is `clock` this process's real clock (which may be wrong), not a simulation?"""
    return clock is utcnow or getattr(clock, "process_clock", False) is True


def decision_now(conn: Connection, clock: Clock) -> datetime:
    """'Now' for deciding whether to send (see the module docstring): the database's time,
    unless `clock` is a simulation."""
    return database_now(conn) if is_process_clock(clock) else clock()


def due_now(conn: Connection, stamp: datetime) -> datetime:
    """`next_attempt_at` of a new outbox row stamped `stamp`: due at once whichever clock
    judges it, the database's (a writer whose clock runs ahead would otherwise hold its rows
    back) or a simulated one behind it (a test's clock set in the past)."""
    return min(stamp, database_now(conn))
