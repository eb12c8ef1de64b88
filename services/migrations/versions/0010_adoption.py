"""Adoption tables: value hierarchy versions, telemetry aggregates (daily counts, distinct users), batch ids,
first achievements.

Revision ID: 0010_adoption
Revises: 0009_teams
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0010_adoption"
down_revision = "0009_teams"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "adoption_value_maps",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("nodes", sa.LargeBinary, nullable=False),
        sa.Column("change_note", sa.String(1024), nullable=False, server_default=""),
        sa.Column("author", sa.String(256), nullable=False, server_default=""),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("level_counts", sa.String(64), nullable=False, server_default=""),
    )
    op.create_table(
        "adoption_customers",
        sa.Column("customer_key", BigId, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(128), nullable=False, unique=True),
        sa.Column("first_seen_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "adoption_event_names",
        sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
    )
    op.create_table(
        "adoption_daily",
        sa.Column("customer_key", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("day", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("events", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_adoption_daily_day", "adoption_daily", ["day"])
    op.create_table(
        "adoption_users",
        sa.Column("customer_key", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("user_hash", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("first_day", sa.Integer, nullable=False),
        sa.Column("last_day", sa.Integer, nullable=False),
    )
    op.create_index("ix_adoption_users_last_day", "adoption_users", ["last_day"])
    op.create_table(
        "adoption_achievements",
        sa.Column("customer_key", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("node_key", sa.String(63), primary_key=True),
        sa.Column("first_day", sa.Integer, nullable=False),
    )
    op.create_table(
        "adoption_batches",
        sa.Column("batch_id", sa.String(128), primary_key=True),
        sa.Column("receive_time_us", sa.BigInteger, nullable=False),
        sa.Column("events_kept", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_adoption_batches_receive_time", "adoption_batches", ["receive_time_us"])


def downgrade() -> None:
    op.drop_table("adoption_batches")
    op.drop_table("adoption_achievements")
    op.drop_table("adoption_users")
    op.drop_table("adoption_daily")
    op.drop_table("adoption_event_names")
    op.drop_table("adoption_customers")
    op.drop_table("adoption_value_maps")
