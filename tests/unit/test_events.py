"""The change event's deterministic id."""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from state_models.events import _event_id_payload, make_event_id
from state_models.seq import make_seq

_values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(),
    st.booleans(),
    st.none(),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.floats(allow_nan=False),
)


def _reference(table: str, key: dict[str, object], seq: str) -> str:
    return hashlib.blake2b(_event_id_payload(table, key, seq).encode(), digest_size=16).hexdigest()


@given(
    table=st.text(min_size=1),
    key=st.dictionaries(st.text(), _values, max_size=3),
    sections=st.lists(st.integers(min_value=0, max_value=2**64 - 1), min_size=1, max_size=3),
)
def test_event_id_fast_path_equals_the_json_form(table, key, sections):
    seq = make_seq(*sections)
    assert make_event_id(table, key, seq) == _reference(table, key, seq)


def test_event_id_is_pinned():
    # ids are stored (changelog, warehouse): their form must never change
    seq = make_seq(1, 2)
    assert make_event_id("s.public.t", {"id": 1}, seq) == _reference("s.public.t", {"id": 1}, seq)
    assert make_event_id("s.public.t", {"b": 'x"é', "a": 7}, seq) == (
        _reference("s.public.t", {"a": 7, "b": 'x"é'}, seq)
    )
    other = {"at": dt.date(2024, 1, 2), "amount": Decimal("1.50")}
    assert make_event_id("s.public.t", other, seq) == _reference("s.public.t", other, seq)
    # values computed by the json.dumps-only implementation
    assert make_event_id("s.public.t", {"id": 1}, seq) == "78530cf16347fff7ebc755a97a4ccd97"
    assert make_event_id("s.public.t", {"b": 'x"é', "a": 7}, seq) == (
        "7392e182f5a081e04c4f4a9274d86b87"
    )
