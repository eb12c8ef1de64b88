"""The synthetic base looks like a real one: skewed revenue, correlated signals, trees, every role."""

from __future__ import annotations

import numpy as np

from clients.synthetic import SIGNALS, generate_base
from cvh.common.v1 import common_pb2
from scoring_engine import default_model


def test_the_base_is_realistic_and_reproducible():
    base = generate_base(20_000, seed=3)
    # Every input signal of the default model but the one the adoption service writes (from telemetry).
    assert set(SIGNALS) == set(default_model().input_signal_names) - {"use_case_adoption"}
    assert len(base) == 20_000 and len(set(base.customer_ids)) == 20_000
    revenue = base.values[:, SIGNALS.index("annual_revenue")]
    revenue = np.sort(revenue[~np.isnan(revenue)])[::-1]
    assert revenue[: len(revenue) // 5].sum() / revenue.sum() > 0.6  # the top fifth brings most revenue
    missing = np.isnan(base.values).mean()
    assert 0.03 < missing < 0.07

    def column(name):
        return base.values[:, SIGNALS.index(name)]
    both = ~np.isnan(column("feedback_items_90d")) & ~np.isnan(column("beta_programs"))
    assert np.corrcoef(column("feedback_items_90d")[both], column("beta_programs")[both])[0, 1] > 0.3
    both = ~np.isnan(column("annual_revenue")) & ~np.isnan(column("predicted_ltv"))
    assert np.corrcoef(np.log(column("annual_revenue")[both]), np.log(column("predicted_ltv")[both]))[0, 1] > 0.5

    assert set(base.roles.tolist()) == set(common_pb2.StakeholderRole.values()) - {0}
    position = {customer: i for i, customer in enumerate(base.customer_ids)}
    children = [i for i, parent in enumerate(base.parent_ids) if parent]
    assert 0.1 < len(children) / len(base) < 0.25
    assert all(position[base.parent_ids[i]] < i for i in children)  # parents come first

    def depth(i):
        return 0 if not base.parent_ids[i] else 1 + depth(position[base.parent_ids[i]])
    assert max(depth(i) for i in children) == 2  # three levels

    again = generate_base(20_000, seed=3)
    np.testing.assert_array_equal(again.values, base.values)
    assert again.parent_ids == base.parent_ids
