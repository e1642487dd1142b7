"""market store: offers, observations, market events, poll runs, provider states

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from broker.db import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MONEY = sa.Numeric(18, 6)


def upgrade() -> None:
    op.create_table(
        "offers",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(512), nullable=False, unique=True),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("region", sa.String(128), nullable=False),
        sa.Column("zone", sa.String(128)),
        sa.Column("instance_type", sa.String(128), nullable=False),
        sa.Column("market", sa.String(32), nullable=False),
        sa.Column("offering_id", sa.String(128)),
        sa.Column("gpu_model", sa.String(64), nullable=False),
        sa.Column("gpu_family", sa.String(64)),
        sa.Column("accelerator_kind", sa.String(16), nullable=False),
        sa.Column("gpu_vendor", sa.String(32)),
        sa.Column("form_factor", sa.String(16)),
        sa.Column("gpu_count", sa.Numeric(10, 3), nullable=False),
        sa.Column("gpu_memory_gb", sa.Numeric(12, 2)),
        sa.Column("vcpus", sa.Numeric(12, 2)),
        sa.Column("memory_gb", sa.Numeric(12, 2)),
        sa.Column("interconnect", sa.String(64)),
        sa.Column("country", sa.String(2)),
        sa.Column("jurisdiction", sa.String(8)),
        sa.Column("continent", sa.String(32)),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("price_per_hour", MONEY, nullable=False),
        sa.Column("price_per_gpu_hour", MONEY, nullable=False),
        sa.Column("upfront_fee", MONEY),
        sa.Column("availability", sa.String(16), nullable=False),
        sa.Column("available_count", sa.Integer()),
        sa.Column("earliest_start", UTCDateTime()),
        sa.Column("min_duration_hours", sa.Integer()),
        sa.Column("max_duration_hours", sa.Integer()),
        sa.Column("first_seen", UTCDateTime(), nullable=False),
        sa.Column("last_seen", UTCDateTime(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("withdrawn_at", UTCDateTime()),
        sa.Column("fingerprint", sa.String(32), nullable=False),
        sa.Column("raw", sa.JSON(), nullable=False),
    )
    op.create_index("ix_offers_provider_active", "offers", ["provider", "active"])
    op.create_index("ix_offers_active_price", "offers", ["active", "price_per_gpu_hour"])
    op.create_index("ix_offers_gpu_model", "offers", ["gpu_model"])

    op.create_table(
        "observations",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("offer_id", ID, sa.ForeignKey("offers.id"), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("price_per_hour", MONEY, nullable=False),
        sa.Column("availability", sa.String(16), nullable=False),
        sa.Column("available_count", sa.Integer()),
    )
    op.create_index("ix_observations_offer_id", "observations", ["offer_id"])

    op.create_table(
        "poll_runs",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("label", sa.String(256)),
        sa.Column("fetched_at", UTCDateTime(), nullable=False),
        sa.Column("ingested_at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("offers_seen", sa.Integer(), nullable=False),
        sa.Column("scopes_ok", sa.JSON(), nullable=False),
        sa.Column("scope_errors", sa.JSON(), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
    )
    op.create_index("ix_poll_runs_source", "poll_runs", ["source"])

    op.create_table(
        "market_events",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("offer_key", sa.String(512)),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("poll_run_id", ID, sa.ForeignKey("poll_runs.id")),
        sa.Column("before", sa.JSON()),
        sa.Column("after", sa.JSON()),
    )
    op.create_index("ix_market_events_type", "market_events", ["type"])
    op.create_index("ix_market_events_offer_key", "market_events", ["offer_key"])
    op.create_index("ix_market_events_poll_run_id", "market_events", ["poll_run_id"])

    op.create_table(
        "provider_states",
        sa.Column("provider", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_poll_at", UTCDateTime()),
        sa.Column("last_success_at", UTCDateTime()),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("last_errors", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("provider_states")
    op.drop_index("ix_market_events_poll_run_id", table_name="market_events")
    op.drop_index("ix_market_events_offer_key", table_name="market_events")
    op.drop_index("ix_market_events_type", table_name="market_events")
    op.drop_table("market_events")
    op.drop_index("ix_poll_runs_source", table_name="poll_runs")
    op.drop_table("poll_runs")
    op.drop_index("ix_observations_offer_id", table_name="observations")
    op.drop_table("observations")
    op.drop_index("ix_offers_gpu_model", table_name="offers")
    op.drop_index("ix_offers_active_price", table_name="offers")
    op.drop_index("ix_offers_provider_active", table_name="offers")
    op.drop_table("offers")
