"""idempotency keys of creating POSTs

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from broker.db import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("team_id", ID, sa.ForeignKey("teams.id"), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer()),
        sa.Column("response", sa.JSON()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("team_id", "key", name="uq_idempotency_keys_team_key"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
