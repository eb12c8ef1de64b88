"""A customer's current owner on its own row: owner_since_us next to owner, instead of a team row per owner.

The current owner rows of registry_team_members move onto the customers' rows, so code of 0012 reading this
schema would miss the owners from the teams it shows: replicas of that release are to be replaced, not mixed in.

Revision ID: 0014_owner_since
Revises: 0013_adoption_store
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0014_owner_since"
down_revision = "0013_adoption_store"
branch_labels = None
depends_on = None


def owner_row(customer: str) -> str:
    """SQL for the pk of the current owner row that the owner field of ``customer`` (a table or its alias) names."""
    return (f"SELECT MIN(t.pk) FROM registry_team_members t WHERE t.customer_id = {customer}.customer_id "
            f"AND t.role = 'owner' AND t.end_time_us IS NULL AND t.person_id = {customer}.owner")


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy of the table, whose self-referencing key SQLite would rebuild).
    op.add_column("registry_customers", sa.Column("owner_since_us", sa.BigInteger, nullable=False, server_default="0"))
    # The row's start moves onto the customer (an owner without a row, which 0012 never left, counts from the
    # customer's last update), then the row goes; owners who left, and further current owners, stay rows.
    op.execute("UPDATE registry_customers SET owner_since_us = COALESCE((SELECT t.start_time_us FROM "
               f"registry_team_members t WHERE t.pk = ({owner_row('registry_customers')})), update_time_us) "
               "WHERE owner <> ''")
    op.execute(f"DELETE FROM registry_team_members WHERE pk IN (SELECT ({owner_row('c')}) "
               "FROM registry_customers c WHERE c.owner <> '')")


def downgrade() -> None:
    # Each current owner becomes a team row again; one with further owners then lists after them, though it
    # joined first (0012 orders a role's members by row).
    op.execute("INSERT INTO registry_team_members (customer_id, role, person_id, start_time_us) "
               "SELECT customer_id, 'owner', owner, owner_since_us FROM registry_customers WHERE owner <> ''")
    # A plain DROP COLUMN (SQLite 3.35 or later): a batch copy would drop the table, and with it (ON DELETE
    # CASCADE) every team row, label and history row of its customers.
    op.drop_column("registry_customers", "owner_since_us")
