"""The invariants every state table must hold (docs/architecture.md §5), as SQL plans that find
the versions breaking them, and the results ``cdc check`` reports and keeps.

Each plan returns at most ``limit`` offending keys, each row carrying ``found``: how many there are
in all (``COUNT(*) OVER ()``, computed before the limit). They run unchanged on DuckDB and
BigQuery (sqlglot renders each dialect) and read only the key, ``_seq`` and validity columns.

- ``one_current``: at most one current version per key.
- ``one_version_per_seq``: one version per (key, ``_seq``).
- ``validity_chained``: in ``_seq`` order, each version's ``_valid_to`` is the next version's
  ``_valid_from`` (no gap, no overlap), never before its own ``_valid_from`` (an empty window is
  allowed, an inverted one is not); the last version is current with an open window, and only the
  last is current.
- ``key_not_null``: no key column is null.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlglot import exp

from state_models.plans import TableNames, qualified
from state_models.scd2 import IS_CURRENT, SEQ, VALID_FROM, VALID_TO, StateTable

Level = Literal["error", "warn"]
Status = Literal["pass", "fail"]
#: The warehouse table ``cdc check`` appends its results to (a dashboard charts them).
RESULTS_TABLE = "cdc_check_results"
INVARIANTS = ("one_current", "one_version_per_seq", "validity_chained", "key_not_null")
FOUND = "found"


@dataclass
class CheckResult:
    table: str  # table id
    check: str
    level: Level
    status: Status
    observed: int  # offending keys (versions for key_not_null), or the figure the check reads
    keys: list[dict[str, Any]] = field(default_factory=list)  # the first offending keys
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "check": self.check,
            "level": self.level,
            "status": self.status,
            "observed": self.observed,
            "keys": self.keys,
            **({"detail": self.detail} if self.detail else {}),
        }


def _ident(name: str) -> exp.Identifier:
    return exp.Identifier(this=name, quoted=True)


def _col(name: str) -> exp.Column:
    return exp.column(_ident(name))


def _found(query: exp.Select, keys: Sequence[str], limit: int) -> exp.Select:
    """``query``'s key columns with how many rows it has in all, at most ``limit`` of them."""
    return (
        exp.select(
            *[_col(k) for k in keys],
            exp.alias_(exp.Window(this=exp.Count(this=exp.Star())), FOUND, quoted=True),
        )
        .from_(query.subquery("offending"))
        .order_by(*[_col(k) for k in keys])
        .limit(limit)
    )


def plan_invariant(check: str, state: StateTable, names: TableNames, limit: int) -> exp.Select:
    """The offending keys of one invariant (see the module doc)."""
    keys = list(state.key)
    table = names.state.copy()
    if check == "one_current":
        query = (
            exp.select(*[_col(k) for k in keys])
            .from_(table)
            .where(_col(IS_CURRENT))
            .group_by(*[_col(k) for k in keys])
            .having(exp.Count(this=exp.Star()) > 1)
        )
    elif check == "one_version_per_seq":
        query = (
            exp.select(*[_col(k) for k in keys], _col(SEQ))
            .from_(table)
            .group_by(*[_col(k) for k in keys], _col(SEQ))
            .having(exp.Count(this=exp.Star()) > 1)
        )
    elif check == "validity_chained":
        window = exp.Window(
            partition_by=[_col(k) for k in keys], order=exp.Order(expressions=[_col(SEQ)])
        )

        def lead(name: str) -> exp.Window:
            over = window.copy()
            over.set("this", exp.Anonymous(this="LEAD", expressions=[_col(name)]))
            return over

        chain = exp.select(
            *[_col(k) for k in keys],
            _col(VALID_FROM),
            _col(VALID_TO),
            _col(IS_CURRENT),
            exp.alias_(lead(SEQ), "next_seq", quoted=True),
            exp.alias_(lead(VALID_FROM), "next_from", quoted=True),
        ).from_(table)
        last = _col("next_seq").is_(exp.Null())
        broken = exp.or_(
            exp.and_(
                last, exp.or_(_col(VALID_TO).is_(exp.not_(exp.Null())), exp.not_(_col(IS_CURRENT)))
            ),
            exp.and_(
                exp.not_(last),
                exp.or_(
                    _col(IS_CURRENT),
                    _col(VALID_TO).is_(exp.Null()),
                    exp.NEQ(this=_col(VALID_TO), expression=_col("next_from")),
                ),
            ),
            exp.LT(this=_col(VALID_TO), expression=_col(VALID_FROM)),
        )
        query = (
            exp.select(*[_col(k) for k in keys])
            .from_(chain.subquery("chain"))
            .where(broken)
            .distinct()
        )
    elif check == "key_not_null":
        query = (
            exp.select(*[_col(k) for k in keys])
            .from_(table)
            .where(exp.or_(*[_col(k).is_(exp.Null()) for k in keys]))
        )
    else:
        raise ValueError(f"unknown invariant {check!r} (expected one of {', '.join(INVARIANTS)})")
    return _found(query, keys, limit)


def results_table(dataset: str | None = None, project: str | None = None) -> exp.Table:
    return qualified(RESULTS_TABLE, dataset, project)


def plan_create_results(table: exp.Table) -> exp.Create:
    columns = [
        ("table_id", "TEXT"),
        ("check_name", "TEXT"),
        ("level", "TEXT"),
        ("status", "TEXT"),
        ("observed", "BIGINT"),
        ("keys", "TEXT"),
        ("checked_at", "TIMESTAMPTZ"),
    ]
    return exp.Create(
        this=exp.Schema(
            this=table.copy(),
            expressions=[
                exp.ColumnDef(this=_ident(n), kind=exp.DataType.build(t)) for n, t in columns
            ],
        ),
        kind="TABLE",
        exists=True,
    )


def plan_record_results(
    table: exp.Table, results: Sequence[CheckResult], at: dt.datetime
) -> exp.Insert:
    when = exp.cast(exp.Literal.string(at.astimezone(dt.UTC).isoformat()), "TIMESTAMPTZ")
    rows = [
        exp.tuple_(
            exp.Literal.string(r.table),
            exp.Literal.string(r.check),
            exp.Literal.string(r.level),
            exp.Literal.string(r.status),
            exp.Literal.number(r.observed),
            exp.Literal.string(json.dumps(r.keys, default=str, sort_keys=True)),
            when.copy(),
        )
        for r in results
    ]
    return exp.insert(exp.values(rows), table.copy())
