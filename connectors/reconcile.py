"""The two sides ``cdc reconcile`` compares (``state_models.reconcile``), and the source snapshot.

- ``PostgresSnapshot``: a consistent read of a PostgreSQL source at a known log position: a
  temporary logical slot created with an exported snapshot (its consistent point is the position;
  the slot goes with the replication connection), imported by a ``REPEATABLE READ`` read-only
  transaction in which every source query runs. Nothing is written to the source.
- ``QuerySide``: any relation whose plans a callable runs (the snapshot's connection, or the
  warehouse), rendered for its dialect.
- ``source_side`` / ``state_side``: the shapes: the source table with its columns rendered from its
  own types, the state table's live rows as of a seq with theirs (``state_models.canonical``).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from sqlglot import exp

from connectors.sources import libpq_dsn, require_dsn
from state_models.errors import CdcError, SourceUnavailableError
from state_models.plans import plan_as_of
from state_models.reconcile import (
    Digest,
    Key,
    RelationShape,
    Segment,
    digests_of,
    read_keys,
    rows_where,
    text_hash,
)
from state_models.scd2 import StateTable, TableDef
from state_models.seq import binlog_seq, int_to_pg_lsn, make_seq, pg_lsn_to_int

_slots = itertools.count()


class ReconcileError(CdcError):
    """The comparison cannot run (a column or key it cannot compare, a source it cannot read)."""


@dataclass
class QuerySide:
    """A ``Side`` whose plans ``run`` executes; counts the queries it ran."""

    shape: RelationShape
    run: Callable[[exp.Expr], list[dict[str, Any]]]
    #: the source side of a table with pii: columns: (column, clear text) -> the protected text the
    #: state table holds, computed here (the PII key never reaches a database); None: as stored
    protect: Callable[[str, str | None], str | None] | None = None
    queries: int = 0
    rows_seen: int = 0  # rows of the whole relation, once its top-level digests were taken
    pii_rows: int = 0  # rows whose pii: columns left the database to be protected here
    seconds: float = 0.0  # spent in its queries

    def _run(self, plan: exp.Expr) -> list[dict[str, Any]]:
        self.queries += 1
        started = time.monotonic()
        try:
            return self.run(plan)
        finally:
            self.seconds += time.monotonic() - started

    def digests(self, parents: Sequence[Segment], bounds: Sequence[Key]) -> list[Digest]:
        out = digests_of(self._run(self.shape.plan_digests(parents, bounds)), len(bounds) + 1)
        if self.shape.pii and self.protect is not None:
            # the pii: columns' protected form is made here: their rows come out, per segment
            pii = [0] * len(out)
            for r in self._run(self.shape.plan_pii_rows(parents, bounds)):
                pii[int(r["__segment"])] ^= self._pii_hash(r)
                self.pii_rows += 1
            out = [replace(d, pii=x) for d, x in zip(out, pii, strict=True)]
        if list(parents) == [Segment()]:
            self.rows_seen = sum(d.rows for d in out)
        return out

    def _protected(self, row: dict[str, Any]) -> list[str | None]:
        texts = [row[f"__p{i}"] for i in range(len(self.shape.pii))]
        if self.protect is None:
            return texts
        return [self.protect(c, t) for c, t in zip(self.shape.pii, texts, strict=True)]

    def _pii_hash(self, row: dict[str, Any]) -> int:
        keys = [row[f"__kt{i}"] for i in range(len(self.shape.key_texts))]
        return text_hash([*keys, *self._protected(row)])

    def split(self, segment: Segment, parts: int) -> list[Key]:
        width = len(self.shape.keys)
        return [read_keys(r, width) for r in self._run(self.shape.plan_split(segment, parts))]

    def rows(self, segments: Sequence[Segment]) -> dict[Key, int]:
        return self._hashes(self.shape.plan_rows(rows_where(self.shape, segments)))

    def lookup(self, keys: Sequence[Key]) -> dict[Key, int]:
        out: dict[Key, int] = {}
        for chunk in _chunks(keys, 500):
            out.update(self._hashes(self.shape.plan_rows(self.shape.key_in(chunk))))
        return out

    def _hashes(self, plan: exp.Expr) -> dict[Key, int]:
        width = len(self.shape.keys)
        out = {}
        for r in self._run(plan):
            h = int(r["__row_hash"])
            if self.shape.pii:
                h ^= self._pii_hash(r)
            out[read_keys(r, width)] = h
        return out

    def column_hashes(self, keys: Sequence[Key]) -> dict[Key, dict[str, int]]:
        width = len(self.shape.keys)
        names = list(self.shape.columns)
        out: dict[Key, dict[str, int]] = {}
        for chunk in _chunks(keys, 500):
            for r in self._run(self.shape.plan_column_hashes(chunk)):
                out[read_keys(r, width)] = {n: int(r[f"__c{i}"]) for i, n in enumerate(names)}
            if self.shape.pii:
                for r in self._run(self.shape.plan_rows(self.shape.key_in(chunk))):
                    hashes = out.setdefault(read_keys(r, width), {})
                    for c, t in zip(self.shape.pii, self._protected(r), strict=True):
                        hashes[c] = text_hash([t])
        return out


def _chunks(items: Sequence[Key], n: int) -> list[Sequence[Key]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class PostgresSnapshot:
    """A read-only transaction on the source at ``lsn`` (see the module doc). Use as a context."""

    source_name: str
    source: Any
    lsn: int = 0
    taken_at: float = 0.0
    conn: psycopg.Connection[Any] | None = field(default=None, repr=False)

    def __enter__(self) -> PostgresSnapshot:
        from state_models.canonical import session_settings

        dsn = libpq_dsn(require_dsn(self.source, self.source_name))
        repl = pq.PGconn.connect(
            make_conninfo(dsn, replication="database", connect_timeout=5).encode()
        )
        try:
            if repl.status != pq.ConnStatus.OK:
                raise SourceUnavailableError(
                    f"cannot open a replication connection to source {self.source_name!r}: "
                    + (repl.error_message or b"").decode(errors="replace").strip()
                )
            slot = f"cdc_reconcile_{os.getpid()}_{next(_slots)}"
            res = repl.exec_(
                f'CREATE_REPLICATION_SLOT "{slot}" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT'.encode()
            )
            if res.status != pq.ExecStatus.TUPLES_OK:
                reason = (res.error_message or repl.error_message or b"").decode(errors="replace")
                raise ReconcileError(
                    f"source {self.source_name!r}: cannot take a consistent snapshot (a temporary "
                    f"replication slot with an exported snapshot): {reason.strip()}"
                )
            self.lsn = pg_lsn_to_int((res.get_value(0, 1) or b"").decode())
            name = (res.get_value(0, 2) or b"").decode()
            self.taken_at = time.time()
            conn = psycopg.connect(dsn, connect_timeout=5)
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(name)))
            for statement in session_settings("postgres"):
                conn.execute(statement.encode())
            encoding = conn.execute("SHOW server_encoding").fetchone()
            if encoding is None or encoding[0] != "UTF8":
                conn.close()
                raise ReconcileError(
                    f"source {self.source_name!r}: reconcile compares UTF-8 text, and this "
                    f"database's server_encoding is {encoding[0] if encoding else '?'}"
                )
            # a digest is one long scan: JIT compilation costs more than it saves here; and the
            # planner takes a GROUP BY of a segment CASE for a million groups (there are 64 at
            # most), and sorts the rows instead of hashing them unless the hash fits in work_mem
            conn.execute("SET jit = off")
            conn.execute("SET work_mem = '64MB'")
            self.conn = conn
        finally:
            repl.finish()  # the imported snapshot lives on; the temporary slot goes
        return self

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.conn = None

    def query(self, plan: exp.Expr) -> list[dict[str, Any]]:
        assert self.conn is not None
        with self.conn.cursor(row_factory=dict_row) as cur:
            return list(cur.execute(plan.sql(dialect="postgres").encode()).fetchall())

    dialect = "postgres"

    @property
    def position(self) -> str:
        return int_to_pg_lsn(self.lsn)

    @property
    def as_of(self) -> str:
        """The seq the state is read at: every version whose ordering LSN (the commit before its
        transaction) is at or before the snapshot. It takes in the snapshot's transactions and,
        at most, the first one that committed after it, whose keys the caller re-checks."""
        return make_seq(self.lsn, (1 << 64) - 1)

    @property
    def repair_seq(self) -> str:
        return make_seq(self.lsn, 0)

    def columns(self, schema: str, table: str) -> dict[str, str]:
        """Column name -> ``format_type`` of the source table (in table order)."""
        assert self.conn is not None
        rows = (
            self.conn.cursor(row_factory=dict_row)
            .execute(
                "SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type "
                "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
                "AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                (schema, table),
            )
            .fetchall()
        )
        return {r["name"]: r["type"] for r in rows}


#: text key types, compared in code point order on every side
_TEXT_KEYS = {
    "postgres": ("text", "character varying", "character", "citext", "name"),
    "mysql": ("char", "varchar", "text", "tinytext", "mediumtext", "longtext"),
}


def _ident(name: str) -> exp.Identifier:
    return exp.Identifier(this=name, quoted=True)


@dataclass
class Compared:
    """Which columns a comparison covers, and which it leaves out and why."""

    columns: list[str]  # state-table names
    skipped: dict[str, str]  # state-table name -> why it is not compared
    pii: list[str] = field(default_factory=list)  # compared by their protected form


def plan_columns(
    table: TableDef,
    state: StateTable,
    source_types: dict[str, str],
    dialects: Sequence[str],
    source_dialect: str = "postgres",
) -> Compared:
    """The state's business columns both sides can render canonically; keys must be among them."""
    from state_models.canonical import render

    compared, skipped, pii = [], {}, []
    protected = set(table.pii.columns) if table.pii is not None else set()
    for column in state.columns:
        source_name = table.source_column(column.name)
        if source_name not in source_types:
            skipped[column.name] = "not in the source table (dropped?)"
            continue
        if source_name in protected:
            base = source_types[source_name].split("(")[0].strip().lower()
            if base in _TEXT_KEYS[source_dialect] and column.name not in state.key:
                pii.append(column.name)  # its protected form, made on our side per segment
            else:
                skipped[column.name] = (
                    "pii: compared by its protected form only for text columns; "
                    f"this is {source_types[source_name]}"
                )
            continue
        try:
            for dialect in dialects:
                render(exp.column("x"), column.type, dialect)
            render(exp.column("x"), column.type, source_dialect, source_types[source_name])
        except ValueError as exc:
            skipped[column.name] = str(exc)
            continue
        compared.append(column.name)
    lost = [k for k in state.key if k not in compared]
    if lost:
        raise ReconcileError(
            f"{table.table_id}: key column(s) {lost} cannot be compared: "
            + "; ".join(f"{k}: {skipped.get(k, '?')}" for k in lost)
        )
    return Compared(compared, skipped, pii)


