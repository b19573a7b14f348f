"""Canonical text of column values: rendered SQL per dialect, DuckDB as the execution oracle, and
the pairs that cannot be made equal.

The real-database matrix (PostgreSQL and MariaDB captured into DuckDB and bqemulator) is in
tests/integration/test_canonical_live.py; here nothing runs but an in-memory DuckDB.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import random
import re
import struct
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

from state_models import canonical
from state_models.canonical import NotComparableError, render, row_hash, row_text, session_settings
from state_models.types import (
    BOOL,
    BYTES,
    DATE,
    DATETIME,
    FLOAT64,
    INT64,
    JSON,
    NAME_LIST,
    STRING,
    TIME,
    TIMESTAMP,
    Kind,
    WarehouseType,
    decimal,
)

V = exp.column("v")


def expected_float(x: float) -> str:
    """The canonical float text, from Python's shortest repr (independent of the module)."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0e+00"
    sign, digits, exponent = Decimal(repr(x)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    e = exponent + len(digits) - 1
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'-' if e < 0 else '+'}{abs(e):02d}"


def duck(sql_type: str, values: list[Any], wtype: WarehouseType) -> list[Any]:
    """Render ``values`` (held in a DuckDB column of ``sql_type``) with the DuckDB rule."""
    con = duckdb.connect()
    con.execute(f"CREATE TABLE t (i INTEGER, v {sql_type})")
    con.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(values)))
    sql = exp.select(render(V, wtype, "duckdb")).from_("t").order_by("i").sql("duckdb")
    return [r[0] for r in con.execute(sql).fetchall()]


# --------------------------------------------------------------------------- rendered SQL


