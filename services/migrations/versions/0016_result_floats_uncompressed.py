"""PostgreSQL keeps a run's packed float columns uncompressed (STORAGE EXTERNAL): packed float64 scores do not
compress, and trying on every value of a large run cost more than the rest of writing it (a 300,000-customer run's
results and history layout: about 1.0-1.7 s with compression tried, 0.7 s without). The id and integer blobs,
which do compress, keep the default. SQLite has no such setting: nothing to do there.

Revision ID: 0016_result_floats_uncompressed
Revises: 0015_service_decisions
Create Date: 2026-12-07
"""
from alembic import op

revision = "0016_result_floats_uncompressed"
down_revision = "0015_service_decisions"
branch_labels = None
depends_on = None

FLOAT_COLUMNS = {
    "scoring_result_chunks": ("dimension_scores", "composite", "percentiles", "outcome_values"),
    "scoring_result_buckets": ("floats",),
}


def _set_storage(storage: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in FLOAT_COLUMNS.items():
        for column in columns:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE {storage}")


def upgrade() -> None:
    _set_storage("EXTERNAL")


def downgrade() -> None:
    _set_storage("EXTENDED")
