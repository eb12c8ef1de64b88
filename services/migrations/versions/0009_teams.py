"""Customer teams: people, each customer's team by role (effective-dated), and the organisation's team.

Revision ID: 0009_teams
Revises: 0008_lifecycle
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_teams"
down_revision = "0008_lifecycle"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "registry_people",
        sa.Column("person_id", sa.String(256), primary_key=True),
        sa.Column("display_name", sa.String(256), nullable=False, server_default=""),
        sa.Column("capacity", sa.Integer, nullable=True),
        sa.Column("update_time_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "registry_team_members",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(128),
                  sa.ForeignKey("registry_customers.customer_id", ondelete="CASCADE"), nullable=False),
        sa.Column("role", sa.String(63), nullable=False),
        sa.Column("person_id", sa.String(256), nullable=False),
        sa.Column("start_time_us", sa.BigInteger, nullable=False),
        sa.Column("end_time_us", sa.BigInteger, nullable=True),
        sa.Index("ix_registry_team_members_customer_role", "customer_id", "role", "end_time_us"),
        sa.Index("ix_registry_team_members_person", "person_id", "end_time_us"),
    )
    op.create_table(
        "registry_org_team",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("role", sa.String(63), nullable=False),
        sa.Column("person_id", sa.String(256), nullable=False),
        sa.Column("start_time_us", sa.BigInteger, nullable=False),
        sa.Column("end_time_us", sa.BigInteger, nullable=True),
    )
    # Each stored owner becomes the customer's team role "owner", since the customer was last updated (the
    # time it was given its owner is not known), and a person.
    op.execute("INSERT INTO registry_team_members (customer_id, role, person_id, start_time_us) "
               "SELECT customer_id, 'owner', owner, update_time_us FROM registry_customers WHERE owner <> ''")
    op.execute("INSERT INTO registry_people (person_id, display_name, update_time_us) "
               "SELECT owner, '', MAX(update_time_us) FROM registry_customers WHERE owner <> '' GROUP BY owner")


def downgrade() -> None:
    op.drop_table("registry_org_team")
    op.drop_table("registry_team_members")
    op.drop_table("registry_people")
