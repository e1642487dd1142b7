"""quotas, teams, API keys, capacity requests, request events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from broker.db import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
SIZE = sa.Numeric(12, 2)


def upgrade() -> None:
    op.create_table(
        "quotas",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("region", sa.String(128), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("market", sa.String(32), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("limit", SIZE, nullable=False),
        sa.Column("usage", SIZE),
        sa.Column("instance_types", sa.JSON, nullable=False),
        sa.Column("description", sa.String(256)),
        sa.Column("seen_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("provider", "region", "name", "market"),
    )
    op.create_table(
        "teams",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("team_id", ID, sa.ForeignKey("teams.id"), nullable=False, index=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False, index=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(128)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_used_at", UTCDateTime()),
        sa.Column("revoked_at", UTCDateTime()),
    )
    op.create_table(
        "capacity_requests",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("team_id", ID, sa.ForeignKey("teams.id"), nullable=False),
        sa.Column("name", sa.String(256)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("gpu_models", sa.JSON, nullable=False),
        sa.Column("best", sa.JSON),
        sa.Column("scored_at", UTCDateTime()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_requests_team_state", "capacity_requests", ["team_id", "state"])
    op.create_table(
        "request_events",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column(
            "request_id", ID, sa.ForeignKey("capacity_requests.id"), nullable=False, index=True
        ),
        sa.Column("team_id", ID, sa.ForeignKey("teams.id"), nullable=False, index=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("market_event_id", ID),
        sa.Column("before", sa.JSON),
        sa.Column("after", sa.JSON),
    )


def downgrade() -> None:
    op.drop_table("request_events")
    op.drop_index("ix_requests_team_state", table_name="capacity_requests")
    op.drop_table("capacity_requests")
    op.drop_table("api_keys")
    op.drop_table("teams")
    op.drop_table("quotas")
