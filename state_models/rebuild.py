"""Plans for rebuilding a state table from the changelog: drop, swap, and compare two state tables.

A rebuild applies the whole changelog, through the same MERGE, to a *shadow* state table (same
table id, another name). ``cdc verify`` then compares it with the live table without moving rows
out of the warehouse:

1. the union of both tables' keys is cut into ``ranges`` key ranges of equal size (``NTILE`` over
   the key order);
2. per range and per table: the number of version rows and the ``BIT_XOR`` of a fingerprint of
   each row (every column both tables have, except ``_ingested_at``, which only says when a row
   was written). XOR is order-free, so the two tables need not have been written alike;
3. where a range differs, the first differing versions are found by a full outer join on
   ``(key, _seq)``.

Every name is a quoted identifier node; nothing user-supplied is pasted into SQL text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from state_models.dialects import Capabilities
from state_models.scd2 import INGESTED_AT, KEY_BUCKET, SEQ

#: Columns a comparison ignores: when a row was written, and BigQuery's partitioning bucket
#: (a function of the key, so it adds nothing).
NOT_COMPARED = frozenset({INGESTED_AT, KEY_BUCKET})
_RANGE = "__range"
_POS = "__pos"
_ROWS = "__rows"
_SUM = "__sum"
_FP = "__fp"


@dataclass(frozen=True)
class RangeChecksum:
    """One key range of a comparison."""

    number: int
    first_key: tuple[Any, ...]
    last_key: tuple[Any, ...]
    rows: int  # version rows in the live table
    other_rows: int  # ... and in the other table
    checksum: int | None
    other_checksum: int | None

    @property
    def equal(self) -> bool:
        return self.rows == self.other_rows and self.checksum == self.other_checksum


@dataclass
class Comparison:
    """The result of comparing a state table with another one (``cdc verify``)."""

    table: str
    other: str
    key: tuple[str, ...]
    compared_columns: tuple[str, ...]
    only_in_table: tuple[str, ...] = ()  # columns
    only_in_other: tuple[str, ...] = ()
    ranges: list[RangeChecksum] = field(default_factory=list)
    #: first differing versions: (key values, _seq, row in table or None, row in other or None)
    differences: list[tuple[tuple[Any, ...], str, dict[str, Any] | None, dict[str, Any] | None]] = (
        field(default_factory=list)
    )
    missing: str | None = None  # a table that does not exist

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.ranges)

    @property
    def other_rows(self) -> int:
        return sum(r.other_rows for r in self.ranges)

    @property
    def equal(self) -> bool:
        return (
            self.missing is None
            and not self.only_in_table
            and not self.only_in_other
            and all(r.equal for r in self.ranges)
        )


# --------------------------------------------------------------------------- builders


def _ident(name: str) -> exp.Identifier:
    return exp.Identifier(this=name, quoted=True)


def _col(name: str, table: str | None = None) -> exp.Column:
    return exp.Column(this=_ident(name), table=_ident(table) if table else None)


def _alias(expression: exp.Expr, name: str) -> exp.Alias:
    return exp.Alias(this=expression, alias=_ident(name))


def _aliased(table: exp.Table, alias: str) -> exp.Table:
    t = table.copy()
    t.set("alias", exp.TableAlias(this=_ident(alias)))
    return t


def _keys_equal(key: Sequence[str], left: str, right: str) -> exp.Expr:
    return exp.and_(*[_col(k, left).eq(_col(k, right)) for k in key])


def fingerprint(columns: Sequence[str], alias: str, caps: Capabilities) -> exp.Expr:
    """A 64-bit fingerprint of a row's ``columns`` (NULLs included)."""
    cols: list[exp.Expr] = [_col(c, alias) for c in columns]
    if caps.row_fingerprint == "farm_fingerprint":
        return exp.Anonymous(
            this="FARM_FINGERPRINT",
            expressions=[
                exp.Anonymous(this="TO_JSON_STRING", expressions=[exp.Struct(expressions=cols)])
            ],
        )
    return exp.Anonymous(this="HASH", expressions=cols)