def _fence(dialect: str, name: str) -> list[exp.Expr]:
    """A column that keeps PostgreSQL from folding a derived table into the query above it, which
    would compute each rendering as often as the query above names it (the row text names each
    text twice). A volatile function in the select list is such a fence, and ``clock_timestamp()``
    is parallel-safe, so the scan below it still runs in parallel workers (``OFFSET 0``, the usual
    fence, would not)."""
    if dialect != "postgres":
        return []
    return [exp.alias_(exp.Anonymous(this="CLOCK_TIMESTAMP", expressions=[]), name, quoted=True)]


def _shape(
    dialect: str,
    relation: exp.Expr,
    keys: list[exp.Expr],
    key_types: list[exp.DataType | None],
    texts: dict[str, exp.Expr],
    collations: Sequence[exp.Expr | None] = (),
    key_names: Sequence[str] = (),
    pii: Mapping[str, exp.Expr] | None = None,
    pii_in_sql: bool = False,
    precomputed: Mapping[str, exp.Expr] | None = None,
    delimited: Sequence[bool] = (),
) -> RelationShape:
    """Keys, column texts and the row text are computed once, in a derived table; the plans
    compare and hash its columns (``collations``: per key, how it compares, e.g. ``"C"``)."""
    from state_models.canonical import row_hash, row_text

    filter_keys: list[exp.Expr] = []
    for i, k in enumerate(keys):
        collation = collations[i] if i < len(collations) else None
        filter_keys.append(k if collation is None else exp.Collate(this=k, expression=collation))
    text_columns = [exp.column(_ident(f"__t{i}")) for i in range(len(texts))]

    def make_relation(where: exp.Expr | None) -> exp.Expr:
        """The rows in ``where`` (on the key columns), rendered once each, then their row text."""
        rendered = exp.select(
            *[exp.alias_(k.copy(), f"__k{i}", quoted=True) for i, k in enumerate(keys)],
            *[exp.alias_(t.copy(), f"__t{i}", quoted=True) for i, t in enumerate(texts.values())],
            *[
                exp.alias_(t.copy(), f"__pt{i}", quoted=True)
                for i, t in enumerate((pii or {}).values())
            ],
        )
        if precomputed:  # computed once per row below the renderings that name them repeatedly
            base = exp.select(
                exp.Star(),
                *[exp.alias_(e.copy(), n, quoted=True) for n, e in precomputed.items()],
                *_fence(dialect, "__fence0"),
            ).from_(relation.copy())
            if where is not None:
                base = base.where(where)
            rendered = rendered.from_(base.subquery("base"))
        else:
            rendered = rendered.from_(relation.copy())
            if where is not None:
                rendered = rendered.where(where)
        rendered = rendered.select(*_fence(dialect, "__fence1"), copy=False)
        return (
            exp.select(
                exp.Star(),
                exp.alias_(row_text(text_columns, dialect, delimited), "__row_text", quoted=True),
            )
            .from_(rendered.subquery("rendered"))
            .subquery("rows")
        )

    derived = make_relation(None)
    names = list(texts)
    key_texts: list[exp.Expr] = (
        [exp.column(_ident(f"__t{names.index(k)}")) for k in key_names] if pii else []
    )
    pii_columns: dict[str, exp.Expr] = {
        c: exp.column(_ident(f"__pt{i}")) for i, c in enumerate(pii or {})
    }
    pii_hash = (
        row_hash(row_text([*key_texts, *pii_columns.values()], dialect), dialect)
        if pii and pii_in_sql
        else None
    )
    outer_keys: list[exp.Expr] = []
    for i in range(len(keys)):
        node: exp.Expr = exp.column(_ident(f"__k{i}"))
        collation = collations[i] if i < len(collations) else None
        outer_keys.append(
            node if collation is None else exp.Collate(this=node, expression=collation)
        )
    return RelationShape(
        dialect=dialect,
        relation=derived,
        keys=outer_keys,
        key_types=key_types,
        columns={c: exp.column(_ident(f"__t{i}")) for i, c in enumerate(texts)},
        row_hash=row_hash(exp.column(_ident("__row_text")), dialect),
        column_hash=lambda text: row_hash(row_text([text], dialect), dialect),
        pii=pii_columns,
        key_texts=key_texts,
        pii_hash=pii_hash,
        make_relation=make_relation,
        filter_keys=filter_keys,
    )


