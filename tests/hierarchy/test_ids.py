"""The id index (columnar ids, a Numba hash table) against a Python dictionary."""

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from services.hierarchy.ids import IdIndex

ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(st.lists(ids, unique=True, max_size=300), st.lists(ids, max_size=50), st.data())
def test_lookups_appends_and_deletions_match_a_dict(held, others, data):
    index, reference = IdIndex.of(held), dict(zip(held, range(len(held))))
    for step in range(3):
        appended = [c for c in dict.fromkeys(data.draw(st.lists(ids, max_size=20), label=f"appended{step}"))
                    if c not in reference]
        index.append(appended)
        reference.update(zip(appended, range(len(index) - len(appended), len(index))))
        known = list(reference)
        gone = data.draw(st.lists(st.sampled_from(known), unique=True, max_size=10), label=f"gone{step}") \
            if known else []
        index.delete(gone)
        for customer_id in gone:
            del reference[customer_id]
        queries = [*held, *others, *appended, *gone]
        expected = [reference.get(c, -1) for c in queries]
        assert index.rows(queries).tolist() == expected
        assert index.rows(pa.array(queries, pa.string())).tolist() == expected
        assert [index.row(c) if index.row(c) is not None else -1 for c in queries] == expected
        assert [index.customer_id(r) for r in reference.values()] == list(reference)
        assert dict(index.items()) == reference
        assert np.flatnonzero(index.alive()).tolist() == sorted(reference.values())
