"""Lifecycle stages: each customer's stage and when it entered it, and every stage it entered.

Revision ID: 0008_lifecycle
Revises: 0007_run_lifetime_value
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_lifecycle"
down_revision = "0007_run_lifetime_value"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ACTIVE = 3  # cvh.common.v1.LIFECYCLE_STAGE_ACTIVE: what every customer stored before stages were


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy of the table, whose self-referencing key SQLite would rebuild).
    op.add_column("registry_customers",
                  sa.Column("lifecycle_stage", sa.SmallInteger, nullable=False, server_default=str(ACTIVE)))
    op.add_column("registry_customers", sa.Column("stage_time_us", sa.BigInteger, nullable=False, server_default="0"))
    op.create_index("ix_registry_customers_lifecycle_stage", "registry_customers", ["lifecycle_stage"])
    # A stored customer has been active since it was created.
    op.execute("UPDATE registry_customers SET stage_time_us = create_time_us")
    op.create_table(
        "registry_lifecycle_history",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(128),
                  sa.ForeignKey("registry_customers.customer_id", ondelete="CASCADE"), nullable=False),
        sa.Column("stage", sa.SmallInteger, nullable=False),
        sa.Column("enter_time_us", sa.BigInteger, nullable=False),
        sa.Index("ix_registry_lifecycle_history_customer", "customer_id", "enter_time_us"),
    )
    op.add_column("scoring_runs", sa.Column("churned_left_out", sa.BigInteger, nullable=False, server_default="0"))
    op.execute("INSERT INTO registry_lifecycle_history (customer_id, stage, enter_time_us) "
               f"SELECT customer_id, {ACTIVE}, create_time_us FROM registry_customers")


def downgrade() -> None:
    with op.batch_alter_table("scoring_runs") as table:
        table.drop_column("churned_left_out")
    op.drop_table("registry_lifecycle_history")
    with op.batch_alter_table("registry_customers") as table:
        table.drop_index("ix_registry_customers_lifecycle_stage")
        table.drop_column("stage_time_us")
        table.drop_column("lifecycle_stage")
