"""Runs remember outcomes: each result's outcome signal values, lifecycle stage and bad-profit flag, the run's
outcome signal names, and the run's results once more bucketed by customer id (one read per run for a history).

Revision ID: 0012_run_outcomes
Revises: 0011_run_export_sequence
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0012_run_outcomes"
down_revision = "0011_run_export_sequence"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN: nullable columns, NULL for the runs stored before (they stored no outcomes).
    op.add_column("scoring_runs", sa.Column("outcome_signals_json", sa.Text, nullable=True))
    op.add_column("scoring_runs", sa.Column("history_buckets", sa.Integer, nullable=True))
    for name in ("outcome_values", "lifecycle_stages", "bad_profit"):
        op.add_column("scoring_result_chunks", sa.Column(name, sa.LargeBinary, nullable=True))
    op.create_table(
        "scoring_result_buckets",
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("scoring_runs.run_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("bucket", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("customer_ids", sa.LargeBinary, nullable=False),
        sa.Column("floats", sa.LargeBinary, nullable=False),
        sa.Column("ints", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("scoring_result_buckets")
    with op.batch_alter_table("scoring_result_chunks") as table:
        for name in ("outcome_values", "lifecycle_stages", "bad_profit"):
            table.drop_column(name)
    with op.batch_alter_table("scoring_runs") as table:
        table.drop_column("history_buckets")
        table.drop_column("outcome_signals_json")
