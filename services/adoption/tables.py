"""Tables owned by the adoption service. Other services reach this data through AdoptionService only.

Telemetry is kept as aggregates, never as raw events: a count per customer, event and day
(``adoption_daily``), and per customer, event and user the last day that user was seen
(``adoption_users``, users as 64-bit hashes), which is all a distinct-users-in-the-last-N-days rule needs.
The store so grows with customers x events x days (and users), not with traffic.
"""

import sqlalchemy as sa

metadata = sa.MetaData()

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Immutable versions of the value hierarchy: the nodes as a serialized cvh.adoption.v1.ValueMapVersion.
value_maps = sa.Table(
    "adoption_value_maps", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("nodes", sa.LargeBinary, nullable=False),
    sa.Column("change_note", sa.String(1024), nullable=False, server_default=""),
    sa.Column("author", sa.String(256), nullable=False, server_default=""),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()),
    # strategies, initiatives, use cases, procedures, comma-separated (what a list shows without the nodes).
    sa.Column("level_counts", sa.String(64), nullable=False, server_default=""),
)

# Customers telemetry was kept for (checked against the registry once), numbered for compact aggregates.
customers = sa.Table(
    "adoption_customers", metadata,
    sa.Column("customer_key", BigId, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(128), nullable=False, unique=True),
    sa.Column("first_seen_us", sa.BigInteger, nullable=False),
)

# Event names seen in telemetry, numbered.
event_names = sa.Table(
    "adoption_event_names", metadata,
    sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
)

# Events per customer, event and day (days since 1970-01-01, UTC).
daily = sa.Table(
    "adoption_daily", metadata,
    sa.Column("customer_key", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("day", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("events", sa.BigInteger, nullable=False),
    sa.Index("ix_adoption_daily_day", "day"),
)

# Per customer, event and user (a 64-bit hash of the user id): the first and last day the user was seen.
users = sa.Table(
    "adoption_users", metadata,
    sa.Column("customer_key", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_hash", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("first_day", sa.Integer, nullable=False),
    sa.Column("last_day", sa.Integer, nullable=False),
    sa.Index("ix_adoption_users_last_day", "last_day"),
)

# The day each customer was first seen to have achieved each node (by key), by the batch evaluation.
achievements = sa.Table(
    "adoption_achievements", metadata,
    sa.Column("customer_key", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("node_key", sa.String(63), primary_key=True),
    sa.Column("first_day", sa.Integer, nullable=False),
)

# Batch ids of messages kept, so that a re-sent batch is not counted twice (forgotten after the retention).
batches = sa.Table(
    "adoption_batches", metadata,
    sa.Column("batch_id", sa.String(128), primary_key=True),
    sa.Column("receive_time_us", sa.BigInteger, nullable=False),
    sa.Column("events_kept", sa.BigInteger, nullable=False),
    sa.Index("ix_adoption_batches_receive_time", "receive_time_us"),
)
