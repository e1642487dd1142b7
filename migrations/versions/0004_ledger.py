"""reservation ledger: reservations, ledger entries, usage samples

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from broker.db import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MONEY = sa.Numeric(18, 6)
COUNT = sa.Numeric(10, 3)
GPU_HOURS = sa.Numeric(18, 3)
LIVE_BLOCK = "kind = 'capacity_block' AND state IN ('held', 'active')"


def upgrade() -> None:
    op.create_table(
        "reservations",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("team_id", ID, sa.ForeignKey("teams.id"), nullable=False),
        sa.Column("request_id", ID, sa.ForeignKey("capacity_requests.id")),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("offer_key", sa.String(512)),
        sa.Column("instances", sa.Integer()),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("gpu_model", sa.String(64), nullable=False),
        sa.Column("gpu_family", sa.String(64), nullable=False),
        sa.Column("gpus", COUNT, nullable=False),
        sa.Column("region", sa.String(128), nullable=False),
        sa.Column("country", sa.String(2)),
        sa.Column("jurisdiction", sa.String(8)),
        sa.Column("starts_at", UTCDateTime(), nullable=False),
        sa.Column("ends_at", UTCDateTime(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("rate_per_gpu_hour", MONEY, nullable=False),
        sa.Column("upfront_fee_usd", MONEY, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("counterparty", sa.String(256)),
        sa.Column("notes", sa.String(2000)),
        sa.Column("created_by", sa.String(160), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("activated_at", UTCDateTime()),
        sa.Column("cancelled_at", UTCDateTime()),
        sa.CheckConstraint("ends_at > starts_at", name="ck_reservations_term"),
        sa.CheckConstraint("gpus > 0", name="ck_reservations_gpus"),
        sa.CheckConstraint("rate_per_gpu_hour >= 0", name="ck_reservations_rate"),
        sa.CheckConstraint("upfront_fee_usd >= 0", name="ck_reservations_upfront_fee"),
    )
    op.create_index("ix_reservations_request_id", "reservations", ["request_id"])
    op.create_index("ix_reservations_team_state", "reservations", ["team_id", "state"])
    op.create_index("ix_reservations_offer_key_state", "reservations", ["offer_key", "state"])
    op.create_index(
        "uq_reservations_live_capacity_block",
        "reservations",
        ["offer_key"],
        unique=True,
        sqlite_where=sa.text(LIVE_BLOCK),
        postgresql_where=sa.text(LIVE_BLOCK),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("reservation_id", ID, sa.ForeignKey("reservations.id"), nullable=False),
        sa.Column("team_id", ID, sa.ForeignKey("teams.id"), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(160), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(1000)),
        sa.Column("before", sa.JSON),
        sa.Column("after", sa.JSON),
    )
    op.create_index("ix_ledger_entries_reservation_id", "ledger_entries", ["reservation_id"])
    op.create_index("ix_ledger_entries_team_id", "ledger_entries", ["team_id"])
    op.create_table(
        "usage_samples",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("reservation_id", ID, sa.ForeignKey("reservations.id"), nullable=False),
        sa.Column("team_id", ID, sa.ForeignKey("teams.id"), nullable=False),
        sa.Column("period_start", UTCDateTime(), nullable=False),
        sa.Column("period_end", UTCDateTime(), nullable=False),
        sa.Column("gpu_hours", GPU_HOURS, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("recorded_by", sa.String(160), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("reservation_id", "period_start", name="uq_usage_samples_period"),
        sa.CheckConstraint("period_end > period_start", name="ck_usage_samples_period"),
        sa.CheckConstraint("gpu_hours >= 0", name="ck_usage_samples_gpu_hours"),
    )
    op.create_index("ix_usage_samples_reservation_id", "usage_samples", ["reservation_id"])
    op.create_index("ix_usage_samples_team_id", "usage_samples", ["team_id"])


def downgrade() -> None:
    op.drop_index("ix_usage_samples_team_id", table_name="usage_samples")
    op.drop_index("ix_usage_samples_reservation_id", table_name="usage_samples")
    op.drop_table("usage_samples")
    op.drop_index("ix_ledger_entries_team_id", table_name="ledger_entries")
    op.drop_index("ix_ledger_entries_reservation_id", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_index("uq_reservations_live_capacity_block", table_name="reservations")
    op.drop_index("ix_reservations_offer_key_state", table_name="reservations")
    op.drop_index("ix_reservations_team_state", table_name="reservations")
    op.drop_index("ix_reservations_request_id", table_name="reservations")
    op.drop_table("reservations")
