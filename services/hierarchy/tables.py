"""Tables owned by the hierarchy service: tier policy versions (the snapshot itself lives in memory)."""

import sqlalchemy as sa

metadata = sa.MetaData()

policies = sa.Table(
    "hierarchy_policies", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    # A serialized cvh.hierarchy.v1.TierPolicy.
    sa.Column("policy", sa.LargeBinary, nullable=False),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
)
