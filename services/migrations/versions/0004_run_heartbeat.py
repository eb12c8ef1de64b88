"""Scoring runs record a heartbeat, so a run is failed only once its process has gone quiet.

Revision ID: 0004_run_heartbeat
Revises: 0003_hierarchy
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_run_heartbeat"
down_revision = "0003_hierarchy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scoring_runs") as table:
        table.add_column(sa.Column("heartbeat_us", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scoring_runs") as table:
        table.drop_column("heartbeat_us")
