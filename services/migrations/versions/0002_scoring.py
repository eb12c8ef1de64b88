"""Scoring tables: model versions, runs and run result chunks.

Revision ID: 0002_scoring
Revises: 0001_registry
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_scoring"
down_revision = "0001_registry"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "scoring_models",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("model_id", sa.String(63), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("spec_json", sa.Text, nullable=False),
        sa.Column("change_note", sa.String(1024), nullable=False, server_default=""),
        sa.Column("creator", sa.String(256), nullable=False, server_default=""),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("model_id", "version", name="uq_scoring_models_model_id_version"),
    )
    op.create_table(
        "scoring_runs",
        sa.Column("run_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model_id", sa.String(63), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("customers_done", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("customers_total", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("percent_done", sa.Float, nullable=False, server_default="0"),
        sa.Column("failure_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("previous_run_id", sa.BigInteger, nullable=True),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("start_time_us", sa.BigInteger, nullable=True),
        sa.Column("end_time_us", sa.BigInteger, nullable=True),
        sa.Column("export_seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("scoring_seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("store_seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("tier_counts_json", sa.Text, nullable=False, server_default="[]"),
        sa.Column("tier_moves_json", sa.Text, nullable=False, server_default="[]"),
        sa.Column("fitted", sa.LargeBinary, nullable=True),
    )
    op.create_index("ix_scoring_runs_model_state", "scoring_runs", ["model_id", "state"])
    op.create_table(
        "scoring_result_chunks",
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("scoring_runs.run_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("chunk_index", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("first_rank", sa.BigInteger, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("customer_ids", sa.LargeBinary, nullable=False),
        sa.Column("dimension_scores", sa.LargeBinary, nullable=False),
        sa.Column("composite", sa.LargeBinary, nullable=False),
        sa.Column("percentiles", sa.LargeBinary, nullable=False),
        sa.Column("tier_levels", sa.LargeBinary, nullable=False),
        sa.Column("previous_tier_levels", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("scoring_result_chunks")
    op.drop_table("scoring_runs")
    op.drop_table("scoring_models")