@pytest.mark.parametrize(
    "wtype, dialect, source_type, sql",
    [
        (INT64, "postgres", "bigint", "CAST(v AS TEXT)"),
        (INT64, "mysql", "bigint", "CAST(v AS CHAR)"),
        (INT64, "duckdb", None, "CAST(v AS TEXT)"),
        (INT64, "bigquery", None, "CAST(v AS STRING)"),
        (BYTES, "postgres", "bytea", "ENCODE(v, 'hex')"),
        (BYTES, "mysql", "varbinary(10)", "LOWER(HEX(v))"),
        (BYTES, "duckdb", None, "LOWER(HEX(v))"),
        (BYTES, "bigquery", None, "TO_HEX(v)"),
        (DATE, "postgres", "date", "CAST(v AS TEXT)"),
        (DATE, "mysql", "date", "NULLIF(DATE_FORMAT(v, '%Y-%m-%d'), '0000-00-00')"),
        (DATE, "bigquery", None, "CAST(v AS STRING)"),
        (TIME, "postgres", "time(3) without time zone", "TO_CHAR(v, 'HH24:MI:SS.US')"),
        (TIME, "mysql", "time(6)", "TIME_FORMAT(v, '%H:%i:%s.%f')"),
        (TIME, "duckdb", None, "STRFTIME(CAST('2000-01-01' AS DATE) + v, '%H:%M:%S.%f')"),
        (TIME, "bigquery", None, "FORMAT_TIME('%H:%M:%E6S', v)"),
        (DATETIME, "postgres", "timestamp", "TO_CHAR(v, 'YYYY-MM-DD HH24:MI:SS.US')"),
        (
            DATETIME,
            "mysql",
            "datetime(6)",
            "NULLIF(DATE_FORMAT(v, '%Y-%m-%d %T.%f'), '0000-00-00 00:00:00.000000')",
        ),
        (DATETIME, "duckdb", None, "STRFTIME(v, '%Y-%m-%d %H:%M:%S.%f')"),
        (
            DATETIME,
            "bigquery",
            None,
            "CONCAT(CAST(DATE(v) AS STRING), ' ', FORMAT_DATETIME('%H:%M:%E6S', v))",
        ),
        (
            TIMESTAMP,
            "postgres",
            "timestamp with time zone",
            "CAST(CAST(EXTRACT(EPOCH FROM v) * 1000000 AS BIGINT) AS TEXT)",
        ),
        (
            TIMESTAMP,
            "mysql",
            "timestamp(6)",
            "CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', NULLIF(v, 0)) AS CHAR)",
        ),
        (TIMESTAMP, "duckdb", None, "CAST(EPOCH_US(v) AS TEXT)"),
        (TIMESTAMP, "bigquery", None, "CAST(UNIX_MICROS(v) AS STRING)"),
        (STRING, "postgres", "uuid", "CAST(v AS TEXT)"),
        (STRING, "postgres", "mood", "CAST(v AS TEXT)"),  # an enum: its label
        (STRING, "postgres", "char(4)", "CASE WHEN v IS NULL THEN NULL ELSE FORMAT('%s', v) END"),
        (STRING, "postgres", "inet", "CASE WHEN v IS NULL THEN NULL ELSE FORMAT('%s', v) END"),
        (STRING, "mysql", "varchar(20) character set latin1", "CAST(v AS CHAR CHARACTER SET utf8mb4)"),
        (STRING, "duckdb", None, "v"),
        (STRING, "bigquery", None, "v"),
        (BOOL, "postgres", "boolean", "CASE WHEN v IS NULL THEN NULL WHEN v THEN 'true' ELSE 'false' END"),
        (BOOL, "postgres", "bit(1)", "CASE WHEN v IS NULL THEN NULL WHEN v = b'1' THEN 'true' ELSE 'false' END"),
        (BOOL, "mysql", "tinyint(1)", "CASE WHEN v IS NULL THEN NULL WHEN v <> 0 THEN 'true' ELSE 'false' END"),
        (BOOL, "mysql", "bit(1)", "CASE WHEN v IS NULL THEN NULL WHEN v <> 0 THEN 'true' ELSE 'false' END"),
        (INT64, "mysql", "tinyint(1)", "CAST(v AS CHAR)"),  # the capture's tinyint(1) is an int
        (JSON, "postgres", "text[]", "CAST(ARRAY_TO_JSON(v) AS TEXT)"),
        (JSON, "duckdb", None, "CAST(v AS TEXT)"),
        (JSON, "bigquery", None, "TO_JSON_STRING(v)"),
        # MySQL prints exactly the declared scale: with one, the text always has a point
        (decimal(12, 2), "mysql", "decimal(12,2)", "CASE WHEN v = 0 THEN '0' ELSE TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM CAST(v AS CHAR))) END"),
        (decimal(12, 0), "mysql", "decimal(12,0) unsigned", "CASE WHEN v = 0 THEN '0' ELSE CAST(v AS CHAR) END"),
        (decimal(10, 0), "mysql", "decimal", "CASE WHEN v = 0 THEN '0' ELSE CAST(v AS CHAR) END"),
        (decimal(12, 2), "mysql", None, "CASE WHEN v IS NULL THEN NULL WHEN v = 0 THEN '0' WHEN LOCATE('.', CAST(v AS CHAR)) > 0 THEN TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM CAST(v AS CHAR))) ELSE CAST(v AS CHAR) END"),
        (decimal(12, 2), "postgres", "numeric(12,2)", "CAST(TRIM_SCALE(v) AS TEXT)"),
        (decimal(38, 9), "postgres", "numeric", "CAST(TRIM_SCALE(v) AS TEXT)"),
        (decimal(19, 2), "postgres", "money", "CAST(TRIM_SCALE(CAST(v AS DECIMAL)) AS TEXT)"),
        (decimal(20, 0), "postgres", "bigint", "CAST(v AS TEXT)"),
        (decimal(38, 9), "bigquery", None, "CASE WHEN v IS NULL THEN NULL WHEN v = 0 THEN '0' WHEN INSTR(CAST(v AS STRING), '.') > 0 THEN RTRIM(RTRIM(CAST(v AS STRING), '0'), '.') ELSE CAST(v AS STRING) END"),
    ],
)  # fmt: skip
def test_rendered_sql_per_dialect(
    wtype: WarehouseType, dialect: str, source_type: str | None, sql: str
) -> None:
    assert render(V, wtype, dialect, source_type).sql(dialect) == sql


def test_a_composite_value_expression_is_parenthesised() -> None:
    value = exp.Add(this=exp.column("a"), expression=exp.column("b"))
    assert render(value, INT64, "duckdb").sql("duckdb") == "CAST((a + b) AS TEXT)"


