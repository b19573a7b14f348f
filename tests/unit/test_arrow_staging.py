"""Bulk conversion by Arrow must store exactly what per-value coercion stores, and refuse the same."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.warehouse.arrow import arrow_column
from state_models.types import (
    BOOL,
    DATE,
    DATETIME,
    FLOAT64,
    INT64,
    JSON,
    NAME_LIST,
    STRING,
    TIME,
    TIMESTAMP,
    ValueCoercionError,
    coerce_value,
    decimal,
)

CASES = [
    (INT64, [1, None, -(2**63), 2**63 - 1, 1.0, "7", Decimal("3")]),
    (INT64, [1, "x", 1.5, True, 2**64]),
    # every value one Arrow takes, but differently: truncated, not refused
    (INT64, [2.7, 1]),
    (INT64, [1.5]),
    (INT64, [Decimal("2.7"), 3]),
    (FLOAT64, [True, 1.5]),
    (STRING, [b"x", "y"]),
    (TIMESTAMP, [1_700_000_000_000_000]),
    (FLOAT64, [1.5, 2, None, "NaN", Decimal("0.1")]),
    (BOOL, [True, False, None, 1, "true"]),
    (STRING, ["a", None, "", {"a": 1}, 5, Decimal("1.50")]),
    (decimal(12, 2), [Decimal("1.5"), Decimal("-9999999999.99"), None, "2.25", 7]),
    (decimal(12, 2), [Decimal("1.001"), Decimal("12345678901.5"), "x", Decimal("NaN")]),
    (TIMESTAMP, ["2026-12-01T00:00:00.000000Z", "2026-12-01T02:00:00+02:00", None]),
    (TIMESTAMP, ["2026-12-01T00:00:00", 1_700_000_000_000_000, "nope"]),
    (DATETIME, ["2026-11-15T12:00:00.000000", None, "2026-11-15T12:00:00Z"]),
    (DATE, ["2026-11-01", None, 19000]),
    (TIME, ["12:30:00.000001", None]),
    (JSON, ['{"a": 1}', {"b": [1, 2]}, None, "not json"]),
    (NAME_LIST, [",a,", None]),
]


@pytest.mark.parametrize("wtype, values", CASES, ids=[f"{w}-{i}" for i, (w, _) in enumerate(CASES)])
def test_bulk_conversion_agrees_with_coerce_value(wtype, values):
    array, problems = arrow_column(values, wtype)
    for i, value in enumerate(values):
        try:
            expected = coerce_value(value, wtype)
        except ValueCoercionError:
            assert i in problems and array[i].as_py() is None
            continue
        assert i not in problems
        got = array[i].as_py()
        if isinstance(expected, float) and expected != expected:
            assert got != got  # NaN
        elif isinstance(got, dt.datetime) and isinstance(expected, dt.datetime):
            assert got == expected and (got.tzinfo is None) == (expected.tzinfo is None)
        else:
            assert got == expected, (value, got, expected)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True, places=3),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.sampled_from(["1", "2.5", "true", "NaN", "2026-12-01T00:00:00Z", "2026-12-01"]),
)


@settings(max_examples=300, deadline=None)
@given(
    wtype=st.sampled_from([INT64, FLOAT64, BOOL, STRING, decimal(12, 2), TIMESTAMP, DATE]),
    values=st.lists(SCALARS, min_size=1, max_size=6),
)
def test_bulk_conversion_agrees_with_coerce_value_on_any_values(wtype, values):
    test_bulk_conversion_agrees_with_coerce_value(wtype, values)
