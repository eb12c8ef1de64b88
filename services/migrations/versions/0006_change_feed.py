"""The registry's change feed: each changed customer with a sequence that only grows, and the feed's counters.

Revision ID: 0006_change_feed
Revises: 0005_run_executor
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_change_feed"
down_revision = "0005_run_executor"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "registry_changes",
        sa.Column("seq", BigId, primary_key=True, autoincrement=False),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("change_time_us", sa.BigInteger, nullable=False),
        sa.Column("customer_ids", sa.Text, nullable=False),
    )
    op.create_table(
        "registry_feed",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("registry_feed")
    op.drop_table("registry_changes")