def test_jsonb_and_interval_renderings_on_postgres() -> None:
    jsonb = render(V, JSON, "postgres", "jsonb").sql("postgres")
    # strings are matched whole, so spaces and zeros inside them are kept
    assert "'(\"(?:[^\"\\\\]|\\\\.)*\")|[[:space:]]+', '\\1', 'g'" in jsonb
    assert "(\\.[0-9]*[1-9])0+\\M|(\\.0)0+\\M', '\\1\\2\\3', 'g'" in jsonb
    # each regex runs behind its guard; otherwise two REPLACEs make the text
    assert jsonb.startswith(
        f"CASE WHEN CAST(v AS TEXT) ~ '{canonical._PG_JSON_SPACED_STRING}' THEN"
    )
    assert jsonb.endswith("ELSE REPLACE(REPLACE(CAST(v AS TEXT), ', ', ','), ': ', ':') END")
    assert (
        jsonb.count("REGEXP_REPLACE(") == 4
        and jsonb.count("POSITION('.' IN CAST(v AS TEXT)) > 0") == 2
    )
    json = render(V, JSON, "postgres", "json").sql("postgres")
    assert json == jsonb.replace(canonical._PG_JSON_SPACED_STRING, canonical._PG_JSON_IRREGULAR)
    assert render(V, JSON, "postgres").sql("postgres") == json  # no source type: the general one
    interval = render(V, STRING, "postgres", "interval").sql("postgres")
    assert "* 30.4375" in interval and interval.startswith("CAST(CAST(TRUNC(")
    assert render(V, INT64, "postgres", "interval").sql("postgres") == interval


# --------------------------------------------------------------------------- PostgreSQL JSON guards
# The PostgreSQL JSON rendering runs each of its two regexes only behind a guard. Here the guards'
# logic runs in Python (the module's own regexes, translated): the guarded text must be what the
# two regexes make of every text. tests/integration/test_canonical_live.py runs the SQL itself.


def _python_re(are: str) -> re.Pattern[str]:
    r"""One of canonical.py's PostgreSQL regexes in Python's syntax: ``[[:space:]]`` as JSON's
    whitespace (all there is outside strings, and these regexes look at none inside them), ``\M``
    (a word's end, each after a digit) as no word character next (whether a letter such as é is
    one depends on PostgreSQL's locale; it matters only inside strings, which stay as they are)."""
    python = are.replace("[[:space:]]", r"[ \t\n\r]").replace(r"\M", r"(?!\w)")
    return re.compile(python, re.DOTALL)


_SPACES_RE = _python_re(canonical._PG_JSON_SPACES_RE)
_ZEROS_RE = _python_re(canonical._PG_JSON_ZEROS_RE)
_ZEROS_TEST = _python_re(canonical._PG_JSON_ZEROS_TEST)


def _no_spaces(text: str) -> str:
    return _SPACES_RE.sub(lambda m: m[1] or "", text)


def _no_zeros(text: str) -> str:
    return _ZEROS_RE.sub(lambda m: "".join(g or "" for g in m.groups()), text)


def _guarded(text: str, irregular: str) -> tuple[str, bool, bool]:
    """The rendering's CASE: (its text, whether the space regex ran, whether the zero regex ran)."""
    spaces = _python_re(irregular).search(text) is not None
    zeros = "." in text and _ZEROS_TEST.search(text) is not None
    compact = _no_spaces(text) if spaces else text.replace(", ", ",").replace(": ", ":")
    return (_no_zeros(compact) if zeros else compact), spaces, zeros


