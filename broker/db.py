"""Engine and sessions: SQLite by default, PostgreSQL by URL; schema by Alembic.

Owns the connection settings of each backend (SQLite WAL + busy timeout, PostgreSQL pool
pre-ping), the column types that must behave the same on both (`UTCDateTime`), and the
database's clock (`database_now`, `clock_skew_s`): irreversible time-based transitions (the
expiry of reservations, `broker.ledger_expiry`) follow it rather than the clock of whichever
process runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, DateTime, Engine, create_engine, event, select, text
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session, SQLModel, col

from broker.config import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores naive text; we re-attach UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def make_engine(settings: Settings | None = None, url: str | None = None) -> Engine:
    """An engine for `url` (default: the settings' database URL)."""
    settings = settings or Settings()
    url = url or settings.effective_database_url
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


#: The database server's current time, UTC. PostgreSQL: `now()` (the transaction's start,
#: so one transaction sees one time); SQLite: the host's UTC clock, to the millisecond
#: (`CURRENT_TIMESTAMP` has whole seconds only).
_NOW_SQL = {
    "postgresql": "SELECT now()",
    "sqlite": "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
}


def database_now(conn: Connection) -> datetime:
    """The database's current time (aware UTC), read on `conn` (in its transaction)."""
    value = conn.execute(text(_NOW_SQL.get(conn.dialect.name, "SELECT CURRENT_TIMESTAMP")))
    now = value.scalar_one()
    if isinstance(now, str):  # SQLite answers text
        now = datetime.fromisoformat(now)
    if not isinstance(now, datetime):
        raise TypeError(f"the database answered {now!r} for its current time")
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def clock_skew_s(engine: Engine, clock: Callable[[], datetime]) -> float:
    """`clock()` minus the database's time, in seconds (positive: this process runs ahead).

    The process clock is read just before and after the query and the midpoint compared,
    so the round trip does not count as skew.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database does not answer.
    """
    with engine.connect() as conn:
        before = clock()
        db_now = database_now(conn)
        after = clock()
    return ((before + (after - before) / 2) - db_now).total_seconds()


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to `revision`."""
    from alembic import command

    cfg = _alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Revert migrations down to `revision`."""
    from alembic import command

    cfg = _alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None: not migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        rev: str | None = MigrationContext.configure(conn).get_current_revision()
        return rev


M = TypeVar("M", bound=SQLModel)


def keyset_page(
    session: Session,
    model: type[M],
    *where: ColumnElement[bool],
    after_id: int | None = None,
    limit: int = 50,
) -> list[M]:
    """One page of `model`'s rows matching `where`, by id, after `after_id` (the API's
    cursor pagination: stable under inserts, no offset scans)."""
    id_col = col(model.id)  # type: ignore[attr-defined]
    stmt = select(model).where(*where)
    if after_id is not None:
        stmt = stmt.where(id_col > after_id)
    return list(session.exec(stmt.order_by(id_col).limit(limit)).scalars().all())  # type: ignore[call-overload]
