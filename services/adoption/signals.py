"""Adoption as registry signals, so that value models can read the value customers get.

After each evaluation every evaluated customer gets ``use_case_adoption`` (the share of the version's use
cases it has achieved) and, per strategy, ``adoption_<key>`` (the share of the use cases beneath that
strategy it has achieved; the key's '-' become '_'). Only values that changed since this process last wrote
them are sent, so an evaluation every 30 s adds no history while nothing changes.
"""

from __future__ import annotations

import numpy as np

from cvh.adoption.v1 import adoption_service_pb2 as pb

USE_CASE_ADOPTION = "use_case_adoption"
# A signal name holds at most 63 characters: strategy keys longer than this are cut.
MAX_KEY = 63 - len("adoption_")


def signal_names(value_map: pb.ValueMapVersion) -> list[str]:
    strategies = [n.key for n in value_map.nodes if n.level == pb.NODE_LEVEL_STRATEGY]
    return [USE_CASE_ADOPTION, *(f"adoption_{key[:MAX_KEY].replace('-', '_')}" for key in strategies)]


def signal_values(value_map: pb.ValueMapVersion, achieved: np.ndarray) -> np.ndarray:
    """Per customer (rows of ``achieved``, customers x nodes), the values of :func:`signal_names`."""
    nodes = value_map.nodes
    index = {n.key: i for i, n in enumerate(nodes)}
    strategy_of = np.full(len(nodes), -1)
    for i, node in enumerate(nodes):  # parents come first: a node's strategy is known when it is reached
        strategy_of[i] = i if node.level == pb.NODE_LEVEL_STRATEGY else strategy_of[index[node.parent_key]]
    use_cases = np.array([i for i, n in enumerate(nodes) if n.level == pb.NODE_LEVEL_USE_CASE], np.int64)
    strategies = [i for i, n in enumerate(nodes) if n.level == pb.NODE_LEVEL_STRATEGY]
    done = achieved[:, use_cases].astype(np.float64)
    columns = [done.mean(axis=1) if len(use_cases) else np.zeros(len(achieved))]
    for s in strategies:
        mine = strategy_of[use_cases] == s
        columns.append(done[:, mine].mean(axis=1) if mine.any() else np.zeros(len(achieved)))
    return np.column_stack(columns)
