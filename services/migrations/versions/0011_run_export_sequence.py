"""Scoring runs record the registry change feed sequence their export held, so a follower of the feed can
re-score what changed after the run read it.

Revision ID: 0011_run_export_sequence
Revises: 0010_adoption
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0011_run_export_sequence"
down_revision = "0010_adoption"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scoring_runs") as table:
        table.add_column(sa.Column("export_sequence", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scoring_runs") as table:
        table.drop_column("export_sequence")