def source_shape(
    table: TableDef,
    state: StateTable,
    schema_table: tuple[str, str],
    source_types: dict[str, str],
    compared: Compared,
    dialect: str = "postgres",
) -> RelationShape:
    """The source table as its database renders it (text keys in code point order)."""
    from state_models.canonical import render

    def col(state_name: str) -> exp.Column:
        return exp.column(_ident(table.source_column(state_name)))

    keys: list[exp.Expr] = []
    key_types: list[exp.DataType | None] = []
    collations: list[exp.Expr | None] = []
    for k in state.key:
        source_type = source_types[table.source_column(k)]
        keys.append(col(k))
        binary: exp.Expr | None = None
        if source_type.split("(")[0].strip().lower() in _TEXT_KEYS[dialect]:
            binary = _ident("C") if dialect == "postgres" else exp.var("utf8mb4_bin")
        collations.append(binary)
        if dialect == "mysql":  # MySQL converts a literal to the column's type by itself
            key_types.append(None)
            continue
        try:
            key_types.append(exp.DataType.build(source_type, dialect=dialect))
        except Exception:  # a type sqlglot cannot name: the literal goes uncast
            key_types.append(None)
    # PostgreSQL JSON: its text, made once per row, which the rendering tests and edits (it names
    # the value several times, and PostgreSQL would convert the JSON to text each time)
    precomputed: dict[str, exp.Expr] = {}

    def value(c: str) -> exp.Expr:
        source_type = source_types[table.source_column(c)]
        if dialect == "postgres" and source_type in ("json", "jsonb"):
            name = f"__json{len(precomputed)}"
            precomputed[name] = exp.cast(col(c), "TEXT")
            return exp.column(_ident(name))
        return col(c)

    texts = {
        c: render(value(c), state.column_type(c), dialect, source_types[table.source_column(c)])
        for c in compared.columns
    }
    pii = {
        c: render(col(c), state.column_type(c), dialect, source_types[table.source_column(c)])
        for c in compared.pii
    }
    relation = exp.Table(this=_ident(schema_table[1]), db=_ident(schema_table[0]))
    return _shape(
        dialect,
        relation,
        keys,
        key_types,
        texts,
        collations,
        list(state.key),
        pii,
        precomputed=precomputed,
        delimited=delimited(state, compared),
    )


