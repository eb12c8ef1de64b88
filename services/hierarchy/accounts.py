"""The account base a hierarchy process holds between runs, kept current by the registry's change feed.

Loaded from an export (which says the feed sequence it holds), then each WatchCustomerChanges message is
applied to it: a row per customer as it stands (upsert) or its deletion. Applied and copied on worker threads
(a million rows take about half a second to copy), so a lock keeps the two apart; ``base()`` hands a snapshot
build its own copy.
"""

from __future__ import annotations

import threading

import numpy as np

from cvh.registry.v1 import registry_service_pb2
from services.hierarchy import snapshot as snapshots
from wire.columns import from_matrix


class AccountTable:
    def __init__(self, base: snapshots.AccountBase, sequence: int) -> None:
        self.customer_ids = list(base.customer_ids)
        self.index = dict(zip(self.customer_ids, range(len(self.customer_ids))))
        self.parent_ids = list(base.parent_ids)
        self.roles = bytearray(np.asarray(base.roles, np.uint8).tobytes())
        self.owners = list(base.owners)
        self.rollups = [row for row in np.asarray(base.rollup_values, np.float64).reshape(-1, len(
            snapshots.ROLLUP_SIGNALS))]
        # The last change of the registry's feed applied.
        self.sequence = sequence
        self.lock = threading.Lock()

    def apply(self, message: registry_service_pb2.WatchCustomerChangesResponse) -> bool:
        """One feed message: each row upserts its customer as it stands, or deletes it. Whether anything a
        snapshot shows changed (a signal it does not read, e.g. NPS, changes nothing here)."""
        with self.lock:
            return self._apply(message)

    def _apply(self, message: registry_service_pb2.WatchCustomerChangesResponse) -> bool:
        changed = False
        names = list(message.chunk.column_names)
        values = from_matrix(message.chunk.values)
        columns = [names.index(name) if name in names else -1 for name in snapshots.ROLLUP_SIGNALS]
        for i, customer_id in enumerate(message.chunk.customer_ids):
            if message.deleted[i]:
                changed |= self._delete(customer_id)
                continue
            rollup = np.array([values[i, j] if j >= 0 else np.nan for j in columns])
            row = self.index.get(customer_id)
            changed |= row is None or (self.parent_ids[row], self.roles[row], self.owners[row]) != (
                message.parent_ids[i], message.stakeholder_roles[i], message.owners[i]) or not np.array_equal(
                self.rollups[row], rollup, equal_nan=True)
            if row is None:
                self.index[customer_id] = len(self.customer_ids)
                self.customer_ids.append(customer_id)
                self.parent_ids.append(message.parent_ids[i])
                self.roles.append(message.stakeholder_roles[i])
                self.owners.append(message.owners[i])
                self.rollups.append(rollup)
            else:
                self.parent_ids[row], self.roles[row] = message.parent_ids[i], message.stakeholder_roles[i]
                self.owners[row], self.rollups[row] = message.owners[i], rollup
        self.sequence = max(self.sequence, message.last_sequence)
        return changed

    def _delete(self, customer_id: str) -> bool:
        """Remove a row by moving the last row into its place; whether there was one."""
        row = self.index.pop(customer_id, None)
        if row is None:
            return False
        last = len(self.customer_ids) - 1
        if row != last:
            moved = self.customer_ids[last]
            self.index[moved] = row
            for column in (self.customer_ids, self.parent_ids, self.roles, self.owners, self.rollups):
                column[row] = column[last]
        for column in (self.customer_ids, self.parent_ids, self.owners, self.rollups):
            column.pop()
        del self.roles[last]
        return True

    def base(self) -> snapshots.AccountBase:
        """A copy for a snapshot to own."""
        with self.lock:
            rollups = np.array(self.rollups, np.float64).reshape(-1, len(snapshots.ROLLUP_SIGNALS))
            return snapshots.AccountBase(list(self.customer_ids), list(self.parent_ids),
                                         np.frombuffer(bytes(self.roles), np.uint8), list(self.owners), rollups)
