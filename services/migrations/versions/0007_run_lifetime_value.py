"""Scoring runs keep their lifetime-value fit (BG/NBD and Gamma-Gamma parameters, convergence, why the derived
signals are missing) for GetScoringRun and online scoring.

Revision ID: 0007_run_lifetime_value
Revises: 0006_change_feed
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_run_lifetime_value"
down_revision = "0006_change_feed"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scoring_runs") as table:
        table.add_column(sa.Column("lifetime_value_json", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scoring_runs") as table:
        table.drop_column("lifetime_value_json")
