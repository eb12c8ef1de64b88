"""Adoption telemetry in packed chunks (one per message and day) instead of a row per customer, event and day
and per customer, event and user: the rows kept are converted, one chunk per day.

Revision ID: 0013_adoption_store
Revises: 0012_run_outcomes
Create Date: 2026-12-07
"""
import numpy as np
import sqlalchemy as sa
from alembic import op

revision = "0013_adoption_store"
down_revision = "0012_run_outcomes"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _packed(*columns: tuple[list, str]) -> bytes:
    return b"".join(np.asarray(values, dtype).tobytes() for values, dtype in columns)


def upgrade() -> None:
    chunks = op.create_table(
        "adoption_chunks",
        sa.Column("chunk_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("day", sa.Integer, nullable=False),
        sa.Column("daily_rows", sa.Integer, nullable=False),
        sa.Column("daily", sa.LargeBinary, nullable=False),
        sa.Column("users", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_adoption_chunks_day", "adoption_chunks", ["day"])
    conn = op.get_bind()
    days: dict[int, tuple[list, list]] = {}
    for key, event, day, events in conn.execute(sa.text(
            "SELECT customer_key, event_id, day, events FROM adoption_daily")):
        days.setdefault(day, ([], []))[0].append((key, event, events))
    # Of a user only the last day seen matters to a rule (windows end today).
    for key, event, user_hash, last_day in conn.execute(sa.text(
            "SELECT customer_key, event_id, user_hash, last_day FROM adoption_users")):
        days.setdefault(last_day, ([], []))[1].append((key, event, user_hash))
    for day, (daily, users) in sorted(days.items()):
        d = list(zip(*daily)) or [[], [], []]
        u = list(zip(*users)) or [[], [], []]
        conn.execute(chunks.insert().values(
            day=day, daily_rows=len(daily), daily=_packed((d[0], "<i4"), (d[1], "<i4"), (d[2], "<i8")),
            users=_packed((u[0], "<i4"), (u[1], "<i4"), (u[2], "<i8"))))
    op.drop_table("adoption_users")
    op.drop_table("adoption_daily")


def downgrade() -> None:
    # The chunks are not converted back: telemetry arrives again and the retention refills the rows.
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
    op.drop_index("ix_adoption_chunks_day", "adoption_chunks")
    op.drop_table("adoption_chunks")
