"""offers that tell the truth: unknown models kept, anomalies, provenance, honest history

- offers: `gpu_model` and `accelerator_kind` nullable (an accelerator the catalogue does
  not know is kept with its raw name in `gpu_name_raw`); `anomalies` (price-sanity flags);
  `poll_run_id` (the poll that last confirmed the offer: its source).
- observations: `kind` (appeared | changed | withdrawn | returned), the `gpu_count` and
  `price_per_gpu_hour` of the point's own time, `poll_run_id`. Existing points are
  backfilled with their offer's current GPU count (the only count known for them), the
  first point of each offer as `appeared`.
- poll_runs: `origins` and `unrecognised`; provider_states: `unrecognised`.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MONEY = sa.Numeric(18, 6)
COUNT = sa.Numeric(10, 3)


def upgrade() -> None:
    with op.batch_alter_table("offers") as batch:
        batch.alter_column("gpu_model", existing_type=sa.String(64), nullable=True)
        batch.alter_column("accelerator_kind", existing_type=sa.String(16), nullable=True)
        batch.add_column(sa.Column("gpu_name_raw", sa.String(128)))
        batch.add_column(sa.Column("anomalies", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(
            sa.Column(
                "poll_run_id", ID, sa.ForeignKey("poll_runs.id", name="fk_offers_poll_run_id")
            )
        )
        batch.create_index("ix_offers_poll_run_id", ["poll_run_id"])
    with op.batch_alter_table("observations") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="changed"))
        batch.add_column(sa.Column("gpu_count", COUNT))
        batch.add_column(sa.Column("price_per_gpu_hour", MONEY))
        batch.add_column(
            sa.Column(
                "poll_run_id",
                ID,
                sa.ForeignKey("poll_runs.id", name="fk_observations_poll_run_id"),
            )
        )
    op.execute(
        "UPDATE observations SET gpu_count = "
        "(SELECT o.gpu_count FROM offers o WHERE o.id = observations.offer_id)"
    )
    op.execute(
        "UPDATE observations SET price_per_gpu_hour = round(price_per_hour / gpu_count, 6) "
        "WHERE gpu_count > 0"
    )
    op.execute(
        "UPDATE observations SET kind = 'appeared' WHERE id IN "
        "(SELECT min(id) FROM observations GROUP BY offer_id)"
    )
    with op.batch_alter_table("poll_runs") as batch:
        batch.add_column(sa.Column("origins", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("unrecognised", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("provider_states") as batch:
        batch.add_column(sa.Column("unrecognised", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("provider_states") as batch:
        batch.drop_column("unrecognised")
    with op.batch_alter_table("poll_runs") as batch:
        batch.drop_column("unrecognised")
        batch.drop_column("origins")
    with op.batch_alter_table("observations") as batch:
        batch.drop_constraint("fk_observations_poll_run_id", type_="foreignkey")
        batch.drop_column("poll_run_id")
        batch.drop_column("price_per_gpu_hour")
        batch.drop_column("gpu_count")
        batch.drop_column("kind")
    # Offers of unknown accelerators cannot live in the old schema.
    op.execute(
        "DELETE FROM observations WHERE offer_id IN (SELECT id FROM offers WHERE gpu_model IS NULL)"
    )
    op.execute("DELETE FROM offers WHERE gpu_model IS NULL")
    with op.batch_alter_table("offers") as batch:
        batch.drop_index("ix_offers_poll_run_id")
        batch.drop_constraint("fk_offers_poll_run_id", type_="foreignkey")
        batch.drop_column("poll_run_id")
        batch.drop_column("anomalies")
        batch.drop_column("gpu_name_raw")
        batch.alter_column("accelerator_kind", existing_type=sa.String(16), nullable=False)
        batch.alter_column("gpu_model", existing_type=sa.String(64), nullable=False)
