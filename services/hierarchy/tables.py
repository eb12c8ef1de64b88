"""Tables owned by the hierarchy service: tier policy versions and front-line decisions (the snapshot itself lives
in memory)."""

import sqlalchemy as sa

metadata = sa.MetaData()

policies = sa.Table(
    "hierarchy_policies", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    # A serialized cvh.hierarchy.v1.TierPolicy.
    sa.Column("policy", sa.LargeBinary, nullable=False),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
)

# Front-line decisions (RecordServiceDecision), one row each; read back per goodwill period.
service_decisions = sa.Table(
    "hierarchy_service_decisions", metadata,
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
    sa.Index("ix_hierarchy_service_decisions_time", "record_time_us"),
)
