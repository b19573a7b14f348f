"""The canonical text of every column is the same in the source and in the state table.

A table holding every type with edge values is captured from a real PostgreSQL (pgoutput) and a
real MariaDB (binlog), half of its rows by the snapshot and half streamed, with its column types
registered the way ``cdc register`` does it; the events are merged into a DuckDB state table and
into BigQuery (bqemulator). Then each side renders each column with ``state_models.canonical``
inside its own database, and for every row every column's text, the row text and the row hash
must be equal. A few texts are also pinned to their expected spelling, so that a rendering that
is wrong the same way on both sides still fails.

The columns that cannot be compared (numeric[] and varbit in PostgreSQL, FLOAT in MariaDB) must
raise ``NotComparableError`` (the MariaDB ``FLOAT`` values are compared in the events instead:
the snapshot's and the stream's are the same). Values the capture itself loses are left out of the
rows (and are reported): JSON numbers with exponents.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import re
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from sqlglot import exp

from connectors.capture import make_capture
from connectors.sources import create_engine, introspect_table, mysql_params
from connectors.warehouse.duckdb import DuckDBWarehouse
from state_models import canonical
from state_models.canonical import NotComparableError, render, row_hash, row_text, session_settings
from state_models.registry import Registry, Source, TableSpec, table_infos
from state_models.scd2 import TableDef
from state_models.types import FLOAT64, JSON, Kind, decimal, map_source_type
from tests.integration.capture_support import running
from tests.unit.test_canonical import JSON_GUARD_CASES, JSONB_GUARD_CASES, _python_re

SPACED = _python_re(canonical._PG_JSON_SPACED_STRING)
IRREGULAR = _python_re(canonical._PG_JSON_IRREGULAR)
ZEROS_TEST = _python_re(canonical._PG_JSON_ZEROS_TEST)

pytestmark = pytest.mark.integration

STREAMED = 1000  # each row is also inserted while streaming, with its id + STREAMED

# --------------------------------------------------------------------------- PostgreSQL

PG_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE public.t (
    id int PRIMARY KEY, i2 int2, i8 int8, n0 numeric(12,0), n2 numeric(12,2), n9 numeric(20,9),
    nu numeric, nbig numeric(50,10), f4 real, f8 float8, b bool, tx text, vc varchar(10),
    ch char(4), u uuid, m mood, bya bytea, d date, tm time, tm3 time(3), ts timestamp,
    ts0 timestamp(0), tz timestamptz, tz3 timestamptz(3), ttz timetz, iv interval, js json,
    jb jsonb, tarr text[], iarr int[], barr bool[], ip inet, cidr cidr, mac macaddr, mo money,
    bt bit(1), b8 bit(8), b64 bit(64), narr numeric[], vb varbit
)
"""
PG_ROWS = {
    1: """(@ID, -32768, -9223372036854775808, 123456789012, -0.01, 0.000000001, 12e20,
        12345678901234567890123456789012345678.1234567890, 0.1, 0.1, true, E'a|b:c\\nd \U0001f600',
        '', 'ab', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', '\\x00ff10', '2024-02-29',
        '10:11:12.123456', '10:11:12.5', '2024-02-29 10:11:12.123456', '0001-01-01 00:00:00',
        '2024-02-29 10:11:12.123456+02', '1969-12-31 23:59:59.999+00', '10:11:12.5+02',
        '1 year 2 mons 3 days 04:05:06.789', '{"b": 1,  "a": [1.50, 2, "x, y: z"], "n": null}',
        '{"bb": 1, "a": [1.50, 2.000, 0.1, 1.0, 100], "ccc": {"z": "\\u00e9\\\\n\\"/ a, b: c", "y": -0}, "e": "x\\\\"}',
        '{"a b","c\\"d",NULL,"|"}', '{1,2,NULL}', '{true,NULL,false}', '10.0.0.1', '10.0.0.0/8',
        '08:00:2b:01:02:03', '-1234.56', '1', '10101010',
        '1000000000000000000000000000000000000000000000000000000000000001', '{1.5}', '101')""",
    2: """(@ID, 32767, 9223372036854775807, -999999999999, 9999999999.99, -12345678901.123456789,
        0.5, -0.0000000001, 'NaN', '-0', false, E'tab\\there', 'x', 'abcd',
        '00000000-0000-0000-0000-000000000000', 'sad', '\\x', '0001-01-01', '00:00:00',
        '23:59:59.999', '9999-12-31 23:59:59.999999', '1999-12-31 23:59:59',
        '9999-12-31 23:59:59.999999+00', '0001-01-01 00:00:00+00', '00:00:00-05:30',
        '-1 days +02:03:04.5', '"just a string"', '[]', '{}', '{}', '{}', '::1', '::/0',
        'ff:ff:ff:ff:ff:ff', '0', '0', '00000000', '0000000000000000000000000000000000000000000000000000000000000000',
        '{}', '')""",
    3: "(@ID, NULL, NULL, NULL, 0, 0, 3.14159000, NULL, 'Infinity', 1e300, NULL, 'N')",
    4: "(@ID, NULL, NULL, NULL, NULL, NULL, -1.5, NULL, '-Infinity', 5e-324, NULL, 'L3:')",
    5: "(@ID, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 3.4028235e38, 'NaN')",
    6: "(@ID, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1e-45, 'Infinity')",
    7: "(@ID, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1.1, '-Infinity')",
    8: "(@ID, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 16777217, 0.7999999999999999)",
    9: "(@ID, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '-0', 5.960464477539063e-08)",  # 2**-24
    10: "(@ID, NULL, NULL, NULL, NULL, NULL, NULL, NULL, -2.5e-7, 1.0000000000000002)",
    11: "(@ID, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 123456.0)",
    12: "(@ID, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 618970019642690137449562112)",  # 2**89
    13: "(@ID, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1.7976931348623157e308)",
    14: "(@ID, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, -2.2250738585072014e-308)",
    15: "(@ID, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1e16)",
    16: "(@ID)",
}
#: (column, id) -> the canonical text, as this module's docstring spells it
PG_EXPECTED = {
    ("i8", 1): "-9223372036854775808",
    ("nu", 1): "1200000000000000000000",
    ("n2", 3): "0",
    ("nu", 3): "3.14159",
    ("f8", 1): "1e-01",
    ("f8", 3): "1e+300",
    ("f8", 4): "5e-324",
    ("f8", 9): "5.960464477539063e-08",
    ("f8", 12): "6.189700196426902e+26",
    ("f8", 2): "0e+00",
    ("f8", 5): "nan",
    ("f8", 7): "-inf",
    ("f4", 8): "1.6777216e+07",
    ("f4", 10): "-2.5e-07",
    ("b", 1): "true",
    ("tx", 1): "a|b:c\nd \U0001f600",
    ("ch", 1): "ab  ",
    ("bya", 1): "00ff10",
    ("bya", 2): "",
    ("d", 2): "0001-01-01",
    ("tm3", 1): "10:11:12.500000",
    ("ts0", 1): "0001-01-01 00:00:00.000000",
    ("tz", 1): "1709194272123456",
    ("tz3", 1): "-1000",
    ("ttz", 1): "08:11:12.5Z",
    ("iv", 1): "37091106789000",
    ("js", 1): '{"b":1,"a":[1.5,2,"x, y: z"],"n":null}',
    ("jb", 1): r'{"a":[1.5,2.0,0.1,1.0,100],"e":"x\\","bb":1,"ccc":{"y":0,"z":"é\\n\"/ a, b: c"}}',
    ("tarr", 1): r'["a b","c\"d",null,"|"]',
    ("ip", 1): "10.0.0.1",
    ("mo", 1): "-1234.56",
    ("bt", 1): "true",
    ("b8", 1): "aa",
    ("b8", 2): "",
    ("b64", 1): "0100000000000080",
}
PG_NOT_COMPARABLE = {"narr", "vb"}

