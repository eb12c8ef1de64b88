"""Scoring runs record the process executing them, so a restart on the same machine fails its dead
predecessor's runs at start-up.

Revision ID: 0005_run_executor
Revises: 0004_run_heartbeat
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_run_executor"
down_revision = "0004_run_heartbeat"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scoring_runs") as table:
        table.add_column(sa.Column("executor", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scoring_runs") as table:
        table.drop_column("executor")