#: jsonb text as PostgreSQL prints it: (text, space regex runs, zero regex runs, compact text)
JSONB_GUARD_CASES = [
    ('{"g": 123}', False, False, '{"g":123}'),
    ('{"a": "x y", "b": [1, true, null]}', False, False, '{"a":"x y","b":[1,true,null]}'),
    ('{"a": 10, "b": 2.5}', False, False, '{"a":10,"b":2.5}'),  # a point and a 0, no such number
    ('{"a": 1.50}', False, True, '{"a":1.5}'),
    ("[1.0, 2.000, 0.10, 100, 1.05, -3.00]", False, True, "[1.0,2.0,0.1,100,1.05,-3.0]"),
    ('{"a": "1.50", "b": 2}', False, True, '{"a":"1.50","b":2}'),  # zeros in a string stay
    ('{"a": "x, y"}', True, False, '{"a":"x, y"}'),
    ('{"a": "x: y"}', True, False, '{"a":"x: y"}'),
    ('{"a, b": 1, "c": 2}', True, False, '{"a, b":1,"c":2}'),
    ('"one, two: three"', True, False, '"one, two: three"'),
    ('{"a": "é,", "b": ":", "c": ",:"}', False, False, '{"a":"é,","b":":","c":",:"}'),
    ('{"a": "x\\\\", "b": "y z"}', False, False, '{"a":"x\\\\","b":"y z"}'),  # "\\" ends it
    ('{"a": "\\", ", "b": 1}', True, False, '{"a":"\\", ","b":1}'),  # '", ' inside a string
    ('{"a": "\\"", "b": "c: d"}', True, False, '{"a":"\\"","b":"c: d"}'),
    ('{"a": "\\"x, y"}', True, False, '{"a":"\\"x, y"}'),  # only escapes tell it is inside
    ('{"a": {"b": [1.10, "2.50, 3"]}}', True, True, '{"a":{"b":[1.1,"2.50, 3"]}}'),
    ('{"a": "\u00a0,\u00a0"}', False, False, '{"a":"\u00a0,\u00a0"}'),
    ("[]", False, False, "[]"),
    ("{}", False, False, "{}"),
    ("null", False, False, "null"),
    ("0.000", False, True, "0.0"),
]
#: json text as written
JSON_GUARD_CASES = [
    ('{"a":1,"b":"c d"}', False, False, '{"a":1,"b":"c d"}'),  # compact, a space in a string
    ('{"a": 1, "b": "c d"}', False, False, '{"a":1,"b":"c d"}'),  # as json.dumps writes it
    ('{"a" : 1}', True, False, '{"a":1}'),
    (' {"a":1}', True, False, '{"a":1}'),
    ('{"a":1} ', True, False, '{"a":1}'),
    ('{"a":\t1}', True, False, '{"a":1}'),
    ('{"a":\n1}', True, False, '{"a":1}'),
    ('{"a":\r\n1}', True, False, '{"a":1}'),
    ('{"a":  1}', True, False, '{"a":1}'),
    ("[1,2 ]", True, False, "[1,2]"),
    ('["x" ,1]', True, False, '["x",1]'),
    ('["x", "y z"]', False, False, '["x","y z"]'),
    ('{"a": "x, y"}', True, False, '{"a":"x, y"}'),
    ('{"a":1.50 ,"b":2}', True, True, '{"a":1.5,"b":2}'),
    ("[1.50, 2.00]", False, True, "[1.5,2.0]"),
    ("[1.50e2, 2.500E1]", False, False, "[1.50e2,2.500E1]"),  # a 0 before an exponent stays
]


@pytest.mark.parametrize("text, spaces, zeros, compact", JSONB_GUARD_CASES)
def test_jsonb_regexes_run_only_where_they_change_the_text(
    text: str, spaces: bool, zeros: bool, compact: str
) -> None:
    assert _no_zeros(_no_spaces(text)) == compact
    assert _guarded(text, canonical._PG_JSON_SPACED_STRING) == (compact, spaces, zeros)
    assert _guarded(text, canonical._PG_JSON_IRREGULAR) == (compact, spaces, zeros)


@pytest.mark.parametrize("text, spaces, zeros, compact", JSON_GUARD_CASES)
def test_json_regexes_run_only_where_they_change_the_text(
    text: str, spaces: bool, zeros: bool, compact: str
) -> None:
    assert _no_zeros(_no_spaces(text)) == compact
    assert _guarded(text, canonical._PG_JSON_IRREGULAR) == (compact, spaces, zeros)


_JSON_STRINGS = (
    st.lists(
        st.sampled_from(
            [" ", ",", ":", ", ", ": ", ".", "0", "1", "a", "é", "\\", '"', "\t", "\n", "\xa0", "/"]
        ),
        max_size=6,
    )
    .map("".join)
    .map(lambda s: json.dumps(s, ensure_ascii=False))
)
_JSON_LEAVES = st.one_of(
    _JSON_STRINGS,
    st.sampled_from(["0", "-1", "1.50", "2.000", "0.10", "100", "10.5", "1.0", "-7.250", "5.05"]),
    st.sampled_from(["0.000", "1e2", "2.50E+3", "true", "false", "null"]),
)
#: a JSON value: a leaf's text, a list (an array) or a tuple of (key text, value) (an object)
_JSON_TREES = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(st.tuples(_JSON_STRINGS, inner), max_size=4).map(tuple),
    ),
    max_leaves=12,
)


def _json_text(tree: Any, space: Any = lambda: " ") -> str:
    """jsonb's layout (", " and ": "), or json text with ``space()`` around every token."""
    if isinstance(tree, str):
        return tree
    if isinstance(tree, list):
        inner = ["".join((space(), _json_text(v, space), space())) for v in tree]
        return "[" + ",".join(inner) + "]" if inner else "[" + space() + "]"
    inner = [f"{k}{space()}:{space()}{_json_text(v, space)}" for k, v in tree]
    return "{" + ",".join(space() + i + space() for i in inner) + "}" if inner else "{}"


