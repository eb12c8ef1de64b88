"""Tables owned by the scoring service.

A run's results are stored as packed column chunks in rank order (a few
hundred rows for a million customers): written in bulk, streamed out as they
are, and paged through by rank without a row per customer.
"""

import sqlalchemy as sa

metadata = sa.MetaData()

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

models = sa.Table(
    "scoring_models", metadata,
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

runs = sa.Table(
    "scoring_runs", metadata,
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
    # Written every few seconds by the process executing the run: a run gone quiet was abandoned.
    sa.Column("heartbeat_us", sa.BigInteger, nullable=True),
    # The process executing the run (services/common/processes.py): a restart on the same machine fails the runs
    # of its dead predecessor at once, without waiting for their heartbeat to go stale.
    sa.Column("executor", sa.String(255), nullable=True),
    sa.Column("export_seconds", sa.Float, nullable=False, server_default="0"),
    # Churned customers of the base the run did not score.
    sa.Column("churned_left_out", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("scoring_seconds", sa.Float, nullable=False, server_default="0"),
    sa.Column("store_seconds", sa.Float, nullable=False, server_default="0"),
    # The registry change feed sequence the run's export held (NULL for runs before it was recorded).
    sa.Column("export_sequence", sa.BigInteger, nullable=True),
    # JSON: customers per tier level, and (from level, to level) -> customers.
    sa.Column("tier_counts_json", sa.Text, nullable=False, server_default="[]"),
    sa.Column("tier_moves_json", sa.Text, nullable=False, server_default="[]"),
    # scoring_engine.FittedModel.to_bytes(): what online scoring needs.
    sa.Column("fitted", sa.LargeBinary, nullable=True),
    # scoring_engine.lifetime_value.PopulationFit.to_dict() as JSON, for models with a lifetime_value block.
    sa.Column("lifetime_value_json", sa.Text, nullable=True),
    # JSON list: the outcome signals whose values the run stored (columns of result chunks' outcome_values);
    # NULL for runs made before runs stored outcomes.
    sa.Column("outcome_signals_json", sa.Text, nullable=True),
    # Buckets of the run's results by customer id (result_buckets), set once they are written (after the run
    # completed, in a transaction of their own); NULL: not (yet) written, a history reads the run's chunks.
    sa.Column("history_buckets", sa.Integer, nullable=True),
    sa.Index("ix_scoring_runs_model_state", "model_id", "state"),
)

result_chunks = sa.Table(
    "scoring_result_chunks", metadata,
    sa.Column("run_id", sa.BigInteger, sa.ForeignKey("scoring_runs.run_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("chunk_index", sa.Integer, primary_key=True, autoincrement=False),
    # Rank of the chunk's first row (1-based); rows are in rank order.
    sa.Column("first_rank", sa.BigInteger, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    # customer ids joined by "\n" (ids never contain it), UTF-8.
    sa.Column("customer_ids", sa.LargeBinary, nullable=False),
    # float64 rows x dimensions, then composite, percentile (float64); tiers, previous tiers (int32).
    sa.Column("dimension_scores", sa.LargeBinary, nullable=False),
    sa.Column("composite", sa.LargeBinary, nullable=False),
    sa.Column("percentiles", sa.LargeBinary, nullable=False),
    sa.Column("tier_levels", sa.LargeBinary, nullable=False),
    sa.Column("previous_tier_levels", sa.LargeBinary, nullable=False),
    # float64 rows x the run's outcome signals (NaN: missing); LifecycleStage per row (uint8); bad-profit flag
    # per row (uint8). NULL for runs made before runs stored outcomes.
    sa.Column("outcome_values", sa.LargeBinary, nullable=True),
    sa.Column("lifecycle_stages", sa.LargeBinary, nullable=True),
    sa.Column("bad_profit", sa.LargeBinary, nullable=True),
)

# The same results once more, bucketed by a stable hash of the customer id (services/scoring/history.py), so
# that one customer's result in a run is one row read: what GetCustomerHistory needs.
result_buckets = sa.Table(
    "scoring_result_buckets", metadata,
    sa.Column("run_id", sa.BigInteger, sa.ForeignKey("scoring_runs.run_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("bucket", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("rows", sa.Integer, nullable=False),
    # customer ids joined by "\n", UTF-8.
    sa.Column("customer_ids", sa.LargeBinary, nullable=False),
    # float64 rows x (dimensions, composite, percentile, rank, outcome values); int32 rows x (tier level,
    # previous tier level, lifecycle stage, bad-profit flag).
    sa.Column("floats", sa.LargeBinary, nullable=False),
    sa.Column("ints", sa.LargeBinary, nullable=False),
)
