"""Hypothesis strategies for request bodies a hostile or careless client may send,
shared by the tests that throw them at the proxy."""

from __future__ import annotations

import json

from hypothesis import strategies as st

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# The stdlib writes NaN and Infinity as bare tokens, as MLflow clients do.
JSON_BODIES = JSON_VALUES.map(lambda value: json.dumps(value).encode())
SPLIT_FRAME_BODIES = st.builds(
    lambda columns, data: json.dumps({"columns": columns, "data": data}).encode(),
    st.lists(st.text(max_size=5), max_size=3),
    st.lists(st.lists(st.floats() | st.integers(), max_size=3), max_size=3),
)
