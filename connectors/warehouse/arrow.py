"""A staged batch -> a typed Arrow table (DuckDB scans it in place; BigQuery loads it as Parquet).

Values are converted a column at a time by Arrow. Whenever Arrow refuses a column (a value it does
not take as it is, or one that does not fit), the column is converted value by value with
``state_models.types.coerce_value``, which decides exactly what fits and says why not; events with
a value that does not fit are rejected one by one, the rest of the batch goes on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from state_models.dialects import Capabilities
from state_models.errors import SchemaChangeError
from state_models.plans import staging_columns
from state_models.scd2 import (
    INGESTED_AT,
    KEY_BUCKET,
    VALID_FROM,
    Rejected,
    StagedBatch,
    StateTable,
    key_bucket,
)
from state_models.types import Kind, ValueCoercionError, WarehouseType, coerce_value

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
    Kind.NAME_LIST: pa.string(),
}
#: Kinds Arrow converts directly from the decoded Python values, and the value types it converts
#: exactly as ``coerce_value`` does. Arrow also takes others without a word, differently: a float
#: or Decimal into int64 is truncated (2.7 -> 2), a bool into float64 becomes 1.0, bytes into a
#: string are decoded. A column holding any other type takes the per-value path.
_DIRECT: dict[Kind, frozenset[type]] = {
    Kind.BOOL: frozenset({bool}),
    Kind.INT64: frozenset({int}),
    Kind.FLOAT64: frozenset({float, int}),
    Kind.STRING: frozenset({str}),
    Kind.DECIMAL: frozenset({Decimal, int}),
    Kind.NAME_LIST: frozenset({str}),
}
#: Kinds decoded as ISO-8601 text, which Arrow parses in bulk.
_FROM_TEXT = frozenset({Kind.DATE, Kind.DATETIME, Kind.TIMESTAMP})
_NONE = type(None)
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError)


def arrow_type(wtype: WarehouseType) -> pa.DataType:
    if wtype.kind is Kind.DECIMAL:
        return pa.decimal128(wtype.precision or 38, wtype.scale or 0)
    return _ARROW[wtype.kind]


def arrow_column(values: Sequence[Any], wtype: WarehouseType) -> tuple[pa.Array, dict[int, str]]:
    """Values -> an Arrow array of the column type, and {row: why} for values that do not fit."""
    target = arrow_type(wtype)
    present = set(map(type, values)) - {_NONE}
    try:
        if wtype.kind in _DIRECT and present <= _DIRECT[wtype.kind]:
            return pa.array(values, type=target), {}
        if wtype.kind in _FROM_TEXT and present <= {str}:
            array = pa.array(values, type=pa.string()).cast(target)
            if _within_years_1_to_9999(array):  # Arrow takes year 0, which nothing reads back
                return array, {}
    except _ARROW_ERRORS:
        pass  # somewhere a value Arrow does not take as it is: decide value by value
    coerced: list[Any] = []
    problems: dict[int, str] = {}
    for i, value in enumerate(values):
        try:
            coerced.append(coerce_value(value, wtype))
        except ValueCoercionError as exc:
            problems[i] = str(exc)
            coerced.append(None)
    return pa.array(coerced, type=target), problems


_FIRST_DAY, _LAST_DAY = dt.date(1, 1, 1), dt.date(9999, 12, 31)


def _within_years_1_to_9999(array: pa.Array) -> bool:
    """Whether every date or time of ``array`` lies in years 1 to 9999: what BigQuery, Python and
    so ``cdc history`` can hold (DuckDB and Arrow take more)."""
    if array.null_count == len(array):
        return True
    days = array.cast(pa.date32()) if array.type != pa.date32() else array
    low, high = pc.min_max(days).values()
    return bool(low.as_py() >= _FIRST_DAY and high.as_py() <= _LAST_DAY)


def staging_table(
    table: StateTable, batch: StagedBatch, caps: Capabilities
) -> tuple[pa.Table, list[Rejected]]:
    """The typed staging table of a batch, without the rows of events whose values do not fit."""
    arrays: list[pa.Array] = []
    problems: dict[int, str] = {}
    columns = [c for c in staging_columns(table, caps) if c.name != KEY_BUCKET]
    for col in columns:
        values = batch.columns[col.name]
        if col.name in (VALID_FROM, INGESTED_AT):  # microseconds since the epoch
            arrays.append(pa.array(values, type=pa.int64()).cast(arrow_type(col.type)))
            continue
        array, bad = arrow_column(values, col.type)
        arrays.append(array)
        for row, why in bad.items():
            problems.setdefault(row, f"column {col.name!r}: {why}")
    staged = pa.Table.from_arrays(arrays, names=[c.name for c in columns])
    rejected = [
        Rejected(
            batch.events[row],
            SchemaChangeError(f"{batch.events[row].table}: {why}", raw=batch.events[row].raw),
        )
        for row, why in sorted(problems.items())
    ]
    if problems:
        keep = [row not in problems for row in range(staged.num_rows)]
        staged = staged.filter(pa.array(keep))
    if caps.key_buckets:
        staged = staged.append_column(KEY_BUCKET, _buckets(table, staged, caps.key_buckets))
    return staged, rejected


def _buckets(table: StateTable, staged: pa.Table, buckets: int) -> pa.Array:
    keys = zip(*(staged.column(k).to_pylist() for k in table.key), strict=True)
    ops = staged.column("_op").to_pylist()
    return pa.array(
        [None if op == "t" else key_bucket(k, buckets) for k, op in zip(keys, ops, strict=True)],
        type=pa.int64(),
    )
