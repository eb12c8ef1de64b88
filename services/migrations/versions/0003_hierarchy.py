"""Hierarchy tables: tier policy versions.

Revision ID: 0003_hierarchy
Revises: 0002_scoring
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_hierarchy"
down_revision = "0002_scoring"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hierarchy_policies",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("policy", sa.LargeBinary, nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("hierarchy_policies")