# --------------------------------------------------------------------------- MariaDB

MY_DDL = """
CREATE TABLE t (
    id int PRIMARY KEY, ti tinyint, t1 tinyint(1), si smallint, mi mediumint unsigned, bi bigint,
    bu bigint unsigned, y year, d0 decimal(12,0), d2 decimal(12,2), d9 decimal(20,9),
    d65 decimal(65,10), fl float, db double, b1 bit(1), b10 bit(10), c4 char(4), vc varchar(20),
    tx text, l1 varchar(20) CHARACTER SET latin1, bn binary(4), vb varbinary(10), bl blob, dt date,
    dtm datetime, dt6 datetime(6), ts timestamp NULL, ts6 timestamp(6) NULL, tm time, tm6 time(6),
    j json, e enum('a','b c'), st set('x','y','z')
) DEFAULT CHARSET=utf8mb4
"""
MY_ROWS = {
    1: """VALUES (@ID, -128, 1, -32768, 16777215, -9223372036854775808, 18446744073709551615, 2024,
        123456789012, -0.01, 0.000000001,
        1234567890123456789012345678901234567890123456789012345.1234567890, 1.1, 0.1, b'1',
        b'1000000001', 'ab', 'a|b:c\\nd \U0001f600', '', 'café', x'01020304', x'00ff', x'00',
        '2024-02-29', '2024-02-29 10:11:12', '2024-02-29 10:11:12.123456', '2024-02-29 10:11:12',
        '1970-01-01 00:00:01.000001', '10:11:12', '23:59:59.999999',
        '{"b": 1, "a": [1.50, 2, "x"], "e": 1e2}', 'b c', 'z,x')""",
    2: """VALUES (@ID, 127, -1, 32767, 0, 9223372036854775807, 0, 1901, -999999999999,
        9999999999.99, -12345678901.123456789, -0.0000000001, 16777217, 0.7999999999999999, b'0',
        b'0', 'a  ', '', 'x', '', x'ff000001', x'', x'', '1000-01-01', '1000-01-01 00:00:00',
        '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07', '2038-01-19 03:14:07.999999',
        '00:00:00', '00:00:00.000001', '[]', 'a', 'y')""",
    3: "(id, t1, d2, db) VALUES (@ID, 2, 0, 1e300)",
    4: "(id, fl, db) VALUES (@ID, 1e-45, 5e-324)",
    5: "(id, fl, db) VALUES (@ID, -0.0, -0.0)",
    6: "(id, db) VALUES (@ID, 5.960464477539063e-08)",
    7: "(id, db) VALUES (@ID, 123456)",
    8: "(id, db) VALUES (@ID, -1.2345678901234568e20)",
    9: "(id) VALUES (@ID)",
    # zero dates are null in the capture (as in Debezium); writing them needs a lax sql_mode
    10: "(id, dt, dtm, dt6, ts, ts6) VALUES (@ID, '0000-00-00', '0000-00-00 00:00:00', "
    "'0000-00-00 00:00:00', '0000-00-00 00:00:00', '0000-00-00 00:00:00')",
    # the binlog drops a binary(n)'s trailing 0x00 bytes and reads an empty SET as NULL
    11: "(id, bn, vb, st, fl) VALUES (@ID, x'01020000', x'0100', '', 3.4028234663852886e38)",
    12: "(id, bn, st, fl) VALUES (@ID, x'', '', -3.4028234663852886e38)",
}
MY_EXPECTED = {
    ("bu", 1): "18446744073709551615",
    ("d2", 3): "0",
    ("d9", 1): "0.000000001",
    ("db", 1): "1e-01",
    ("db", 3): "1e+300",
    ("db", 4): "5e-324",
    ("db", 5): "0e+00",
    ("db", 6): "5.960464477539063e-08",
    ("db", 7): "1.23456e+05",
    ("db", 8): "-1.2345678901234568e+20",
    ("t1", 2): "-1",
    ("b1", 1): "true",
    ("b10", 1): "0102",
    ("c4", 2): "a",
    ("l1", 1): "café",
    ("bn", 2): "ff000001",
    ("dtm", 1): "2024-02-29 10:11:12.000000",
    ("ts6", 1): "1000001",
    ("tm", 1): "10:11:12.000000",
    ("j", 1): '{"b": 1, "a": [1.50, 2, "x"], "e": 1e2}',  # MariaDB's JSON is text
    ("st", 1): "x,z",
    ("dt", 10): None,
    ("ts", 10): None,
    ("bn", 11): "01020000",
    ("vb", 11): "0100",
    ("st", 11): "",
    ("bn", 12): "00000000",
    ("st", 9): None,
}
MY_NOT_COMPARABLE = {"fl"}