def _jsonb_text(tree: Any) -> str:
    if isinstance(tree, str):
        return tree
    if isinstance(tree, list):
        return "[" + ", ".join(map(_jsonb_text, tree)) + "]"
    return "{" + ", ".join(f"{k}: {_jsonb_text(v)}" for k, v in tree) + "}"


@settings(max_examples=400, deadline=None)
@given(_JSON_TREES)
def test_guarded_jsonb_text_is_what_the_regexes_make(tree: Any) -> None:
    text = _jsonb_text(tree)
    json.loads(text)  # a valid text
    expected = _no_zeros(_no_spaces(text))
    assert _guarded(text, canonical._PG_JSON_SPACED_STRING)[0] == expected
    assert _guarded(text, canonical._PG_JSON_IRREGULAR)[0] == expected


@settings(max_examples=400, deadline=None)
@given(_JSON_TREES, st.randoms(use_true_random=False))
def test_guarded_json_text_is_what_the_regexes_make(tree: Any, rnd: random.Random) -> None:
    def space() -> str:
        return rnd.choice(["", "", " ", " ", "  ", "\n", "\t", "\r\n  "])

    for text in (_json_text(tree, space), space() + _json_text(tree, lambda: "") + space()):
        json.loads(text)
        assert _guarded(text, canonical._PG_JSON_IRREGULAR)[0] == _no_zeros(_no_spaces(text))


def test_row_hash_sql_per_dialect() -> None:
    t = exp.column("t")
    assert row_hash(t, "postgres").sql("postgres") == (
        "CAST(CAST('x' || SUBSTRING(MD5(t) FROM 1 FOR 15) AS BIT(60)) AS BIGINT)"
    )
    assert row_hash(t, "mysql").sql("mysql") == (
        "CAST(CONV(SUBSTRING(MD5(CAST(t AS CHAR CHARACTER SET utf8mb4)), 1, 15), 16, 10) AS SIGNED)"
    )
    assert row_hash(t, "duckdb").sql("duckdb") == "CAST('0x' || SUBSTRING(MD5(t), 1, 15) AS BIGINT)"
    assert row_hash(t, "bigquery").sql("bigquery") == (
        "CAST(CONCAT('0x', SUBSTRING(TO_HEX(MD5(t)), 1, 15)) AS INT64)"
    )


def test_session_settings() -> None:
    pg = session_settings("postgres")
    assert "SET TimeZone = 'UTC'" in pg and "SET extra_float_digits = 1" in pg
    assert any("IntervalStyle" in s for s in pg) and any("DateStyle = 'ISO" in s for s in pg)
    my = session_settings("mysql")
    assert "SET time_zone = '+00:00'" in my and any("utf8mb4" in s for s in my)
    assert any(s.startswith("SET sql_mode") for s in my)
    assert session_settings("duckdb") == session_settings("bigquery") == []
    session_settings("postgres").append("changed")
    assert "changed" not in session_settings("postgres")


@pytest.mark.parametrize("call", [render, row_text, row_hash, session_settings])
def test_an_unknown_dialect_is_refused(call: Any) -> None:
    args = {
        render: (V, INT64, "oracle"),
        row_text: ([V], "oracle"),
        row_hash: (V, "oracle"),
        session_settings: ("oracle",),
    }[call]
    with pytest.raises(ValueError, match="unknown dialect 'oracle'"):
        call(*args)


# --------------------------------------------------------------------------- what cannot be equal


@pytest.mark.parametrize(
    "wtype, dialect, source_type, match",
    [
        (FLOAT64, "mysql", "float", r"mysql float: MySQL FLOAT is a 32-bit float .*6 significant"),
        (FLOAT64, "mysql", "float(10)", r"mysql float\(10\): MySQL FLOAT"),
        (JSON, "mysql", "json", r"mysql json: MySQL 8 binary JSON"),
        (STRING, "postgres", "bit varying", r"postgres bit varying: PostgreSQL varbit"),
        (BYTES, "postgres", "bit(65)", r"postgres bit\(65\): bit strings longer than 64 bits"),
        (JSON, "postgres", "numeric[]", r"postgres numeric\[\]: arrays of numbers"),
        (JSON, "postgres", "timestamp[]", r"arrays of numbers, times"),
        (JSON, "postgres", "char(3)[]", r"postgres char\(3\)\[\]: arrays"),
        (
            STRING,
            "postgres",
            "timestamptz",
            r"holds this timestamptz column as string.*cdc register",
        ),
        (STRING, "postgres", "double precision", r"holds this double precision column as string"),
        (STRING, "mysql", "datetime(6)", r"holds this datetime\(6\) column as string"),
        (INT64, "postgres", "text", r"postgres text: a state-table column of type int64"),
        (NAME_LIST, "duckdb", None, r"name_list is a metadata column"),
        (NAME_LIST, "postgres", "text", r"name_list is a metadata column"),
    ],
)
def test_what_cannot_be_made_equal_raises_naming_the_type_and_why(
    wtype: WarehouseType, dialect: str, source_type: str | None, match: str
) -> None:
    with pytest.raises(NotComparableError, match=match) as info:
        render(V, wtype, dialect, source_type)
    assert isinstance(info.value, ValueError)