def state_shape(
    state: StateTable, names: Any, caps: Any, seq: str, compared: Compared
) -> RelationShape:
    """The state table's live rows as of ``seq``, as the warehouse renders them."""
    from state_models.canonical import render

    dialect = caps.dialect
    relation = plan_as_of(state, names, caps, seq=seq, ordered=False).subquery("live")
    keys: list[exp.Expr] = [exp.column(_ident(k)) for k in state.key]
    key_types: list[exp.DataType | None] = [state.column_type(k).to_sql(dialect) for k in state.key]
    texts = {
        c: render(exp.column(_ident(c)), state.column_type(c), dialect) for c in compared.columns
    }
    pii = {c: render(exp.column(_ident(c)), state.column_type(c), dialect) for c in compared.pii}
    return _shape(
        dialect,
        relation,
        keys,
        key_types,
        texts,
        (),
        list(state.key),
        pii,
        pii_in_sql=True,
        delimited=delimited(state, compared),
    )


def delimited(state: StateTable, compared: Compared) -> list[bool]:
    """Per compared column, whether its row-text piece is the short comma-ended form (decided
    by the state table's type, so both sides agree)."""
    from state_models.canonical import DELIMITED_KINDS

    return [state.column_type(c).kind in DELIMITED_KINDS for c in compared.columns]


