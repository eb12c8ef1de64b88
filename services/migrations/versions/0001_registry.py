"""Registry tables: customers, labels, signal catalog and signal history.

Revision ID: 0001_registry
Revises:
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0001_registry"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "registry_customers",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(128), nullable=False, unique=True),
        sa.Column("display_name", sa.String(256), nullable=False, server_default=""),
        sa.Column("parent_id", sa.String(128),
                  sa.ForeignKey("registry_customers.customer_id", ondelete="RESTRICT",
                            deferrable=True, initially="DEFERRED"), nullable=True),
        sa.Column("stakeholder_role", sa.SmallInteger, nullable=False),
        sa.Column("owner", sa.String(256), nullable=False, server_default=""),
        sa.Column("signal_values", sa.LargeBinary, nullable=True),
        sa.Column("signal_times", sa.LargeBinary, nullable=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("update_time_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_registry_customers_parent_id", "registry_customers", ["parent_id"])
    op.create_index("ix_registry_customers_owner", "registry_customers", ["owner"])
    op.create_table(
        "registry_customer_labels",
        sa.Column("customer_id", sa.String(128),
                  sa.ForeignKey("registry_customers.customer_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(63), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )
    op.create_index("ix_registry_customer_labels_key_value", "registry_customer_labels", ["key", "value"])
    op.create_table(
        "registry_signal_names",
        sa.Column("signal_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
    )
    op.create_table(
        "registry_signal_history",
        sa.Column("pk", BigId, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(128),
                  sa.ForeignKey("registry_customers.customer_id", ondelete="CASCADE"), nullable=False),
        sa.Column("signal_id", sa.Integer, nullable=False),
        sa.Column("value", sa.Float(53), nullable=False),
        sa.Column("observe_time_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_registry_signal_history_customer", "registry_signal_history",
                    ["customer_id", "observe_time_us"])


def downgrade() -> None:
    op.drop_table("registry_signal_history")
    op.drop_table("registry_signal_names")
    op.drop_table("registry_customer_labels")
    op.drop_table("registry_customers")