def test_a_double_float_in_mysql_renders() -> None:
    assert render(V, FLOAT64, "mysql", "double").sql("mysql").startswith("CASE WHEN v IS NULL")
    assert render(V, FLOAT64, "mysql", "float(30)").sql("mysql")  # p > 24: a double


# --------------------------------------------------------------------------- DuckDB as the oracle


def test_warehouse_renderings_on_duckdb_keep_null() -> None:
    con = duckdb.connect()
    types = {
        INT64: "BIGINT",
        decimal(12, 2): "DECIMAL(12,2)",
        FLOAT64: "DOUBLE",
        BOOL: "BOOLEAN",
        STRING: "VARCHAR",
        BYTES: "BLOB",
        DATE: "DATE",
        TIME: "TIME",
        DATETIME: "TIMESTAMP",
        TIMESTAMP: "TIMESTAMPTZ",
        JSON: "JSON",
    }
    for wtype, sql_type in types.items():
        sql = exp.select(render(exp.column("v"), wtype, "duckdb")).from_(
            exp.select(exp.cast(exp.Null(), sql_type).as_("v")).subquery("t")
        )
        assert con.execute(sql.sql("duckdb")).fetchall() == [(None,)], wtype


@pytest.mark.parametrize(
    "sql_type, wtype, values, texts",
    [
        ("BIGINT", INT64, [0, -(2**63), 2**63 - 1], ["0", "-9223372036854775808", "9223372036854775807"]),
        ("DECIMAL(12,2)", decimal(12, 2), [Decimal("1.50"), Decimal("-0.01"), Decimal("0.00"), Decimal("100.00")], ["1.5", "-0.01", "0", "100"]),
        ("DECIMAL(38,9)", decimal(38, 9), [Decimal("1200000000000000000000"), Decimal("0.000000001")], ["1200000000000000000000", "0.000000001"]),
        ("BOOLEAN", BOOL, [True, False], ["true", "false"]),
        ("VARCHAR", STRING, ["", "a|b:c\nd 😀"], ["", "a|b:c\nd 😀"]),
        ("BLOB", BYTES, [b"\x00\xff\x10", b""], ["00ff10", ""]),
        ("DATE", DATE, [dt.date(1, 1, 1), dt.date(2024, 2, 29)], ["0001-01-01", "2024-02-29"]),
        ("TIME", TIME, [dt.time(10, 11, 12, 500000), dt.time(0)], ["10:11:12.500000", "00:00:00.000000"]),
        ("TIMESTAMP", DATETIME, [dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999)], ["0001-01-01 00:00:00.000000", "9999-12-31 23:59:59.999999"]),
        ("TIMESTAMPTZ", TIMESTAMP, [dt.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC), dt.datetime(2024, 2, 29, 8, 11, 12, 123456, tzinfo=dt.UTC)], ["-1000", "1709194272123456"]),
        ("JSON", JSON, ['{"b":1,"a":[1.5,2,"x"]}'], ['{"b":1,"a":[1.5,2,"x"]}']),
    ],
)  # fmt: skip
def test_warehouse_renderings_on_duckdb(
    sql_type: str, wtype: WarehouseType, values: list[Any], texts: list[str]
) -> None:
    assert duck(sql_type, values, wtype) == texts


FLOATS = [
    0.1, -0.1, 1e300, -1e300, 5e-324, 1e-45, 0.7999999999999999, 1.0000000000000002,
    5.960464477539063e-08, 123456.0, 1e15, 1e16, 1e21, 0.0001, 1e-05, 16777216.0,
    3.4028234663852886e38, 2.0**-1017, 2.0**89, 2.0**-24, 1.7976931348623157e308,
    2.2250738585072014e-308, 9007199254740993.0, 0.0, -0.0, math.nan, math.inf, -math.inf,
]  # fmt: skip