def key_condition(key_columns: Sequence[str], keys: Sequence[Key]) -> exp.Expr:
    """``WHERE`` these keys, on the source table's own key columns (exact equality)."""
    shape = RelationShape(
        dialect="",
        relation=exp.Null(),
        keys=[exp.column(_ident(c)) for c in key_columns],
        key_types=[None] * len(key_columns),
        columns={},
        row_hash=exp.Null(),
        column_hash=lambda text: text,
    )
    return shape.key_in(keys)


def read_source_rows(
    snapshot: PostgresSnapshot | MySQLSnapshot,
    source_name: str,
    infos: Sequence[Any],
    info: Any,
    key_columns: tuple[str, ...],
    keys: Sequence[Key],
) -> list[dict[str, Any]]:
    """The source rows of ``keys`` in the snapshot, each value typed exactly as the capture types
    it (the capture's own catalog and parsers over ``COPY`` text; MySQL: the binlog capture's
    snapshot conversion)."""
    from connectors.capture.pgoutput import Catalog

    if isinstance(snapshot, MySQLSnapshot):
        return snapshot.read_rows(info, key_columns, keys)
    assert snapshot.conn is not None
    catalog = Catalog(snapshot.conn, source_name, infos)
    schema, table = info.schema_table
    columns = catalog.columns(schema, table)
    rel = catalog.describe(schema, table, [(c[0], c[1], c[2]) for c in columns], [])
    parsers = [t.parse for t in rel.types]
    out: list[dict[str, Any]] = []
    for chunk in _chunks(keys, 500):
        where = key_condition(key_columns, chunk).sql(dialect="postgres")
        query = sql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT").format(
            sql.SQL(", ").join(sql.Identifier(n) for n in rel.names),
            sql.Identifier(schema, table),
            sql.SQL(where),
        )
        with snapshot.conn.cursor().copy(query) as copy:
            for values in copy.rows():
                out.append(
                    {
                        n: None if v is None else p(v)
                        for n, p, v in zip(rel.names, parsers, values, strict=True)
                    }
                )
    return out


