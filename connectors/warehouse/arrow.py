"""Staged rows -> a typed Arrow table (what DuckDB scans without copying)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from state_models.scd2 import Column
from state_models.types import Kind, WarehouseType

_ARROW: dict[Kind, pa.DataType] = {
    Kind.BOOL: pa.bool_(),
    Kind.INT64: pa.int64(),
    Kind.FLOAT64: pa.float64(),
    Kind.STRING: pa.string(),
    Kind.BYTES: pa.binary(),
    Kind.DATE: pa.date32(),
    Kind.TIME: pa.time64("us"),
    Kind.DATETIME: pa.timestamp("us"),
    Kind.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    Kind.JSON: pa.string(),
    Kind.STRING_ARRAY: pa.list_(pa.string()),
}


def arrow_type(wtype: WarehouseType) -> pa.DataType:
    if wtype.kind is Kind.DECIMAL:
        return pa.decimal128(wtype.precision or 38, wtype.scale or 0)
    return _ARROW[wtype.kind]


def arrow_table(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows (dicts of coerced values) -> an Arrow table with exactly these columns and types."""
    arrays = [pa.array([r.get(c.name) for r in rows], type=arrow_type(c.type)) for c in columns]
    return pa.Table.from_arrays(arrays, names=[c.name for c in columns])
