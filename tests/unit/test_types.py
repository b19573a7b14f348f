"""Source type names -> warehouse types, widening rules, value coercion and printing."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from state_models.types import (
    BOOL,
    BYTES,
    DATE,
    DATETIME,
    FLOAT64,
    INT64,
    JSON,
    STRING,
    TIME,
    TIMESTAMP,
    UnknownTypeError,
    ValueCoercionError,
    coerce_value,
    decimal,
    decode_names,
    encode_names,
    is_widening,
    map_debezium_type,
    map_source_type,
    name_token,
    render_value,
    warehouse_type_from_sql,
)


@pytest.mark.parametrize(
    "kind, name, expected, duckdb, bigquery",
    [
        ("postgres", "bigint", INT64, "BIGINT", "INT64"),
        ("postgres", "int4", INT64, "BIGINT", "INT64"),
        ("postgres", "numeric(12,2)", decimal(12, 2), "DECIMAL(12, 2)", "NUMERIC(12, 2)"),
        ("postgres", "numeric", decimal(38, 9), "DECIMAL(38, 9)", "NUMERIC(38, 9)"),
        ("postgres", "numeric(50,2)", STRING, "TEXT", "STRING"),
        ("postgres", "numeric(38,12)", decimal(38, 12), "DECIMAL(38, 12)", "BIGNUMERIC(38, 12)"),
        ("postgres", "timestamptz", TIMESTAMP, "TIMESTAMPTZ", "TIMESTAMP"),
        ("postgres", "timestamp with time zone", TIMESTAMP, "TIMESTAMPTZ", "TIMESTAMP"),
        ("postgres", "timestamp(3)", DATETIME, "TIMESTAMP", "DATETIME"),
        ("postgres", "jsonb", JSON, "JSON", "JSON"),
        ("postgres", "text[]", JSON, "JSON", "JSON"),
        ("postgres", "varchar(32)", STRING, "TEXT", "STRING"),
        ("postgres", "character varying", STRING, "TEXT", "STRING"),
        ("postgres", "uuid", STRING, "TEXT", "STRING"),
        ("postgres", "bytea", BYTES, "BLOB", "BYTES"),
        ("postgres", "money", decimal(19, 2), "DECIMAL(19, 2)", "NUMERIC(19, 2)"),
        ("postgres", "double precision", FLOAT64, "DOUBLE", "FLOAT64"),
        ("postgres", "boolean", BOOL, "BOOLEAN", "BOOL"),
        ("postgres", "bit(1)", BOOL, "BOOLEAN", "BOOL"),
        ("postgres", "bit(8)", BYTES, "BLOB", "BYTES"),
        ("postgres", "date", DATE, "DATE", "DATE"),
        ("postgres", "time", TIME, "TIME", "TIME"),
        ("postgres", "my_enum", STRING, "TEXT", "STRING"),
        ("mysql", "datetime(6)", DATETIME, "TIMESTAMP", "DATETIME"),
        ("mysql", "timestamp", TIMESTAMP, "TIMESTAMPTZ", "TIMESTAMP"),
        ("mysql", "decimal(12,2)", decimal(12, 2), "DECIMAL(12, 2)", "NUMERIC(12, 2)"),
        ("mysql", "bigint unsigned", decimal(20, 0), "DECIMAL(20, 0)", "NUMERIC(20, 0)"),
        ("mysql", "tinyint(1)", INT64, "BIGINT", "INT64"),
        ("mysql", "enum('a','b')", STRING, "TEXT", "STRING"),
        ("mysql", "json", JSON, "JSON", "JSON"),
        ("mysql", "longblob", BYTES, "BLOB", "BYTES"),
        ("mysql", "year", INT64, "BIGINT", "INT64"),
    ],
)
def test_source_type_names_map_to_both_warehouses(kind, name, expected, duckdb, bigquery):
    wtype = map_source_type(name, kind)
    assert wtype == expected
    assert (wtype.sql("duckdb"), wtype.sql("bigquery")) == (duckdb, bigquery)
    assert warehouse_type_from_sql(wtype.sql("duckdb"), "duckdb") == wtype
    assert warehouse_type_from_sql(wtype.sql("bigquery"), "bigquery") == wtype


@pytest.mark.parametrize(
    "name, expected",
    [
        ("int64", INT64),
        ("int16", INT64),
        ("string", STRING),
        ("boolean", BOOL),
        ("float64", FLOAT64),
        ("bytes", BYTES),
        ("org.apache.kafka.connect.data.Decimal(scale=2)", decimal(38, 2)),
        ("org.apache.kafka.connect.data.Decimal(scale=2,precision=12)", decimal(12, 2)),
        ("io.debezium.data.VariableScaleDecimal", decimal(38, 9)),
        ("io.debezium.time.ZonedTimestamp", TIMESTAMP),
        ("io.debezium.time.MicroTimestamp", DATETIME),
        ("io.debezium.time.Date", DATE),
        ("io.debezium.time.MicroTime", TIME),
        ("io.debezium.data.Json", JSON),
        ("io.debezium.data.Uuid", STRING),
        ("something.unknown", STRING),
    ],
)
def test_debezium_schema_types(name, expected):
    assert map_debezium_type(name) == expected


def test_unparseable_type_names_are_reported():
    with pytest.raises(UnknownTypeError, match="cannot parse source type"):
        map_source_type("numeric((", "postgres")


@pytest.mark.parametrize(
    "old, new, safe",
    [
        (decimal(10, 2), decimal(12, 2), True),
        (decimal(10, 2), decimal(12, 4), True),
        (decimal(10, 2), decimal(10, 3), False),  # loses an integer digit
        (decimal(12, 2), decimal(10, 2), False),
        (INT64, decimal(38, 9), True),
        (INT64, decimal(12, 2), False),
        (INT64, STRING, False),
        (STRING, INT64, False),
        (DATETIME, TIMESTAMP, False),  # a wall-clock time is not an instant
        (STRING, STRING, True),
    ],
)
def test_safe_widening(old, new, safe):
    assert is_widening(old, new) is safe


@pytest.mark.parametrize(
    "value, wtype, stored",
    [
        ("12.30", decimal(12, 2), Decimal("12.30")),
        (Decimal("1.5"), decimal(12, 2), Decimal("1.50")),
        (7, decimal(12, 2), Decimal("7.00")),
        ("42", INT64, 42),
        (Decimal("42"), INT64, 42),
        ("2026-12-01T00:00:00.000000Z", TIMESTAMP, dt.datetime(2026, 12, 1, tzinfo=dt.UTC)),
        ("2026-12-01T02:00:00+02:00", TIMESTAMP, dt.datetime(2026, 12, 1, tzinfo=dt.UTC)),
        ("2026-11-15T12:00:00.000000", DATETIME, dt.datetime(2026, 11, 15, 12)),
        ("2026-11-01", DATE, dt.date(2026, 11, 1)),
        (19000, DATE, dt.date(2022, 1, 8)),
        ("12:30:00.000001", TIME, dt.time(12, 30, 0, 1)),
        ('{"b": 1, "a": [1, 2]}', JSON, '{"b":1,"a":[1,2]}'),
        ({"a": 1}, JSON, '{"a":1}'),
        ("AQI=", BYTES, b"\x01\x02"),
        ({"a": 1}, STRING, '{"a":1}'),
        (1, BOOL, True),
    ],
)
def test_coercion(value, wtype, stored):
    assert coerce_value(value, wtype) == stored


@pytest.mark.parametrize(
    "value, wtype, message",
    [
        ("1.001", decimal(12, 2), "more than 2 decimal places"),
        ("123456789012", decimal(12, 2), "more than 10 integer digits"),
        ("NaN", decimal(12, 2), "not a finite number"),
        ("abc", INT64, "cannot store 'abc' as int64"),
        (1.5, INT64, "has a fraction"),
        (2**70, INT64, "does not fit int64"),
        ("not json", JSON, "cannot store"),
        ("%%%", BYTES, "cannot store"),
        ("yes", BOOL, "cannot store 'yes' as bool"),
    ],
)
def test_values_that_do_not_fit_say_why(value, wtype, message):
    with pytest.raises(ValueCoercionError, match=message):
        coerce_value(value, wtype)


def test_printing_is_the_same_whatever_python_type_the_warehouse_returns():
    instant = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    assert render_value(instant, TIMESTAMP) == "2026-01-02T03:04:05.000006Z"
    assert render_value(instant.replace(tzinfo=None), TIMESTAMP) == "2026-01-02T03:04:05.000006Z"
    assert render_value(dt.datetime(2026, 1, 2), DATETIME) == "2026-01-02T00:00:00.000000"
    assert render_value(Decimal("1.50"), decimal(12, 2)) == "1.50"
    assert render_value('{"a":1}', JSON) == {"a": 1} == render_value({"a": 1}, JSON)
    assert render_value(b"\x01", BYTES) == "AQ=="
    assert render_value(float("nan"), FLOAT64) == "nan"


@pytest.mark.parametrize("names", [[], ["note"], ["b", "a"], ["a,b", "a", "b%2C", "%"]])
def test_name_lists_round_trip_and_membership_is_exact(names):
    text = encode_names(names)
    assert decode_names(text) == sorted(set(names))
    for name in ["a", "b", "a,b", "note", "%", "b%2C", "x"]:
        assert (f",{name_token(name)}," in (text or "")) is (name in names)
