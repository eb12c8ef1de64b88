"""Tables owned by the registry. Other services reach this data through RegistryService only.

A customer's current signals live on its row as two packed arrays indexed by
signal id (values as float64 with NaN for "none", observation times as int64
microseconds): bulk import and export then touch one row per customer instead
of one per signal. Every observation that is no longer current is kept in
``registry_signal_history``.
"""

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

customers = sa.Table(
    "registry_customers", metadata,
    sa.Column("pk", BigId, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(128), nullable=False, unique=True),
    sa.Column("display_name", sa.String(256), nullable=False, server_default=""),
    sa.Column("parent_id", sa.String(128),
              sa.ForeignKey("registry_customers.customer_id", ondelete="RESTRICT",
                            deferrable=True, initially="DEFERRED"), nullable=True),
    sa.Column("stakeholder_role", sa.SmallInteger, nullable=False),
    # The current first member of the team role "owner" and since when (0 without one): kept on the row, so that
    # a customer's owner costs no team row (registry/teams.py).
    sa.Column("owner", sa.String(256), nullable=False, server_default=""),
    sa.Column("owner_since_us", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("signal_values", sa.LargeBinary, nullable=True),
    sa.Column("signal_times", sa.LargeBinary, nullable=True),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.Column("update_time_us", sa.BigInteger, nullable=False),
    # cvh.common.v1.LifecycleStage, and when the customer entered it (its history: lifecycle_history).
    sa.Column("lifecycle_stage", sa.SmallInteger, nullable=False, server_default="3"),
    sa.Column("stage_time_us", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_registry_customers_parent_id", "parent_id"),
    sa.Index("ix_registry_customers_owner", "owner"),
    sa.Index("ix_registry_customers_lifecycle_stage", "lifecycle_stage"),
)

labels = sa.Table(
    "registry_customer_labels", metadata,
    sa.Column("customer_id", sa.String(128),
              sa.ForeignKey("registry_customers.customer_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("key", sa.String(63), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
    sa.Index("ix_registry_customer_labels_key_value", "key", "value"),
)

signal_names = sa.Table(
    "registry_signal_names", metadata,
    sa.Column("signal_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(63), nullable=False, unique=True),
)

signal_history = sa.Table(
    "registry_signal_history", metadata,
    sa.Column("pk", BigId, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(128),
              sa.ForeignKey("registry_customers.customer_id", ondelete="CASCADE"), nullable=False),
    sa.Column("signal_id", sa.Integer, nullable=False),
    sa.Column("value", sa.Float(53), nullable=False),
    sa.Column("observe_time_us", sa.BigInteger, nullable=False),
    sa.Index("ix_registry_signal_history_customer", "customer_id", "observe_time_us"),
)

# Every lifecycle stage a customer entered, the current one included.
lifecycle_history = sa.Table(
    "registry_lifecycle_history", metadata,
    sa.Column("pk", BigId, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(128),
              sa.ForeignKey("registry_customers.customer_id", ondelete="CASCADE"), nullable=False),
    sa.Column("stage", sa.SmallInteger, nullable=False),
    sa.Column("enter_time_us", sa.BigInteger, nullable=False),
    sa.Index("ix_registry_lifecycle_history_customer", "customer_id", "enter_time_us"),
)

# The change feed: a change per customer a write changed, numbered by a sequence that only grows and is
# assigned in commit order (registry/feed.py); kept for the feed's retention. One row per write: its
# changes first_seq..seq, the customers' ids newline-separated in that order (ids hold no newline), so an
# import message of 10,000 customers adds one row. No foreign key: a deleted customer's changes stay.
changes = sa.Table(
    "registry_changes", metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=False),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("change_time_us", sa.BigInteger, nullable=False),
    sa.Column("customer_ids", sa.Text, nullable=False),
)

# The feed's counters by name: "last_sequence" (the latest sequence assigned) and "compacted_through" (changes
# up to it are no longer kept). A missing row reads as 0.
feed_state = sa.Table(
    "registry_feed", metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

# People who serve customers: an id (an e-mail address, typically), a display name and the most customers
# they should serve (NULL: not set). A person is added when first named in a team.
people = sa.Table(
    "registry_people", metadata,
    sa.Column("person_id", sa.String(256), primary_key=True),
    sa.Column("display_name", sa.String(256), nullable=False, server_default=""),
    sa.Column("capacity", sa.Integer, nullable=True),
    sa.Column("update_time_us", sa.BigInteger, nullable=False),
)

# Each customer's own team, effective-dated: a member is current while end_time_us is NULL; one who leaves
# keeps their row with the time they left. Members of a role keep the order given by pk. The first current owner
# is not here but on the customer's row (owner, owner_since_us); owners before them and further owners are.
team_members = sa.Table(
    "registry_team_members", metadata,
    sa.Column("pk", BigId, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(128),
              sa.ForeignKey("registry_customers.customer_id", ondelete="CASCADE"), nullable=False),
    sa.Column("role", sa.String(63), nullable=False),
    sa.Column("person_id", sa.String(256), nullable=False),
    sa.Column("start_time_us", sa.BigInteger, nullable=False),
    sa.Column("end_time_us", sa.BigInteger, nullable=True),
    sa.Index("ix_registry_team_members_customer_role", "customer_id", "role", "end_time_us"),
    sa.Index("ix_registry_team_members_person", "person_id", "end_time_us"),
)

# The organisation's team: people who oversee every customer (the chief customer officer), effective-dated.
org_team = sa.Table(
    "registry_org_team", metadata,
    sa.Column("pk", BigId, primary_key=True, autoincrement=True),
    sa.Column("role", sa.String(63), nullable=False),
    sa.Column("person_id", sa.String(256), nullable=False),
    sa.Column("start_time_us", sa.BigInteger, nullable=False),
    sa.Column("end_time_us", sa.BigInteger, nullable=True),
)