def test_floats_on_duckdb_are_the_shortest_text_in_printf_form() -> None:
    assert duck("DOUBLE", FLOATS, FLOAT64) == [expected_float(x) for x in FLOATS]


def test_random_doubles_on_duckdb() -> None:
    rng = random.Random(20261207)
    values = [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0] for _ in range(20000)]
    values += [math.ldexp(1.0, k) for k in range(-1074, 1024)]
    sql = exp.select(render(V, FLOAT64, "duckdb"), exp.column("v")).from_(
        exp.select(exp.Unnest(expressions=[exp.Placeholder()]).as_("v")).subquery("t")
    )
    rows = duckdb.connect().execute(sql.sql("duckdb"), [values]).fetchall()
    assert len(rows) == len(values)
    assert [text for text, _ in rows] == [expected_float(v) for _, v in rows]


@pytest.mark.parametrize(
    "text, value, expected",
    [
        # PostgreSQL's spellings (float8out / float4out, extra_float_digits = 1)
        ("0.1", 0.1, "1e-01"),
        ("1e+300", 1e300, "1e+300"),
        ("1.6777216e+07", 16777216.0, "1.6777216e+07"),
        ("-1.5e-07", -1.5e-07, "-1.5e-07"),
        ("123456", 123456.0, "1.23456e+05"),
        ("NaN", math.nan, "nan"),
        ("Infinity", math.inf, "inf"),
        ("-Infinity", -math.inf, "-inf"),
        ("-0", -0.0, "0e+00"),
        # MySQL's / MariaDB's
        ("0.00000005960464477539063", 5.960464477539063e-08, "5.960464477539063e-08"),
        ("1.2345678901234568e20", 1.2345678901234568e20, "1.2345678901234568e+20"),
        ("1e15", 1e15, "1e+15"),
        ("5e-324", 5e-324, "5e-324"),
        ("-12.5", -12.5, "-1.25e+01"),
        ("100", 100.0, "1e+02"),
        # DuckDB's
        ("123456.0", 123456.0, "1.23456e+05"),
        ("-0.0", -0.0, "0e+00"),
        ("1e-05", 1e-05, "1e-05"),
        ("-inf", -math.inf, "-inf"),
    ],
)
def test_each_databases_float_spelling_becomes_the_canonical_text(
    text: str, value: float, expected: str
) -> None:
    # the rule the sources use, run here on DuckDB on the text each source prints
    expression = canonical._float_from_text(exp.column("v"), exp.Literal.string(text), "duckdb")
    sql = exp.select(expression).from_(
        exp.select(exp.cast(exp.Literal.string(repr(value)), "DOUBLE").as_("v")).subquery("t")
    )
    assert duckdb.connect().execute(sql.sql("duckdb")).fetchall() == [(expected,)]
    assert expected == expected_float(value)


def _bigquery_algorithm(x: float) -> str:
    """What the BigQuery rendering computes, in Python: the first correctly rounded ``%.{k}e``
    that reads back, unless the magnitude is one of the listed powers of two."""
    exceptions = dict(canonical._power_of_two_exceptions())
    if abs(x) in exceptions:
        return ("-" if x < 0 else "") + exceptions[abs(x)]
    for k in range(16):
        text = f"{x:.{k}e}"
        if float(text) == x:
            return text
    return f"{x:.16e}"


def test_the_bigquery_search_with_its_exceptions_is_the_shortest_text_for_every_power_of_two() -> (
    None
):
    assert len(canonical._power_of_two_exceptions()) == 46
    for k in range(-1074, 1024):
        for x in (math.ldexp(1.0, k), -math.ldexp(1.0, k)):
            assert _bigquery_algorithm(x) == expected_float(x), x


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_the_bigquery_search_is_the_shortest_text_for_any_double(bits: int) -> None:
    x = struct.unpack("<d", bits.to_bytes(8, "little"))[0]
    if math.isfinite(x) and x != 0:
        assert _bigquery_algorithm(x) == expected_float(x)


def test_bigquery_float_rendering_lists_the_powers_of_two() -> None:
    sql = render(V, FLOAT64, "bigquery").sql("bigquery")
    assert "IS_NAN(v)" in sql and "FORMAT('%.0e', v)" in sql and "FORMAT('%.16e', v)" in sql
    assert "WHEN 7.120236347223045e-307 THEN '7.120236347223045e-307'" in sql
    assert "WHEN 5.960464477539063e-08 THEN '5.960464477539063e-08'" in sql


# --------------------------------------------------------------------------- row text and hash