# --------------------------------------------------------------------------- MySQL / MariaDB


@dataclass
class MySQLSnapshot:
    """A ``REPEATABLE READ`` transaction on a MySQL/MariaDB source at a known binlog position: the
    capture's own consistent snapshot (MariaDB: ``binlog_snapshot_file/position`` of exactly that
    view, no lock; MySQL: a read lock while the position is read, needing RELOAD). A transaction
    is in the view exactly when its rows are before that position in the binlog, so the state is
    read as of ``(file, position, 0)`` with no transaction in doubt."""

    source_name: str
    source: Any
    file: str = ""
    pos: int = 0
    taken_at: float = 0.0
    conn: Any = field(default=None, repr=False)
    dialect = "mysql"

    def __enter__(self) -> MySQLSnapshot:
        import pymysql

        from connectors.capture.binlog import consistent_snapshot
        from connectors.sources import mysql_params
        from state_models.canonical import session_settings

        params = mysql_params(require_dsn(self.source, self.source_name))
        try:
            conn = pymysql.connect(
                connect_timeout=5, read_timeout=3600, charset="utf8mb4", autocommit=False, **params
            )
        except pymysql.err.OperationalError as exc:
            raise SourceUnavailableError(
                f"cannot connect to source {self.source_name!r}: {exc.args[-1]}"
            ) from exc
        with conn.cursor() as cur:
            for statement in session_settings("mysql"):
                cur.execute(statement)
            cur.execute("SELECT VERSION()")
            mariadb = "mariadb" in str(cur.fetchone()[0]).lower()
            self.file, self.pos, _ = consistent_snapshot(cur, mariadb, self.source_name)
        self.taken_at = time.time()
        self.conn = conn
        return self

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.conn = None

    @property
    def position(self) -> str:
        return f"{self.file}:{self.pos}"

    @property
    def as_of(self) -> str:
        return binlog_seq(self.file, self.pos, 0)

    @property
    def repair_seq(self) -> str:
        """Where the capture's own snapshot rows sort: after every row before the position, before
        the first one after it."""
        return binlog_seq(self.file, self.pos, 0)

    def query(self, plan: exp.Expr) -> list[dict[str, Any]]:
        import pymysql

        with self.conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(plan.sql(dialect="mysql"))
            return list(cur.fetchall())

    def columns(self, schema: str, table: str) -> dict[str, str]:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT column_name, column_type FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                (schema, table),
            )
            return {str(n): str(t) for n, t in cur.fetchall()}

    def read_rows(
        self, info: Any, key: tuple[str, ...], keys: Sequence[Key]
    ) -> list[dict[str, Any]]:
        """The rows of ``keys``, each value typed as the binlog capture's snapshot types it."""
        from connectors.capture.binlog import make_shape, table_columns

        db, table = info.schema_table
        with self.conn.cursor() as cur:
            names, types, optional = table_columns(cur, db, table)
        image_of = make_shape(self.source_name, info, key, db, table, names, types, optional)
        quoted = ", ".join(f"`{n}`" for n in names)
        out: list[dict[str, Any]] = []
        for chunk in _chunks(keys, 500):
            where = key_condition(key, chunk).sql(dialect="mysql")
            with self.conn.cursor() as cur:
                cur.execute(f"SELECT {quoted} FROM `{db}`.`{table}` WHERE {where}")
                for values in cur.fetchall():
                    out.append(image_of.image(dict(zip(names, values, strict=True))))
        return out


def open_snapshot(source_name: str, source: Any) -> PostgresSnapshot | MySQLSnapshot:
    """The consistent snapshot of a source, for its kind (use as a context manager)."""
    if source.kind == "postgres":
        return PostgresSnapshot(source_name, source)
    return MySQLSnapshot(source_name, source)
