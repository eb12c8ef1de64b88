"""Tables owned by the adoption service. Other services reach this data through AdoptionService only.

Telemetry is kept as aggregates, never as raw events: a count per customer, event and day, and the distinct
users (64-bit hashes) per customer, event and day, which is all a distinct-users-in-the-last-N-days rule
needs; packed in chunks (``adoption_chunks``) of one message and day.
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

# Telemetry aggregates in chunks, one per message and day (days since 1970-01-01, UTC), written in one
# statement per message rather than a row per event: ``daily`` holds the message's events summed per customer
# and event that day (columns customer_key <i4, event_id <i4, events <i8, each daily_rows long), ``users`` the
# distinct users per customer and event that day (customer_key <i4, event_id <i4, user_hash <i8). Readers
# decode them as whole arrays (services/adoption/held.py) and keep them in memory; chunk ids only grow, so a
# reader loads only the chunks it has not seen.
chunks = sa.Table(
    "adoption_chunks", metadata,
    sa.Column("chunk_id", BigId, primary_key=True, autoincrement=True),
    sa.Column("day", sa.Integer, nullable=False),
    sa.Column("daily_rows", sa.Integer, nullable=False),
    sa.Column("daily", sa.LargeBinary, nullable=False),
    sa.Column("users", sa.LargeBinary, nullable=False),
    sa.Index("ix_adoption_chunks_day", "day"),
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