# --------------------------------------------------------------------------- warehouses


class Warehouse:
    """A warehouse under test: applies events, runs a query, renders with its quirks."""

    def __init__(self, wh: Any, dialect: str, run: Callable[[str], list[tuple[Any, ...]]]):
        self.wh, self.dialect, self.run = wh, dialect, run
        self.table: Callable[[str], exp.Table] = exp.table_

    def column(self, name: str, kind: Kind) -> exp.Expr:
        return exp.column(name, quoted=True)


def _duckdb_warehouse(tmp_path: Path) -> Warehouse:
    wh = DuckDBWarehouse(f"duckdb:///{tmp_path / 'w.duckdb'}")
    return Warehouse(wh, "duckdb", lambda sql: wh.con.execute(sql).fetchall())


def _bigquery_warehouse(request: pytest.FixtureRequest) -> Warehouse:
    from tests.bqemu import warehouse_class

    client = request.getfixturevalue("bigquery_client")()
    project, dataset = request.getfixturevalue("bigquery_dataset").split(".", 1)
    wh = warehouse_class()(f"bigquery://{project}/{dataset}", client=client)
    out = Warehouse(
        wh, "bigquery", lambda sql: [tuple(r.values()) for r in client.query(sql).result()]
    )
    out.table = lambda name: exp.table_(name, db=dataset)
    return out