def plan_range_checksums(
    key: Sequence[str],
    columns: Sequence[str],
    table: exp.Table,
    other: exp.Table,
    caps: Capabilities,
    ranges: int,
) -> exp.Select:
    """Per key range: first and last key, rows and XOR of row fingerprints in each table.

    Output columns: ``__range``, ``__lo_<i>`` / ``__hi_<i>`` (the i-th key column of the first and
    last key), ``__rows_a``, ``__sum_a``, ``__rows_b``, ``__sum_b``.
    """
    if ranges < 1:
        raise ValueError("ranges must be at least 1")
    key_cols = [_col(k) for k in key]
    order = exp.Order(expressions=[exp.Ordered(this=_col(k), nulls_first=True) for k in key])
    keys = exp.union(
        exp.select(*[c.copy() for c in key_cols]).from_(table.copy()),
        exp.select(*[c.copy() for c in key_cols]).from_(other.copy()),
        distinct=True,
    )
    numbered = exp.select(
        *[c.copy() for c in key_cols],
        _alias(
            exp.Window(this=exp.Ntile(this=exp.Literal.number(ranges)), order=order.copy()), _RANGE
        ),
        _alias(exp.Window(this=exp.RowNumber(), order=order.copy()), _POS),
    ).from_(exp.to_table("keys"))

    def sums(source: exp.Table) -> exp.Select:
        return (
            exp.select(
                _col(_RANGE, "n"),
                _alias(exp.Count(this=exp.Star()), _ROWS),
                _alias(exp.BitwiseXorAgg(this=fingerprint(columns, "t", caps)), _SUM),
            )
            .from_(_aliased(source, "t"))
            .join(exp.to_table("numbered").as_("n"), on=_keys_equal(key, "t", "n"))
            .group_by(_col(_RANGE, "n"))
        )

    bounds = (
        exp.select(
            _col(_RANGE),
            _alias(exp.Min(this=_col(_POS)), "__lo"),
            _alias(exp.Max(this=_col(_POS)), "__hi"),
        )
        .from_(exp.to_table("numbered"))
        .group_by(_col(_RANGE))
    )
    query = (
        exp.select(
            _col(_RANGE, "b"),
            *[_alias(_col(k, "lo"), f"__lo_{i}") for i, k in enumerate(key)],
            *[_alias(_col(k, "hi"), f"__hi_{i}") for i, k in enumerate(key)],
            _alias(
                exp.Coalesce(this=_col(_ROWS, "sa"), expressions=[exp.Literal.number(0)]),
                "__rows_a",
            ),
            _alias(_col(_SUM, "sa"), "__sum_a"),
            _alias(
                exp.Coalesce(this=_col(_ROWS, "sb"), expressions=[exp.Literal.number(0)]),
                "__rows_b",
            ),
            _alias(_col(_SUM, "sb"), "__sum_b"),
        )
        .from_(exp.to_table("bounds").as_("b"))
        .join(exp.to_table("numbered").as_("lo"), on=_col(_POS, "lo").eq(_col("__lo", "b")))
        .join(exp.to_table("numbered").as_("hi"), on=_col(_POS, "hi").eq(_col("__hi", "b")))
        .join(
            exp.to_table("sums_a").as_("sa"),
            on=_col(_RANGE, "sa").eq(_col(_RANGE, "b")),
            join_type="left",
        )
        .join(
            exp.to_table("sums_b").as_("sb"),
            on=_col(_RANGE, "sb").eq(_col(_RANGE, "b")),
            join_type="left",
        )
        .order_by(_col(_RANGE, "b"))
    )
    for name, cte in (
        ("keys", keys),
        ("numbered", numbered),
        ("sums_a", sums(table)),
        ("sums_b", sums(other)),
        ("bounds", bounds),
    ):
        query = query.with_(name, as_=cte)
    return query


def plan_differences(
    key: Sequence[str],
    columns: Sequence[str],
    table: exp.Table,
    other: exp.Table,
    caps: Capabilities,
    limit: int,
) -> exp.Select:
    """The first ``limit`` versions (by key, ``_seq``) that differ or exist on one side only.

    Output columns: ``__k_<i>``, ``__seq``, ``__in_a``, ``__in_b``.
    """

    def side(source: exp.Table) -> exp.Select:
        return exp.select(
            *[_col(k, "t") for k in key],
            _col(SEQ, "t"),
            _alias(fingerprint(columns, "t", caps), _FP),
        ).from_(_aliased(source, "t"))

    joined = _keys_equal([*key, SEQ], "fa", "fb")
    differs = exp.or_(
        _col(_FP, "fa").is_(exp.Null()),
        _col(_FP, "fb").is_(exp.Null()),
        exp.NEQ(this=_col(_FP, "fa"), expression=_col(_FP, "fb")),
    )
    picked = [
        _alias(exp.Coalesce(this=_col(k, "fa"), expressions=[_col(k, "fb")]), f"__k_{i}")
        for i, k in enumerate(key)
    ]
    return (
        exp.select(
            *picked,
            _alias(exp.Coalesce(this=_col(SEQ, "fa"), expressions=[_col(SEQ, "fb")]), "__seq"),
            _alias(exp.not_(_col(_FP, "fa").is_(exp.Null())), "__in_a"),
            _alias(exp.not_(_col(_FP, "fb").is_(exp.Null())), "__in_b"),
        )
        .from_(exp.to_table("fa"))
        .join(exp.to_table("fb"), on=joined, join_type="full outer")
        .where(differs)
        .order_by(
            *[exp.Ordered(this=exp.column(f"__k_{i}")) for i in range(len(key))],
            exp.column("__seq"),
        )
        .limit(limit)
        .with_("fa", as_=side(table))
        .with_("fb", as_=side(other))
    )


def compared_columns(columns: Sequence[str], other_columns: Sequence[str]) -> list[str]:
    """Columns both tables have, in the first table's order, minus ``NOT_COMPARED``."""
    theirs = set(other_columns)
    return [c for c in columns if c in theirs and c not in NOT_COMPARED]


# --------------------------------------------------------------------------- DDL


def plan_drop(tables: Sequence[exp.Table], views: Sequence[exp.Table]) -> list[exp.Drop]:
    """Drop views first (they depend on the tables), then tables; whatever does not exist is fine."""
    return [exp.Drop(tables=[v.copy()], kind="VIEW", exists=True) for v in views] + [
        exp.Drop(tables=[t.copy()], kind="TABLE", exists=True) for t in tables
    ]


def plan_rename(table: exp.Table, new_name: str) -> exp.Alter:
    """``ALTER TABLE t RENAME TO new_name`` (same dataset)."""
    return exp.Alter(
        this=table.copy(),
        kind="TABLE",
        actions=[exp.AlterRename(this=exp.Table(this=_ident(new_name)))],
    )
