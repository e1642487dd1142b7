"""Alembic: the schema the migrations build is the schema the models describe, both ways."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect
from sqlmodel import SQLModel

import broker.models  # noqa: F401  (tables on the metadata)
from broker import db

TABLES = {"offers", "observations", "market_events", "poll_runs", "provider_states"}


def test_upgrade_head_matches_models_and_downgrade_base_drops_all(engine: Engine) -> None:
    # The fixture ran `upgrade head`.
    assert db.current_revision(engine) is not None
    assert set(inspect(engine).get_table_names()) >= TABLES
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, SQLModel.metadata) == []
    db.downgrade(engine, "base")
    assert db.current_revision(engine) is None
    assert not TABLES & set(inspect(engine).get_table_names())
    db.upgrade(engine)
    assert set(inspect(engine).get_table_names()) >= TABLES
