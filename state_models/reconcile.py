"""Comparing a source table with its state table by checksums of key segments (``cdc reconcile``).

Both sides are a *relation*: the source table read in one consistent snapshot, and the state
table's live rows as of the snapshot's position. Each side computes, inside its own database, per
key segment, the number of rows and the ``BIT_XOR`` of a 60-bit hash of each row's canonical text
(``state_models.canonical``: the same text for the same value in PostgreSQL, MySQL/MariaDB,
DuckDB and BigQuery). Segments whose digests differ are split again, at keys taken from the side
that has more rows there, until a segment holds at most ``leaf_rows`` rows; only then do keys and
row hashes leave the databases, and for keys present on both sides with different rows, one hash
per column (so the report names the columns without moving any value).

::

    [whole table] --split (source keys)--> 64 segments --digests on both sides--> differing ones
        --split (side with more rows)--> 64 sub-segments each --digests--> ... --leaf: key -> row hash

Segments are half-open key ranges ``[lo, hi)`` (None: unbounded), compared lexicographically over
the key columns, so a key found only on one side still falls into exactly one segment. Text keys
compare by code point on every side (PostgreSQL ``COLLATE "C"``). Memory is bounded by the number
of segments in flight and ``leaf_rows``, whatever the table size.

This module holds the algorithm (``compare``) over the ``Side`` protocol and the SQL plans each
side runs (``RelationShape``); ``connectors/reconcile.py`` implements the sides.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any, Protocol

from sqlglot import exp

Key = tuple[Any, ...]
ROW_HASH = "__row_hash"
PII = "__pii_hash"
PII_DIGEST = "__pii_digest"
SEGMENT = "__segment"
ROWS = "__rows"
DIGEST = "__digest"
RANK = "__rank"
TOTAL = "__total"


@dataclass(frozen=True)
class Segment:
    """Keys in ``[lo, hi)``; None is unbounded."""

    lo: Key | None = None
    hi: Key | None = None


@dataclass(frozen=True)
class Digest:
    rows: int = 0
    xor: int = 0
    pii: int = 0  # BIT_XOR of the rows' pii: hashes (protected form), when the table has pii:


class Side(Protocol):
    """One relation to compare (the source in a snapshot, or the state as of a position)."""

    def digests(self, parents: Sequence[Segment], bounds: Sequence[Key]) -> list[Digest]:
        """Digests of the ``len(bounds) + 1`` parts of the key space cut at ``bounds``, counting
        only the rows inside one of ``parents`` (one query)."""
        ...

    def split(self, segment: Segment, parts: int) -> list[Key]:
        """Up to ``parts - 1`` keys of this side cutting ``segment`` into parts of equal rows."""
        ...

    def rows(self, segments: Sequence[Segment]) -> dict[Key, int]:
        """Every key in the segments with its row hash."""
        ...

    def lookup(self, keys: Sequence[Key]) -> dict[Key, int]:
        """The row hash of each of these keys this side holds."""
        ...

    def column_hashes(self, keys: Sequence[Key]) -> dict[Key, dict[str, int]]:
        """Per key, one hash per compared column."""
        ...


@dataclass
class Difference:
    missing: list[Key] = field(default_factory=list)  # in the source, not in the state
    extra: list[Key] = field(default_factory=list)  # in the state, not in the source
    different: dict[Key, list[str]] = field(default_factory=dict)  # key -> differing columns
    rows_transferred: int = 0  # keys (and their hashes) that left a database
    segments: int = 0  # segments whose digests were compared
    #: the differing keys' row hashes (source, state): tell a stable difference from a moving one
    hashes: dict[Key, tuple[int | None, int | None]] = field(default_factory=dict)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.different)

    def keys(self) -> list[Key]:
        return sorted({*self.missing, *self.extra, *self.different}, key=sort_key)


def sort_key(key: Key) -> tuple[Any, ...]:
    """Keys of mixed None / values sort without TypeError (for reports only)."""
    return tuple((v is None, str(type(v)), v if v is not None else 0) for v in key)


def cut(segment: Segment, bounds: Sequence[Key]) -> list[Segment]:
    edges: list[Key | None] = [segment.lo, *bounds, segment.hi]
    return [Segment(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def compare(
    source: Side,
    state: Side,
    *,
    fanout: int = 64,
    leaf_rows: int = 512,
    max_bounds: int = 1024,
    on_level: Callable[[int, int, int], None] | None = None,
) -> Difference:
    """Bisect from the whole table down to the differing keys (see the module doc).

    ``on_level(level, segments compared, segments differing)`` reports progress."""
    out = Difference()
    pool = ThreadPoolExecutor(max_workers=2)
    try:

        def both(fn: Callable[[Side], Any]) -> tuple[Any, Any]:
            a = pool.submit(fn, source)
            b = pool.submit(fn, state)
            return a.result(), b.result()

        whole = Segment()
        # the first cut at the state's keys: a warehouse scans a key column far faster than the
        # source, whose one full pass is then the digests (a missing side splits later anyway)
        bounds = state.split(whole, fanout)
        out.rows_transferred += len(bounds)
        groups: list[tuple[Segment, list[Key]]] = [(whole, bounds)]
        level = 0
        leaves: list[Segment] = []
        while groups:
            level += 1
            compared = differing = 0
            next_groups: list[tuple[Segment, list[Key]]] = []
            for chunk in _chunked(groups, max_bounds):
                # the differing segments of a level are compared in one query per side
                parents = [parent for parent, _ in chunk]
                edges, index = combine(chunk)
                mine, theirs = both(partial(_digests, parents=parents, bounds=edges))
                for (parent, cuts), at in zip(chunk, index, strict=True):
                    parts = cut(parent, cuts)
                    next_groups.extend(
                        _compare_parts(
                            out,
                            parts,
                            [mine[i] for i in at],
                            [theirs[i] for i in at],
                            source,
                            state,
                            fanout,
                            leaf_rows,
                            leaves,
                        )
                    )
                    compared += len(parts)
                    differing += sum(mine[i] != theirs[i] for i in at)
            out.segments += compared
            if on_level is not None:
                on_level(level, compared, differing)
            groups = next_groups
        if leaves:
            mine, theirs = both(lambda side: side.rows(leaves))
            out.rows_transferred += len(mine) + len(theirs)
            classify(out, mine, theirs, pool, source, state)
    finally:
        pool.shutdown()
    return out


def _compare_parts(
    out: Difference,
    parts: Sequence[Segment],
    mine: Sequence[Digest],
    theirs: Sequence[Digest],
    source: Side,
    state: Side,
    fanout: int,
    leaf_rows: int,
    leaves: list[Segment],
) -> list[tuple[Segment, list[Key]]]:
    """The parts whose digests differ: small ones become leaves, the others are cut again (at
    keys of the side with more rows there); returns the new groups."""
    groups = []
    for part, a, b in zip(parts, mine, theirs, strict=True):
        if a == b:
            continue
        if max(a.rows, b.rows) <= leaf_rows:
            leaves.append(part)
            continue
        fuller = source if a.rows >= b.rows else state
        inner = fuller.split(part, fanout)
        out.rows_transferred += len(inner)
        if inner:
            groups.append((part, inner))
        else:  # a single key (or nothing to cut at): compare it row by row
            leaves.append(part)
    return groups


def combine(groups: Sequence[tuple[Segment, Sequence[Key]]]) -> tuple[list[Key], list[list[int]]]:
    """Many (parent, cuts), disjoint and in key order, as one cut of the key space: its bounds,
    and for each group the indexes of its parts among the combined parts (the parts between
    parents hold no row of theirs; adjacent parents give an empty part between them)."""
    edges: list[Key] = []
    index = []
    for parent, cuts in groups:
        if parent.lo is not None:
            edges.append(parent.lo)
        first = len(edges)
        edges.extend(cuts)
        index.append(list(range(first, first + len(cuts) + 1)))
        if parent.hi is not None:
            edges.append(parent.hi)
    return edges, index


def _chunked(
    groups: Sequence[tuple[Segment, list[Key]]], max_bounds: int
) -> list[Sequence[tuple[Segment, list[Key]]]]:
    """Groups in runs whose combined bounds stay under ``max_bounds`` (the query's size)."""
    out: list[Sequence[tuple[Segment, list[Key]]]] = []
    run: list[tuple[Segment, list[Key]]] = []
    size = 0
    for group in groups:
        if run and size + len(group[1]) + 2 > max_bounds:
            out.append(run)
            run, size = [], 0
        run.append(group)
        size += len(group[1]) + 2
    if run:
        out.append(run)
    return out


def _digests(side: Side, *, parents: Sequence[Segment], bounds: Sequence[Key]) -> list[Digest]:
    return side.digests(parents, bounds)


def classify(
    out: Difference,
    mine: Mapping[Key, int],
    theirs: Mapping[Key, int],
    pool: ThreadPoolExecutor,
    source: Side,
    state: Side,
) -> None:
    """Missing, extra and different keys from both sides' row hashes; the columns that differ."""
    out.missing = sorted((k for k in mine if k not in theirs), key=sort_key)
    out.hashes = {
        k: (mine.get(k), theirs.get(k)) for k in {*mine, *theirs} if mine.get(k) != theirs.get(k)
    }
    out.extra = sorted((k for k in theirs if k not in mine), key=sort_key)
    changed = sorted((k for k in mine if k in theirs and mine[k] != theirs[k]), key=sort_key)
    out.different = {}
    if changed:
        a = pool.submit(source.column_hashes, changed)
        b = pool.submit(state.column_hashes, changed)
        left, right = a.result(), b.result()
        out.rows_transferred += len(left) + len(right)
        for k in changed:
            x, y = left.get(k, {}), right.get(k, {})
            out.different[k] = sorted(c for c in {*x, *y} if x.get(c) != y.get(c))


def recheck(source: Side, state: Side, keys: Sequence[Key]) -> Difference:
    """Compare only ``keys`` (point lookups), e.g. at a later snapshot: a key that differed only
    because a change was in flight compares equal now."""
    out = Difference()
    if not keys:
        return out
    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.submit(source.lookup, keys), pool.submit(state.lookup, keys)
        mine, theirs = a.result(), b.result()
        out.rows_transferred += len(mine) + len(theirs)
        classify(out, mine, theirs, pool, source, state)
    return out


# --------------------------------------------------------------------------- SQL plans


def normalize(value: Any) -> Any:
    """A key value as every side returns it (UUIDs as text, buffers as bytes)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    return value


def literal(value: Any, type_sql: exp.DataType | None = None) -> exp.Expr:
    """A key value as a SQL literal (cast to the key column's type when one is given)."""
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int | Decimal):
        node: exp.Expr = exp.Literal.number(str(value))
    elif isinstance(value, float):
        node = exp.Literal.number(repr(value))
    elif isinstance(value, dt.datetime | dt.date | dt.time):
        node = exp.Literal.string(
            value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
        )
    elif isinstance(value, bytes):
        raise ValueError(
            "binary key columns are not compared yet (reconcile needs text or numbers)"
        )
    else:
        node = exp.Literal.string(str(value))
    return exp.cast(node, type_sql) if type_sql is not None else node


@dataclass
class RelationShape:
    """What one side's plans need: where the rows are, how keys and rows render, which dialect.

    ``relation``: a table or a subquery (the state's live rows as of a position); ``keys``: the key
    column expressions in key order (with ``COLLATE "C"`` on PostgreSQL text keys);
    ``key_types``: their types for literals; ``columns``: compared column name -> canonical text
    expression; ``row_hash``: the row's 60-bit hash expression."""

    dialect: str
    relation: exp.Expr
    keys: list[exp.Expr]
    key_types: list[exp.DataType | None]
    columns: dict[str, exp.Expr]
    row_hash: exp.Expr
    column_hash: Callable[[exp.Expr], exp.Expr]
    #: pii: columns: name -> the derived column holding its text (the warehouse: the stored
    #: protected form; the source: the clear value, protected by the caller in Python) and the
    #: key texts they are hashed with; ``pii_hash``: the warehouse's hash of both, in SQL
    pii: dict[str, exp.Expr] = field(default_factory=dict)
    key_texts: list[exp.Expr] = field(default_factory=list)
    pii_hash: exp.Expr | None = None
    #: when set, the relation is built per query around its conditions (``make_relation(where)``),
    #: which are written on ``filter_keys`` (the key columns inside it), so each query reads and
    #: renders only the rows of its segments (PostgreSQL does not push a condition into a fenced
    #: subquery by itself)
    make_relation: Callable[[exp.Expr | None], exp.Expr] | None = None
    filter_keys: list[exp.Expr] = field(default_factory=list)

    def _lit(self, i: int, value: Any) -> exp.Expr:
        return literal(value, self.key_types[i])

    def _cmp(
        self, key: Key, strict: bool, greater: bool, keys: Sequence[exp.Expr] | None = None
    ) -> exp.Expr:
        """Lexicographic ``keys > key`` (or ``>=``, ``<``, ``<=``), on the filter keys unless
        ``keys`` says which."""
        keys = keys if keys is not None else (self.filter_keys or self.keys)
        terms = []
        n = len(keys)
        for i in range(n):
            eqs = [exp.EQ(this=keys[j].copy(), expression=self._lit(j, key[j])) for j in range(i)]
            last = i == n - 1
            op: type[exp.Expr]
            if greater:
                op = exp.GT if (strict or not last) else exp.GTE
            else:
                op = exp.LT if (strict or not last) else exp.LTE
            terms.append(exp.and_(*eqs, op(this=keys[i].copy(), expression=self._lit(i, key[i]))))
        return exp.or_(*terms) if len(terms) > 1 else terms[0]

    def within(self, segment: Segment) -> exp.Expr | None:
        parts = []
        if segment.lo is not None:
            parts.append(self._cmp(segment.lo, strict=False, greater=True))
        if segment.hi is not None:
            parts.append(self._cmp(segment.hi, strict=True, greater=False))
        if not parts:
            return None
        return exp.and_(*parts) if len(parts) > 1 else parts[0]

    def key_in(self, keys: Sequence[Key]) -> exp.Expr:
        return exp.or_(
            *[
                exp.and_(
                    *[
                        exp.EQ(
                            this=(self.filter_keys or self.keys)[i].copy(),
                            expression=self._lit(i, v),
                        )
                        for i, v in enumerate(key)
                    ]
                )
                for key in keys
            ]
        )

    def _base(self, *fields: exp.Expr, where: exp.Expr | None) -> exp.Select:
        if self.make_relation is not None:
            return exp.select(*fields).from_(self.make_relation(where))
        q = exp.select(*fields).from_(self.relation.copy())
        return q.where(where) if where is not None else q

    def _key_fields(self) -> list[exp.Expr]:
        return [exp.alias_(k.copy(), f"__k{i}", quoted=True) for i, k in enumerate(self.keys)]

    def _segment(self, bounds: Sequence[Key]) -> exp.Expr:
        """The index of a row's segment among ``bounds``: a binary search written as nested
        CASEs, so each row makes log2(n) key comparisons instead of up to n."""

        def search(lo: int, hi: int) -> exp.Expr:  # segments lo..hi; bounds[i] ends segment i
            if lo == hi:
                return exp.Literal.number(lo)
            mid = (lo + hi) // 2
            below = self._cmp(bounds[mid], strict=True, greater=False, keys=self.keys)
            return exp.Case().when(below, search(lo, mid)).else_(search(mid + 1, hi))

        return search(0, len(bounds))

    def plan_digests(self, parents: Sequence[Segment], bounds: Sequence[Key]) -> exp.Select:
        fields = [
            exp.alias_(self._segment(bounds), SEGMENT, quoted=True),
            exp.alias_(self.row_hash.copy(), ROW_HASH, quoted=True),
        ]
        if self.pii_hash is not None:
            fields.append(exp.alias_(self.pii_hash.copy(), PII, quoted=True))
        inner = self._base(*fields, where=rows_where(self, parents))
        col = _named
        aggregates = [
            exp.alias_(exp.Count(this=exp.Star()), ROWS, quoted=True),
            exp.alias_(
                exp.Anonymous(this="BIT_XOR", expressions=[col(ROW_HASH)]), DIGEST, quoted=True
            ),
        ]
        if self.pii_hash is not None:
            aggregates.append(
                exp.alias_(
                    exp.Anonymous(this="BIT_XOR", expressions=[col(PII)]), PII_DIGEST, quoted=True
                )
            )
        return (
            exp.select(col(SEGMENT), *aggregates).from_(inner.subquery("s")).group_by(col(SEGMENT))
        )

    def plan_pii_rows(self, parents: Sequence[Segment], bounds: Sequence[Key]) -> exp.Select:
        """Per row of ``parents``: its segment, key texts and pii: texts (hashed by the caller)."""
        return self._base(
            exp.alias_(self._segment(bounds), SEGMENT, quoted=True),
            *self._pii_fields(),
            where=rows_where(self, parents),
        )

    def _pii_fields(self) -> list[exp.Expr]:
        return [
            exp.alias_(t.copy(), f"__kt{i}", quoted=True) for i, t in enumerate(self.key_texts)
        ] + [exp.alias_(t.copy(), f"__p{i}", quoted=True) for i, t in enumerate(self.pii.values())]

    def plan_split(self, segment: Segment, parts: int) -> exp.Select:
        """The first key of each of ``parts`` equal runs after the first (a single scan)."""
        order = exp.Order(expressions=[exp.Ordered(this=k.copy()) for k in self.keys])
        inner = self._base(
            *self._key_fields(),
            exp.alias_(
                exp.Window(this=exp.Anonymous(this="ROW_NUMBER", expressions=[]), order=order),
                RANK,
                quoted=True,
            ),
            exp.alias_(exp.Window(this=exp.Count(this=exp.Star())), TOTAL, quoted=True),
            where=self.within(segment),
        )
        col = _named
        n = exp.Literal.number(parts)

        def bucket(rank: exp.Expr) -> exp.Expr:
            return exp.IntDiv(this=exp.Mul(this=rank, expression=n.copy()), expression=col(TOTAL))

        rank0 = exp.Paren(this=exp.Sub(this=col(RANK), expression=exp.Literal.number(1)))
        rank1 = exp.Paren(this=exp.Sub(this=col(RANK), expression=exp.Literal.number(2)))
        return (
            exp.select(*[col(f"__k{i}") for i in range(len(self.keys))])
            .from_(inner.subquery("s"))
            .where(
                exp.and_(
                    exp.GT(this=col(RANK), expression=exp.Literal.number(1)),
                    exp.NEQ(this=bucket(rank0), expression=bucket(rank1)),
                )
            )
            .order_by(col(RANK))
        )

    def plan_rows(self, where: exp.Expr | None) -> exp.Select:
        return self._base(
            *self._key_fields(),
            exp.alias_(self.row_hash.copy(), ROW_HASH, quoted=True),
            *self._pii_fields(),
            where=where,
        )

    def plan_column_hashes(self, keys: Sequence[Key]) -> exp.Select:
        return self._base(
            *self._key_fields(),
            *[
                exp.alias_(self.column_hash(text.copy()), f"__c{i}", quoted=True)
                for i, text in enumerate(self.columns.values())
            ],
            where=self.key_in(keys),
        )


def _named(name: str) -> exp.Column:
    return exp.column(exp.Identifier(this=name, quoted=True))


def rows_where(shape: RelationShape, segments: Sequence[Segment]) -> exp.Expr | None:
    conditions = [shape.within(s) for s in segments]
    if any(c is None for c in conditions):
        return None
    return exp.or_(*[c for c in conditions if c is not None])


def read_keys(row: Mapping[str, Any], width: int) -> Key:
    return tuple(normalize(row[f"__k{i}"]) for i in range(width))


def digests_of(rows: Iterable[Mapping[str, Any]], parts: int) -> list[Digest]:
    out = [Digest()] * parts
    for r in rows:
        pii = r.get(PII_DIGEST)
        out[int(r[SEGMENT])] = Digest(
            int(r[ROWS]),
            int(r[DIGEST]) & ((1 << 64) - 1),
            0 if pii is None else int(pii) & ((1 << 64) - 1),
        )
    return out


def text_hash(texts: Sequence[str | None]) -> int:
    """``row_hash(row_text(texts))`` computed here, as every database computes it
    (``state_models.canonical``): for the pii: columns, protected on our side."""
    import hashlib

    text = "".join("N" if t is None else f"L{len(t)}:{t}" for t in texts)
    return int(hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()[:15], 16)