def test_row_text_tells_null_from_empty_and_does_not_run_values_together() -> None:
    con = duckdb.connect()

    def text(*values: str | None) -> str:
        cols = [
            exp.cast(exp.Literal.string(v) if v is not None else exp.Null(), "VARCHAR")
            for v in values
        ]
        return con.execute(exp.select(row_text(cols, "duckdb")).sql("duckdb")).fetchall()[0][0]

    assert text(None, "") == "NL0:"
    assert text("a|b", "c") == "L3:a|bL1:c"
    assert text("a", "b|c") == "L1:aL3:b|c"
    assert text("😀é", "N") == "L2:😀éL1:N"
    assert text(None) != text("")
    assert con.execute(exp.select(row_text([], "duckdb")).sql("duckdb")).fetchall() == [("",)]


def test_a_delimited_piece_ends_with_a_comma_and_null_is_a_tilde() -> None:
    con = duckdb.connect()

    def text(values: list[str | None], delimited: list[bool]) -> str:
        cols = [
            exp.cast(exp.Literal.string(v) if v is not None else exp.Null(), "VARCHAR")
            for v in values
        ]
        sql = exp.select(row_text(cols, "duckdb", delimited)).sql("duckdb")
        return con.execute(sql).fetchall()[0][0]

    assert text(["12", None, "", "a,b"], [True, True, True, False]) == "12,~,L3:a,b"
    # NULL, '' (empty bytes) and a value stay apart; a prefixed neighbour cannot run into them
    assert len({text([None], [True]), text([""], [True]), text(["N"], [True])}) == 3
    assert text(["1", "2"], [True, True]) != text(["12", None], [True, True])
    assert text([None, "x"], [True, False]) != text(["", "x"], [True, False])
    assert text(["7"], [True, True]) == "7,"  # extra flags are ignored


def test_delimited_kinds_render_without_commas_or_a_leading_tilde() -> None:
    """The short form is unambiguous only if no rendering of those kinds holds a comma."""
    from state_models.canonical import DELIMITED_KINDS

    con = duckdb.connect()
    samples = {
        Kind.BOOL: "true",
        Kind.INT64: "-9223372036854775808",
        Kind.FLOAT64: "-1.5e+300",
        Kind.DECIMAL: "-1234567.891",
        Kind.BYTES: "\\x00ff",
        Kind.DATE: "2026-12-08",
        Kind.TIME: "23:59:59.999999",
        Kind.DATETIME: "9999-12-31 23:59:59.999999",
        Kind.TIMESTAMP: "2026-12-08 01:02:03.456789+00",
    }
    assert set(samples) == set(DELIMITED_KINDS)
    for kind, literal in samples.items():
        wtype = WarehouseType(kind, 38, 9) if kind is Kind.DECIMAL else WarehouseType(kind)
        value = exp.cast(exp.Literal.string(literal), wtype.to_sql("duckdb"))
        [(out,)] = con.execute(exp.select(render(value, wtype, "duckdb")).sql("duckdb")).fetchall()
        assert out and "," not in out and not out.startswith("~"), (kind, out)


@pytest.mark.parametrize("text", ["", "NL0:", "L3:a|bL1:c", "L2:😀é"])
def test_row_hash_is_the_first_15_hex_digits_of_md5_of_the_utf8_text(text: str) -> None:
    expected = int(hashlib.md5(text.encode()).hexdigest()[:15], 16)
    sql = exp.select(row_hash(exp.Literal.string(text), "duckdb")).sql("duckdb")
    assert duckdb.connect().execute(sql).fetchall() == [(expected,)]
    assert 0 <= expected < 2**60


def test_postgres_float8_searches_and_real_uses_its_own_text() -> None:
    float8 = render(V, FLOAT64, "postgres", "double precision").sql("postgres")
    assert "TRIM(TO_CHAR(v, '9EEEE'))" in float8
    assert "CAST(TRIM(TO_CHAR(v, '9.9999999999999999EEEE')) AS DOUBLE PRECISION) = v" not in float8
    assert "TRIM(TO_CHAR(v, '9.9999999999999999EEEE'))" in float8  # the 17-digit fallback
    assert "ABS(v) >= 1e308" in float8  # where a rounded candidate would overflow the cast
    real = render(V, FLOAT64, "postgres", "real").sql("postgres")
    assert "TO_CHAR" not in real and "CAST(v AS TEXT)" in real
    assert render(V, FLOAT64, "postgres", "float(24)").sql("postgres") == real
    assert render(V, FLOAT64, "postgres", "float(53)").sql("postgres") == float8