@pytest.fixture(params=["duckdb", "bigquery"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    w = _duckdb_warehouse(tmp_path) if request.param == "duckdb" else _bigquery_warehouse(request)
    try:
        yield w
    finally:
        w.wh.close()


# --------------------------------------------------------------------------- capture and compare


def _capture(source_name: str, source: Source, table: str, n_events: int, tmp_path: Path,
             during: Callable[[], None]) -> tuple[TableDef, list[Any], dict[str, str]]:  # fmt: skip
    """Register the table as ``cdc register`` does, capture its snapshot, run ``during`` while
    streaming; return the table definition, the events and the declared source types."""
    engine = create_engine(source, source_name)
    try:
        declared = introspect_table(engine, source_name, table).columns
    finally:
        engine.dispose()
    spec = TableSpec(
        name=table,
        primary_key=["id"],
        columns=declared,
        state_table=f"canonical_{source_name}_{uuid.uuid4().hex[:8]}",
    )
    source = source.model_copy(update={"tables": [spec]})
    registry = Registry(sources={source_name: source})
    capture = make_capture(
        source_name, source, table_infos(registry, source_name), tmp_path / "state"
    )
    with running(capture) as r:
        r.wait_streaming(timeout=120)
        during()
        r.wait_events(n_events, timeout=120)
        r.stop()
    table_def = TableDef.from_registered(registry.tables()[0])
    return table_def, r.sink.events, declared


def _rendered(
    columns: list[tuple[str, Kind, exp.Expr]], dialect: str, table: exp.Expr, where: str | None
) -> str:
    """``SELECT`` of each column's text, the row text and the row hash, by id. The hash is taken
    over the row text of a derived table (bqemulator cannot cast a long text expression's hex)."""
    texts = [expr for _, _, expr in columns]
    inner = exp.select(
        exp.column("id", quoted=True).as_("id"),
        *[t.as_(f"c{i}") for i, t in enumerate(texts)],
        row_text(texts, dialect).as_("rt"),
    ).from_(table)
    if where:
        inner = inner.where(where)
    outer = exp.select("*", row_hash(exp.column("rt"), dialect).as_("rh")).from_(
        inner.subquery("r")
    )
    return outer.sql(dialect)


def _compare(
    state_columns: list[Any],
    declared: dict[str, str],
    source_dialect: str,
    source_query: Callable[[str], list[tuple[Any, ...]]],
    warehouse: Warehouse,
    state_table: str,
    not_comparable: set[str],
    expected: dict[tuple[str, int], str | None],
    n_rows: int,
) -> None:
    src_cols, wh_cols, refused = [], [], set()
    for c in state_columns:
        try:
            s = render(exp.column(c.name, quoted=True), c.type, source_dialect, declared[c.name])
        except NotComparableError:
            refused.add(c.name)
            continue
        src_cols.append((c.name, c.type.kind, s))
        w = render(warehouse.column(c.name, c.type.kind), c.type, warehouse.dialect)
        wh_cols.append((c.name, c.type.kind, w))
    assert refused == not_comparable

    src = {
        r[0]: r for r in source_query(_rendered(src_cols, source_dialect, exp.table_("t"), None))
    }
    sql = _rendered(
        wh_cols, warehouse.dialect, warehouse.table(state_table), "_is_current AND NOT _is_deleted"
    )
    wh = {r[0]: r for r in warehouse.run(sql)}
    assert len(src) == n_rows and src.keys() == wh.keys()

    names = [name for name, _, _ in src_cols]
    differences = [
        f"id {k}, {name} ({declared[name]}): source {src[k][i + 1]!r}, warehouse {wh[k][i + 1]!r}"
        for k in sorted(src)
        for i, name in enumerate(names)
        if src[k][i + 1] != wh[k][i + 1]
    ]
    assert not differences, "\n".join(differences)
    for k in src:
        assert src[k][-2:] == wh[k][-2:], f"id {k}: row text / hash differ"
        assert isinstance(src[k][-1], int) and 0 <= src[k][-1] < 2**60
    for (name, k), text in expected.items():
        for key in (k, k + STREAMED):
            assert src[key][names.index(name) + 1] == text, (name, key)


def test_postgres_values_render_the_same_in_the_state_table(
    source_dsn: str, warehouse: Warehouse, tmp_path: Path
) -> None:
    def insert(offset: int) -> None:
        with psycopg.connect(source_dsn, autocommit=True) as c:
            for id_, values in PG_ROWS.items():
                c.execute("INSERT INTO public.t VALUES " + values.replace("@ID", str(id_ + offset)))

    with psycopg.connect(source_dsn, autocommit=True) as c:
        c.execute(PG_DDL)
    insert(0)  # read by the snapshot
    source = Source(
        kind="postgres", engine="pgoutput", dsn=source_dsn, tables=[TableSpec(name="public.t")]
    )
    table, events, declared = _capture(
        "billing", source, "public.t", 2 * len(PG_ROWS), tmp_path, lambda: insert(STREAMED)
    )
    result = warehouse.wh.apply(table, events, dt.datetime.now(dt.UTC))
    assert result.rejected == [] and result.inserted == 2 * len(PG_ROWS)
    state = warehouse.wh.state_table(table)

    def query(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(source_dsn, autocommit=True) as c:
            for s in session_settings("postgres"):
                c.execute(s)
            return c.execute(sql).fetchall()

    _compare(
        list(state.columns), declared, "postgres", query, warehouse, table.state_table,
        PG_NOT_COMPARABLE, PG_EXPECTED, 2 * len(PG_ROWS),
    )  # fmt: skip


def test_mariadb_values_render_the_same_in_the_state_table(
    mariadb: Any, mysql_database: str, warehouse: Warehouse, tmp_path: Path
) -> None:
    dsn = mariadb.dsn(mysql_database)

    def execute(*statements: str) -> None:
        params = mysql_params(dsn)
        with (
            pymysql.connect(autocommit=True, charset="utf8mb4", **params) as conn,
            conn.cursor() as cur,
        ):
            for s in statements:
                cur.execute(s)

    def insert(offset: int) -> None:
        execute(
            "SET SESSION sql_mode = ''",  # zero dates
            "SET SESSION time_zone = '+00:00'",
            *(
                "INSERT INTO t " + values.replace("@ID", str(id_ + offset))
                for id_, values in MY_ROWS.items()
            ),
        )

    execute(MY_DDL)
    insert(0)
    n = 2 * len(MY_ROWS)
    source = Source(
        kind="mysql", engine="binlog", dsn=dsn, tables=[TableSpec(name=f"{mysql_database}.t")]
    )
    table, events, declared = _capture(
        "pay", source, f"{mysql_database}.t", n, tmp_path, lambda: insert(STREAMED)
    )
    # FLOAT cannot be rendered alike in SQL: the snapshot's and the stream's values are compared
    floats = {e.key["id"]: e.after["fl"] for e in events}
    assert all(floats[k] == floats[k + STREAMED] for k in MY_ROWS), floats
    assert (floats[2], floats[11], floats[12]) == (16777216.0, 3.4028235e38, -3.4028235e38)
    result = warehouse.wh.apply(table, events, dt.datetime.now(dt.UTC))
    assert result.rejected == [] and result.inserted == n
    state = warehouse.wh.state_table(table)

    def query(sql: str) -> list[tuple[Any, ...]]:
        with pymysql.connect(autocommit=True, **mysql_params(dsn)) as conn, conn.cursor() as cur:
            for s in session_settings("mysql"):
                cur.execute(s)
            cur.execute(sql)
            return list(cur.fetchall())

    _compare(
        list(state.columns), declared, "mysql", query, warehouse, table.state_table,
        MY_NOT_COMPARABLE, MY_EXPECTED, n,
    )  # fmt: skip


# --------------------------------------------------------------------------- JSON and decimals

#: the PostgreSQL JSON rendering without its guards (both regexes on every value)
_PG_JSON_REGEXES = (
    "REGEXP_REPLACE(REGEXP_REPLACE(CAST(v AS TEXT), "
    + r"""'("(?:[^"\\]|\\.)*")|[[:space:]]+', '\1', 'g'), """
    + r"""'("(?:[^"\\]|\\.)*")|(\.[0-9]*[1-9])0+\M|(\.0)0+\M', '\1\2\3', 'g')"""
)
_JSON_PIECES = [" ", ",", ":", ", ", ": ", ".", "0", "1.50", "a", "é", "\\", '"', "\t", "\n", "x y"]
_JSON_NUMBERS = ["0", "-1", "1.50", "2.000", "0.10", "100", "10.5", "1.0", "-7.250", "0.000", "1e2"]


def _random_json(rng: random.Random, space: Callable[[], str], depth: int = 0) -> str:
    """A JSON text with strings of separators, quotes and backslashes, numbers with fraction
    zeros, and ``space()`` between the tokens."""
    k = rng.random()
    if depth > 2 or k < 0.4:
        if k < 0.15:
            return rng.choice(_JSON_NUMBERS)
        if k < 0.2:
            return rng.choice(["true", "false", "null"])
        piece = "".join(rng.choices(_JSON_PIECES, k=rng.randint(0, 5)))
        return json.dumps(piece, ensure_ascii=rng.random() < 0.2)
    n = rng.randint(0, 4)
    if k < 0.7:
        items = [_random_json(rng, space, depth + 1) for _ in range(n)]
        return "[" + space() + ("," + space()).join(items) + space() + "]"
    pairs = [
        json.dumps("".join(rng.choices(_JSON_PIECES, k=rng.randint(0, 3))))
        + space() + ":" + space() + _random_json(rng, space, depth + 1)
        for _ in range(n)
    ]  # fmt: skip
    return "{" + space() + ("," + space()).join(pairs) + space() + "}"


def _json_texts(n: int = 3000) -> list[str]:
    rng = random.Random(11)
    layouts: list[Callable[[], str]] = [
        lambda: "",
        lambda: " ",  # jsonb's layout, json.dumps' too
        lambda: rng.choice(["", " ", "  ", "\n", "\t", "\r\n  "]),
    ]
    texts = [_random_json(rng, rng.choice(layouts)) for _ in range(n)]
    return texts + [case[0] for case in (*JSONB_GUARD_CASES, *JSON_GUARD_CASES)]


def test_postgres_json_guards_keep_what_the_regexes_make(pg_database: str) -> None:
    """The rendering runs its regexes only behind cheap guards: its text must be what the regexes
    alone make, for json and jsonb; for jsonb also the capture's compact text. And PostgreSQL's
    guards decide as their Python translation does (tests/unit/test_canonical.py)."""
    texts = _json_texts()
    with psycopg.connect(pg_database, autocommit=True) as c:
        for s in session_settings("postgres"):
            c.execute(s)
        c.execute("CREATE TABLE j (i int PRIMARY KEY, js json, jb jsonb)")
        with c.cursor() as cur:
            cur.executemany(
                "INSERT INTO j VALUES (%s, %s, %s::jsonb)", [(i, t, t) for i, t in enumerate(texts)]
            )
        for column, source_type in (("js", "json"), ("jb", "jsonb"), ("jb", "json")):
            guarded = render(exp.column("v"), JSON, "postgres", source_type).sql("postgres")
            rows = c.execute(
                f"SELECT i, t, {guarded}, {_PG_JSON_REGEXES}, "
                f"t ~ '{canonical._PG_JSON_SPACED_STRING}', t ~ '{canonical._PG_JSON_IRREGULAR}', "
                f"t ~ '{canonical._PG_JSON_ZEROS_TEST}' "
                f"FROM (SELECT i, {column} AS v, CAST({column} AS TEXT) AS t FROM j) AS x ORDER BY i"
            ).fetchall()
            assert len(rows) == len(texts)
            assert [r[2] for r in rows] == [r[3] for r in rows], (column, source_type)
            for _, text, _, _, spaced, irregular, zeros in rows:
                assert spaced == bool(SPACED.search(text)), text
                assert irregular == bool(IRREGULAR.search(text)), text
                if not re.search(r"[0-9][^\x00-\x7f]", text):  # a word's end: by the locale
                    assert zeros == bool(ZEROS_TEST.search(text)), text
            if column == "jb":  # the capture's text: Python's, without spaces
                for _, text, rendered, *_ in rows:
                    compact = json.dumps(
                        json.loads(text), separators=(",", ":"), ensure_ascii=False
                    )
                    assert rendered == compact, text
            fast = sum(not (r[5] if source_type == "json" else r[4]) for r in rows)
            assert 0.2 * len(rows) < fast < 0.9 * len(rows)  # both paths are taken


def _expected_decimal(text: str) -> str:
    plain = format(Decimal(text), "f")  # (normalize() would round to 28 digits)
    plain = plain.rstrip("0").rstrip(".") if "." in plain else plain
    return "0" if Decimal(text) == 0 else plain


DECIMAL_VALUES = ["0", "0.00", "-0.00", "1.50", "-0.01", "100", "100.10", "9999999999.99", "0.5"]


def test_postgres_numeric_is_its_text_without_fraction_zeros(pg_database: str) -> None:
    cases = {
        "numeric(12,2)": DECIMAL_VALUES,
        "numeric(12,0)": ["0", "-0", "1", "-123456789012", "100"],
        "numeric(20,9)": ["0.000000001", "-12345678901.123456789", "1.000000000", "0"],
        "numeric": [*DECIMAL_VALUES, "12e20", "3.14159000", "1e-9", "-0.0000000001", "0.000"],
        "money": ["0", "-1234.56", "1.50", "100"],
        "bigint": ["0", "-9223372036854775808", "100"],
    }
    with psycopg.connect(pg_database, autocommit=True) as c:
        for s in session_settings("postgres"):
            c.execute(s)
        for source_type, values in cases.items():
            wtype = map_source_type(source_type, "postgres")
            assert wtype.kind is Kind.DECIMAL or source_type == "bigint"
            rendered = render(exp.column("v"), decimal(38, 9), "postgres", source_type)
            rows = c.execute(
                f"SELECT {rendered.sql('postgres')} FROM unnest(%s::text[]) WITH ORDINALITY "
                f"AS x(t, i), LATERAL (SELECT CAST(t AS {source_type}) AS v) AS y ORDER BY i",
                [values],
            ).fetchall()
            assert [r[0] for r in rows] == [_expected_decimal(v) for v in values], source_type
        special = render(exp.column("v"), decimal(38, 9), "postgres", "numeric").sql("postgres")
        rows = c.execute(
            f"SELECT {special} FROM (VALUES (CAST('NaN' AS numeric)), (NULL)) AS x(v)"
        ).fetchall()
        assert rows == [("NaN",), (None,)]


def test_mariadb_decimal_is_its_text_without_fraction_zeros(
    mariadb: Any, mysql_database: str
) -> None:
    cases = {
        "decimal(12,2)": DECIMAL_VALUES,
        "decimal(12,2) unsigned": ["0", "1.50", "100.10", "0.01"],
        "decimal(12,0)": ["0", "-0", "1", "-123456789012", "100"],
        "decimal": ["0", "10", "-1000"],
        "decimal(20,9)": ["0.000000001", "-12345678901.123456789", "1.000000000", "0", "-0.0"],
        "decimal(65,30)": ["0", "1.5", "-12345678901234567890.000000000000000000000000000001"],
    }
    params = mysql_params(mariadb.dsn(mysql_database))
    with pymysql.connect(autocommit=True, **params) as conn, conn.cursor() as cur:
        for s in session_settings("mysql"):
            cur.execute(s)
        for n, (source_type, values) in enumerate(cases.items()):
            cur.execute(f"CREATE TABLE d{n} (i int PRIMARY KEY, v {source_type})")
            cur.executemany(f"INSERT INTO d{n} VALUES (%s, %s)", [*enumerate(values), (-1, None)])
            rendered = render(exp.column("v"), decimal(38, 9), "mysql", source_type).sql("mysql")
            cur.execute(f"SELECT {rendered} FROM d{n} ORDER BY i")
            expected = [None, *(_expected_decimal(v) for v in values)]
            assert [r[0] for r in cur.fetchall()] == expected, source_type


# --------------------------------------------------------------------------- floats, many of them


def _expected_float(x: float) -> str:
    """The canonical text from Python's shortest repr (as in tests/unit/test_canonical.py)."""
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


def _doubles(n: int = 1500) -> list[float]:
    rng = random.Random(7)
    values = [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0] for _ in range(n)]
    values = [v for v in values if math.isfinite(v)]
    values += [x for k in range(-1074, 1024, 7) for x in (math.ldexp(1.0, k), -math.ldexp(1.0, k))]
    values += [
        x for x, _ in canonical._power_of_two_exceptions()
    ]  # where BigQuery's search is wrong
    # 5.299064834871378e+16: a shorter text exactly on the rounding boundary (PostgreSQL's own
    # text is one digit longer); beyond 1e308 a rounded candidate overflows
    extremes = [
        5.299064834871378e16,
        1.7976931348623157e308,
        -1.2e308,
        1e308,
        9.999999999999999e307,
    ]
    return [*values, *extremes, 0.0, -0.0, 0.1, 1e300, 5e-324, 123456.0, 1e16]


def test_postgres_prints_each_double_as_the_canonical_text(pg_database: str) -> None:
    values = [*_doubles(20000), math.nan, math.inf, -math.inf]
    rendered = render(exp.column("v"), FLOAT64, "postgres", "double precision").sql("postgres")
    sql = f"SELECT {rendered}, v FROM unnest(%s::float8[]) AS t(v)".replace("%", "%%")
    with psycopg.connect(pg_database, autocommit=True) as c:
        for s in session_settings("postgres"):
            c.execute(s)
        rows = c.execute(sql.replace("%%s::float8", "%s::float8"), [values]).fetchall()
    assert len(rows) == len(values)
    assert [text for text, v in rows] == [_expected_float(v) for _, v in rows]


def test_mariadb_prints_each_double_as_the_canonical_text(
    mariadb: Any, mysql_database: str
) -> None:
    values = _doubles()  # no NaN or infinity in MySQL
    params = mysql_params(mariadb.dsn(mysql_database))
    with pymysql.connect(autocommit=True, **params) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE d (i int PRIMARY KEY, v double)")
        cur.executemany("INSERT INTO d VALUES (%s, %s)", list(enumerate(values)))
        for s in session_settings("mysql"):
            cur.execute(s)
        sql = exp.select(render(exp.column("v"), FLOAT64, "mysql", "double"), "v").from_("d")
        cur.execute(sql.sql("mysql").replace("%", "%%"))
        rows = list(cur.fetchall())
    assert len(rows) == len(values)
    assert [text for text, v in rows] == [_expected_float(v) for _, v in rows]


FLOAT64_BQ = exp.DataType.build("FLOAT64", dialect="bigquery")


def test_bigquery_prints_each_double_as_the_canonical_text(
    bigquery_client: Callable[[], Any],
) -> None:
    values = _doubles(300)
    literals = [exp.cast(exp.Literal.string(repr(v)), FLOAT64_BQ) for v in values]
    literals += [exp.cast(exp.Literal.string(s), FLOAT64_BQ) for s in ("nan", "inf", "-inf")]
    sql = exp.select(render(exp.column("v"), FLOAT64, "bigquery"), "v").from_(
        exp.Unnest(
            expressions=[exp.Array(expressions=literals)],
            alias=exp.TableAlias(this=exp.to_identifier("t"), columns=[exp.to_identifier("v")]),
        )
    )
    rows = [tuple(r.values()) for r in bigquery_client().query(sql.sql("bigquery")).result()]
    assert len(rows) == len(values) + 3
    assert [text for text, v in rows] == [_expected_float(v) for _, v in rows]
