"""Front-line decisions: RecordServiceDecision's rows, read per goodwill period (budgets, GetAuthorityUsage).

Revision ID: 0015_service_decisions
Revises: 0014_owner_since
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0015_service_decisions"
down_revision = "0014_owner_since"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hierarchy_service_decisions",
        sa.Column("decision_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("customer_id", sa.String(256), nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("offer", sa.Text, nullable=False),
        sa.Column("person_id", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("record_time_us", sa.BigInteger, nullable=False),
        sa.Column("tier_id", sa.String(256), nullable=False),
        sa.Column("outcome", sa.SmallInteger, nullable=False),
        sa.Column("escalation_note", sa.Text, nullable=False),
        sa.Column("escalation_level", sa.String(64), nullable=False),
        sa.Column("escalation_contact", sa.String(256), nullable=False),
    )
    op.create_index("ix_hierarchy_service_decisions_time", "hierarchy_service_decisions", ["record_time_us"])


def downgrade() -> None:
    op.drop_index("ix_hierarchy_service_decisions_time", "hierarchy_service_decisions")
    op.drop_table("hierarchy_service_decisions")
