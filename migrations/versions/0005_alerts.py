"""alerts: subscriptions, match sets, the delivery outbox; poll_runs.processed_at

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from broker.db import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MONEY = sa.Numeric(18, 6)


def upgrade() -> None:
    with op.batch_alter_table("poll_runs") as batch:
        batch.add_column(sa.Column("processed_at", UTCDateTime()))
    # Runs ingested before this revision were processed by then (or never will be usefully).
    op.execute("UPDATE poll_runs SET processed_at = ingested_at")
    op.create_table(
        "alert_subscriptions",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("team_id", ID, sa.ForeignKey("teams.id"), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("filter", sa.JSON(), nullable=False),
        sa.Column("request_id", ID, sa.ForeignKey("capacity_requests.id")),
        sa.Column("price_drop_pct", sa.Numeric(6, 4), nullable=False),
        sa.Column("channel_type", sa.String(16), nullable=False),
        sa.Column("channel_name", sa.String(128)),
        sa.Column("channel_secret", sa.String(4000), nullable=False),
        sa.Column("channel_hint", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("disabled_reason", sa.String(500)),
        sa.Column("created_by", sa.String(160), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("deleted_at", UTCDateTime()),
    )
    op.create_index("ix_alert_subscriptions_team", "alert_subscriptions", ["team_id", "deleted_at"])
    op.create_index("ix_alert_subscriptions_request_id", "alert_subscriptions", ["request_id"])
    op.create_table(
        "alert_matches",
        sa.Column("subscription_id", ID, sa.ForeignKey("alert_subscriptions.id"), primary_key=True),
        sa.Column("offer_key", sa.String(512), primary_key=True),
        sa.Column("price_per_gpu_hour", MONEY, nullable=False),
        sa.Column("entered_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "alert_deliveries",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("dedupe_key", sa.String(255), nullable=False, unique=True),
        sa.Column("subscription_id", ID, sa.ForeignKey("alert_subscriptions.id"), nullable=False),
        sa.Column("team_id", ID, sa.ForeignKey("teams.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("event_at", UTCDateTime()),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_until", UTCDateTime()),
        sa.Column("sent_at", UTCDateTime()),
        sa.Column("last_error", sa.String(1000)),
    )
    op.create_index(
        "ix_alert_deliveries_state_next", "alert_deliveries", ["state", "next_attempt_at"]
    )
    op.create_index("ix_alert_deliveries_subscription_id", "alert_deliveries", ["subscription_id"])


def downgrade() -> None:
    op.drop_index("ix_alert_deliveries_subscription_id", table_name="alert_deliveries")
    op.drop_index("ix_alert_deliveries_state_next", table_name="alert_deliveries")
    op.drop_table("alert_deliveries")
    op.drop_table("alert_matches")
    op.drop_index("ix_alert_subscriptions_request_id", table_name="alert_subscriptions")
    op.drop_index("ix_alert_subscriptions_team", table_name="alert_subscriptions")
    op.drop_table("alert_subscriptions")
    with op.batch_alter_table("poll_runs") as batch:
        batch.drop_column("processed_at")
